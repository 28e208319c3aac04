"""A tiny exported model folder with three soft prompts (home, search, t2t), built in seconds.

Unlike ``tiny_model`` (random codes, no quantizer), the ID artifact is built by
``semantic_ids.builder.build_ids`` from a small MovieLens-layout catalog with real title text, so it
carries what ``QueryEncoder`` reads (quantizer, embedder state, fused title embeddings) and text
queries can be served. Each soft prompt is trained on a toy objective (as in
tests/prompt_tuning/test_adapter.py): its canvas always wants one title, so a canvas switch visibly
changes the list. The collection canvas has no adapter there: it is served by its canvas token;
``write_exported_model(root, lora=True)`` adds a collection LoRA trained the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gen_fm.co_engagement import build_co_engagement
from gen_fm.config import PretrainConfig
from gen_fm.model import build_model, load_model, save_model
from gen_fm.tokenizer import model_layout
from prompt_tuning.adapter import save_adapter, train_adapter
from prompt_tuning.config import PromptTuningStageConfig
from prompt_tuning.canvases import get_canvas
from prompt_tuning.export import export_adapters
from semantic_ids.builder import build_ids
from semantic_ids.config import SemanticIDConfig
from core.data import load_data
from core.sequences import SequenceConfig

_ADJECTIVES = ("Midnight", "Frozen", "Golden", "Silent", "Electric")
_NOUNS = ("Paris", "Ocean", "Dragon", "Robot", "Jungle", "Desert", "Harbor", "Castle")
GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")
MAX_HISTORY = 4
USER_BUCKETS = 3
NUM_VIRTUAL = 4
ID_CONFIG = dict(
    quantizer="rqkmeans",
    text_weight=1.0,
    metadata_weight=0.5,
    num_levels=2,
    codebook_size=4,
    dedup_size=8,
    quantizer_options={"kmeans_iters": 5},
)
TARGETS = {"home": 3, "search": 17, "t2t": 29}  # toy objective: the row each soft prompt wants
LORA_TARGET = 11  # the row the collection LoRA wants
LORA_RANK = 4


# What members wrote about two titles, in words no title holds: search finds them through the tags
# ("gold" begins "Golden" but is no title word: it gets the Golden titles and m33)
TITLE_TAGS = {"m33": ["heist gone wrong", "twisty", "gold"], "m07": ["heist"]}


def write_catalog(root: Path) -> Path:
    """40 titles named "<Adjective> <Noun> (year)" (so "paris" matches five of them), MovieLens layout."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["movieId,title,genres"]
    for i, (adj, noun) in enumerate((a, n) for n in _NOUNS for a in _ADJECTIVES):
        lines.append(f"m{i:02d},{adj} {noun} ({1980 + i}),{GENRES[i % len(GENRES)]}")
    (root / "movies.csv").write_text("\n".join(lines) + "\n")
    ratings = ["userId,movieId,rating,timestamp"] + [
        f"u{u},m{(u * 7 + j) % 40:02d},4.0,{1000 + j}" for u in range(6) for j in range(5)
    ]
    (root / "ratings.csv").write_text("\n".join(ratings) + "\n")
    return root


def _examples(gen, canvas: str, n: int = 48, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(prompt, target tokens) in each canvas's prompt format (``prompt_tuning.canvases``): home a
    history; search a history (or none) and a 3-title anchors context; t2t a history ending with
    its source, under home's canvas token (the t2t spec's ``title_in_history``)."""
    rng = np.random.default_rng(seed)
    enc = gen.prompt_encoder()
    N = gen.ids.num_items
    target = enc.sid_tokens[TARGETS.get(canvas, LORA_TARGET)].tolist()
    out = []
    for _ in range(n):
        history = rng.integers(0, N, rng.integers(0 if canvas == "search" else 1, MAX_HISTORY + 1))
        user, context = f"u{rng.integers(10)}", None
        if canvas in ("search", "collection"):
            context = enc.sid_tokens[rng.choice(N, 3, replace=False)].reshape(-1).tolist()
        out.append(
            (enc.encode(history, canvas=get_canvas(canvas).token, user_id=user, context=context), target)
        )
    return out


def write_exported_model(root: Path, lora: bool = False) -> Path:
    """Catalog -> ID artifact (with quantizer) -> tiny base model -> home, search and t2t soft
    prompts (and a collection LoRA with `lora`) -> export."""
    data = load_data(data_dir=str(write_catalog(root / "data" / "tinyads")), dataset=None)
    ids = build_ids(data, SemanticIDConfig.create(**ID_CONFIG), root / "ids")
    config = PretrainConfig.from_preset(
        "tiny", num_user_buckets=USER_BUCKETS, position_headroom=24, dropout=0.0
    )
    layout = model_layout(ids.layout, USER_BUCKETS)
    torch.manual_seed(0)
    model = build_model(config, layout, max_history=MAX_HISTORY).eval()
    with torch.no_grad():  # wider than Llama's init, so a soft prompt can steer it and ranks have no ties
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(5.0 if "embed" in name else 8.0)
    # the members' histories of write_catalog's ratings, as pretraining would count them: every
    # engine test then loads a folder holding the table (vLLM must not take it for weights)
    histories = [np.asarray([ids.index_of(f"m{(u * 7 + j) % 40:02d}") for j in range(5)]) for u in range(6)]
    base = save_model(
        root / "base",
        model,
        layout,
        ids,
        config,
        SequenceConfig(max_history=MAX_HISTORY),
        data_fingerprint=data.fingerprint,
        dataset="tinyads",
        training={"steps": 0},
        co_engagement=build_co_engagement(histories, ids.num_items),
        title_tags=TITLE_TAGS,
    )
    adapters = []
    for i, canvas in enumerate(TARGETS):
        gen = load_model(base)
        # t2t is served by the frozen model by default; the folder holds a t2t soft prompt anyway, to
        # serve a soft prompt on a canvas whose source joins the history
        pt = PromptTuningStageConfig.create(
            canvas=canvas,
            num_virtual_tokens=NUM_VIRTUAL,
            lr=0.05,
            epochs=10,
            batch_size=16,
            seed=i,
            query_mode="anchors",
            num_anchors=3,
            method="soft_prompt",
        )
        peft_model = train_adapter(gen, _examples(gen, canvas, seed=i), pt)
        adapters.append(
            save_adapter(root / f"adapter_{canvas}", peft_model, gen, pt, training={"examples": 48})
        )
    if lora:
        gen = load_model(base)
        pt = PromptTuningStageConfig.create(
            canvas="collection",
            method="lora",
            lora_rank=LORA_RANK,
            lora_lr=0.02,
            epochs=10,
            batch_size=16,
            seed=7,
            query_mode="anchors",
            num_anchors=3,
            train_in_candidates=False,
        )
        peft_model = train_adapter(gen, _examples(gen, "collection", seed=7), pt)
        adapters.append(
            save_adapter(root / "adapter_collection", peft_model, gen, pt, training={"examples": 48})
        )
    return export_adapters(base, adapters, root / ("exported-lora" if lora else "exported"))
