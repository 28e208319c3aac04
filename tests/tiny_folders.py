"""Tiny ID artifacts and model folders for tests, written with the project's own save paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import atomic_dir, make_manifest, write_json
from core.sequences import SequenceConfig
from gen_fm.config import PretrainConfig
from gen_fm.model import save_model
from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import TokenLayout


def write_id_artifact(
    path: Path, item_ids: list[str], sizes: tuple[int, ...], seed: int = 0, titles: list[str] | None = None
) -> SemanticIDs:
    """A minimal ID artifact with random unique codes (tests need no quantizer)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(sizes)), size=len(item_ids), replace=False)
    codes = np.stack(np.unravel_index(flat, sizes), axis=1)  # (N, L)
    ids = SemanticIDs(item_ids, codes, sizes, titles=titles)
    with atomic_dir(path) as stage:
        ids.write_map(stage)
        write_json(stage / "stats.json", {"random_codes": True})
        write_json(
            stage / "manifest.json",
            make_manifest(
                "semantic_ids",
                {"random_codes": True, "seed": seed},
                codebook_sizes=list(sizes),
                map_version=1,
            ),
        )
    return SemanticIDs.load(path)


def save_unit_model(
    out: Path,
    model,
    layout: TokenLayout,
    ids: SemanticIDs,
    config: PretrainConfig,
    max_history: int,
    **manifest: Any,
) -> Path:
    """``gen_fm.model.save_model`` with the manifest fields a test does not look at filled in (a fixed
    data fingerprint, dataset "unit", no training record); ``manifest`` overrides or adds to them."""
    fields = {"data_fingerprint": "f" * 64, "dataset": "unit", "training": {}, **manifest}
    return save_model(out, model, layout, ids, config, SequenceConfig(max_history=max_history), **fields)
