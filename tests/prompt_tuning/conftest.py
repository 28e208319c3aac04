"""A real MovieLens slice with text-bearing semantic IDs and a tiny model trained on it.

The slice keeps a few members who wrote tags (the search canvas's real queries) and only the titles
they engaged with, so the sentence encoder embeds a few hundred titles, not 9,742.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

MEMBERS = {"2", "7", "18", "21", "49", "62", "103", "125", "132", "166"}
ID_CONFIG = dict(
    text_weight=1.0,
    metadata_weight=0.5,
    codebook_size=16,
    dedup_size=64,
    quantizer_options={"kmeans_iters": 5},
)


def _write_slice(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    movies: set[str] = set()
    for name in ("ratings.csv", "tags.csv"):
        with open(src / name, newline="") as f, open(dst / name, "w", newline="") as g:
            reader = csv.DictReader(f)
            writer = csv.DictWriter(g, fieldnames=reader.fieldnames)
            writer.writeheader()
            for row in reader:
                if row["userId"] in MEMBERS:
                    writer.writerow(row)
                    movies.add(row["movieId"])
    with open(src / "movies.csv", newline="") as f, open(dst / "movies.csv", "w", newline="") as g:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(r for r in reader if r["movieId"] in movies)
    return dst


@pytest.fixture(scope="session")
def tag_slice(data_dir, tmp_path_factory) -> Path:
    return _write_slice(Path(data_dir) / "ml-latest-small", tmp_path_factory.mktemp("slice") / "ml")


@pytest.fixture(scope="session")
def slice_world(tag_slice, tmp_path_factory):
    """(data, split, ids, tiny model folder) on the slice."""
    from gen_fm.config import PretrainConfig
    from gen_fm.train import pretrain
    from semantic_ids.builder import build_ids
    from semantic_ids.config import SemanticIDConfig
    from semantic_ids.ids import SemanticIDs
    from core.data import DataConfig, load_data
    from core.sequences import SequenceConfig, build_sequences, leave_one_out

    root = tmp_path_factory.mktemp("slice-world")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dc = DataConfig(data_dir=str(tag_slice))
        data = load_data(dc)
        build_ids(data, SemanticIDConfig.create(quantizer="rqkmeans", **ID_CONFIG), root / "ids")
        seq = SequenceConfig(max_history=8)
        config = PretrainConfig.from_preset(
            "tiny", epochs=2, batch_size=32, num_user_buckets=8, eval_every=0, lr=3e-3
        )
        model = pretrain(dc, seq, root / "ids", root / "run", config)
    finally:
        torch.set_num_threads(before)
    split = leave_one_out(build_sequences(data, seq), seq)
    return data, split, SemanticIDs.load(root / "ids"), model, dc
