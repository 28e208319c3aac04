"""A tiny random model folder written with the project's own save path (the serving tests' model)."""

from __future__ import annotations

from pathlib import Path

import torch

from gen_fm.config import PretrainConfig
from gen_fm.model import build_model
from gen_fm.titles import attach_title_embedding, bake_title_embeddings
from gen_fm.tokenizer import model_layout
from tests.tiny_folders import save_unit_model, write_id_artifact

# 60 titles in a (4, 4, 4, 3) space: prefixes share branches at every level, some parents have a
# single child (the engine skips the model there), and the last level is a short "collision" digit.
CODEBOOKS = (4, 4, 4, 3)
NUM_TITLES = 60
MAX_HISTORY = 6
USER_BUCKETS = 5


def write_tiny_model(root: Path, seed: int = 0, history_tokens: str = "codes") -> Path:
    """ID artifact with random unique codes + a seeded tiny Llama, saved as a model folder.

    Weights are drawn wider than Llama's default (std 0.02 gives near-uniform next-token
    distributions, whose near-ties would make ranking comparisons meaningless). With
    `history_tokens="titles"` histories are title tokens, their rows composed and baked as
    pretraining writes them."""
    item_ids = [f"tt{i:03d}" for i in range(NUM_TITLES)]
    titles = [f"Title {i}" for i in range(NUM_TITLES)]
    ids = write_id_artifact(root / "ids", item_ids, CODEBOOKS, seed, titles=titles)
    config = PretrainConfig.from_preset(
        "tiny", num_user_buckets=USER_BUCKETS, dropout=0.0, history_tokens=history_tokens
    )
    title_tokens = history_tokens == "titles"
    layout = model_layout(ids.layout, config.model.num_user_buckets, NUM_TITLES if title_tokens else 0)
    torch.manual_seed(seed)
    model = build_model(config, layout, max_history=MAX_HISTORY).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    if title_tokens:
        emb = attach_title_embedding(model, layout, layout.sids_to_ids(ids.codes))
        with torch.no_grad():
            emb.identity.weight.normal_(0.0, 0.3)
        bake_title_embeddings(model)
    return save_unit_model(
        root / "model",
        model,
        layout,
        ids,
        config,
        MAX_HISTORY,
        data_fingerprint="0" * 64,
        training={"steps": 0},
    )


GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance")
UNCATALOGUED = "tt059"  # a model title missing from the catalog: no attributes at all


def tiny_attributes(i: int) -> tuple[list[str], int | None]:
    """(genres, year) of title i in the tiny catalog: every 11th has no genre, every 13th no year,
    every 7th a second genre."""
    genres = [] if i % 11 == 0 else [GENRES[i % 5]] + ([GENRES[(i + 2) % 5]] if i % 7 == 0 else [])
    return genres, None if i % 13 == 0 else 1970 + (i * 7) % 40


def write_tiny_catalog(root: Path) -> Path:
    """A MovieLens-layout data folder over the tiny model's titles (``core.data`` reads it), so
    attribute rules are tested through the real loading path."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["movieId,title,genres"]
    for i in range(NUM_TITLES):
        if f"tt{i:03d}" == UNCATALOGUED:
            continue
        genres, year = tiny_attributes(i)
        lines.append(
            f"tt{i:03d},Title {i}{'' if year is None else f' ({year})'},"
            f"{'|'.join(genres) or '(no genres listed)'}"
        )
    (root / "movies.csv").write_text("\n".join(lines) + "\n")
    ratings = ["userId,movieId,rating,timestamp"] + [
        f"u{u},tt{(u * 5 + j) % (NUM_TITLES - 1):03d},4.0,{1000 + j}" for u in range(4) for j in range(6)
    ]
    (root / "ratings.csv").write_text("\n".join(ratings) + "\n")
    return root
