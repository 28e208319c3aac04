"""Canvases: the registry of product surfaces, and each one's training and held-out examples.

A canvas is a ``CanvasSpec`` (``base.py``): name, canvas token, context field and how it becomes
prompt tokens and candidates, example builder, own metrics. Training, evaluation, serving and the
quickstart read the registry at call time, so a canvas added with ``register(CanvasSpec(...))`` is
trained and served like the built-in ones below, one file each, all in one prompt format
(``PromptEncoder.encode``: bos, member token, canvas token, history, [``<sep>`` context]):
canvas      context after <sep>                  history                      target
home        none                                 the member's                 the next title
search      the query (``QueryEncoder``)         the member's or none (anon.) a title the query is about
t2t         none: the source is the history's    the member's, then the       a title engaged with right after
            newest title (home's canvas token)   source                       the source, in its neighbourhood
collection  the theme, a category as text        the member's                 the next title in that theme
            (``QueryEncoder``)
Each canvas file says where its examples come from and why nothing leaks into the held-out part."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.data import RecData
from core.sequences import Split, build_sequences, leave_one_out
from gen_fm.dataset import IGNORE, catalog_to_sid_rows, example_features, to_sid_rows
from gen_fm.tokenizer import PromptEncoder
from prompt_tuning.canvases.base import (
    CONTEXT_KINDS,
    REQUEST_FIELDS,
    CanvasContext,
    CanvasData,
    CanvasExample,
    CanvasSource,
    CanvasSpec,
    ExampleContext,
    Examples,
    QueryEncoder,
    hash_fraction,
    held_out_examples,
    next_title_examples,
    sample_examples,
    theme_of,
)
from prompt_tuning.canvases.registry import (
    CANVASES,
    canvas_names,
    context_fields,
    get_canvas,
    register,
    unregister,
)
from prompt_tuning.config import PromptTuningStageConfig
from semantic_ids.ids import SemanticIDs

from prompt_tuning.canvases import collection, home, search, t2t  # the built-in canvases

for _spec in (home.SPEC, search.SPEC, t2t.SPEC, collection.SPEC):
    register(_spec)


def build_canvas_data(
    canvas: str,
    data: RecData,
    split: Split,
    ids: SemanticIDs,
    encoder: PromptEncoder,
    config: PromptTuningStageConfig,
    queries: QueryEncoder | None = None,
) -> CanvasData:
    """Training and held-out examples of one canvas from a real dataset (its ``build_examples``),
    then the seeded samples of ``config.canvas_data.max_train_examples`` and ``max_eval_examples``."""
    spec = get_canvas(canvas)
    if spec.context_kind == "text" and queries is None:
        raise ValueError(f"the {canvas} canvas needs a QueryEncoder for its text context")
    src = CanvasSource(data, split, ids, encoder, config, catalog_to_sid_rows(data, ids), queries)
    train, test, own = spec.build_examples(src)
    info = dict(own)
    train = sample_examples(train, config.canvas_data.max_train_examples, config.seed)
    test = sample_examples(test, config.canvas_data.max_eval_examples, config.seed + 1)
    if not train or not test:
        raise ValueError(
            f"{data.name}: the {canvas} canvas has {len(train)} training and "
            f"{len(test)} held-out examples; it needs both"
        )
    info.update(
        canvas=canvas,
        dataset=data.name,
        train=len(train),
        test=len(test),
        train_kinds=dict(Counter(ex.kind for ex in train)),
        test_kinds=dict(Counter(ex.kind for ex in test)),
    )
    return CanvasData(canvas, train, test, info)


def canvas_data_for(gen, data: RecData, split: Split, config: PromptTuningStageConfig) -> CanvasData:
    """``build_canvas_data`` for a loaded model (``gen_fm.model.GenFM``): its ID map and prompt
    encoder, and a ``QueryEncoder`` over its copy of the ID artifact when the canvas takes text."""
    queries = None
    if get_canvas(config.canvas).context_kind == "text":
        queries = QueryEncoder(
            gen.path / "semantic_ids", config.canvas_data.query_mode, config.canvas_data.num_anchors
        )
    return build_canvas_data(config.canvas, data, split, gen.ids, gen.prompt_encoder(), config, queries)


def mixture_examples(
    data: RecData,
    split: Split,
    ids: SemanticIDs,
    ids_dir: str | Path,
    encoder: PromptEncoder,
    canvases: Sequence[str],
    per_canvas: int,
    seed: int = 0,
) -> tuple["datasets.Dataset", dict]:  # noqa: F821
    """Training examples of other canvases as pretraining rows (``gen_fm.dataset`` columns).

    Each row is a canvas prompt followed by the target's code tokens, with the loss on the target
    only. Only *training* examples are used, and on top of the canvases' own rules a member's
    validation and test targets are taken out of that member's examples (as targets and as history:
    a search tag may postdate them), so mixing canvases into pretraining leaks nothing into the
    next-title evaluation either. Returns the rows and counts per canvas.
    """
    import datasets

    same = [c for c in canvases if get_canvas(c).title_in_history]
    if same:
        raise ValueError(
            f"canvas_mix: {same} ask the home question (the source is the history's "
            f"newest title): their examples are next-title windows pretraining already holds"
        )
    sid_rows = catalog_to_sid_rows(data, ids)
    held: dict[str, set[int]] = {}  # member -> ID rows of their validation and test targets
    for name in ("valid", "test"):
        ex = split.examples(name)
        for u, t in zip(ex.users, to_sid_rows(ex.targets, sid_rows)):
            held.setdefault(split.sequences.user_ids[u], set()).add(int(t))
    member = {u: i for i, u in enumerate(split.sequences.user_ids)}
    queries = None
    if any(get_canvas(c).context_kind == "text" for c in canvases):
        queries = QueryEncoder(ids_dir)
    cols: dict[str, list] = {"input_ids": [], "labels": [], "member": []}
    info: dict = {}
    for canvas in canvases:
        # draw from every training example, then cap after the held-out filter
        config = PromptTuningStageConfig.create(canvas=canvas, max_train_examples=None, seed=seed)
        cd = build_canvas_data(canvas, data, split, ids, encoder, config, queries)
        kept = []
        for ex in cd.train:
            out = held.get(ex.user, set())  # anonymous examples (user None) hold nothing
            if ex.target in out:
                continue
            if out and len(ex.history):
                ex.history = ex.history[~np.isin(ex.history, list(out))]
            kept.append(ex)
        dropped = len(cd.train) - len(kept)
        kept = sample_examples(kept, per_canvas, seed)
        for ex in kept:
            prompt = ex.prompt(encoder, canvas)
            target = encoder.sid_tokens[ex.target].tolist()
            cols["input_ids"].append(prompt + target)
            cols["labels"].append([IGNORE] * len(prompt) + target)
            cols["member"].append(member.get(ex.user, -1))  # -1: anonymous
        info[canvas] = {
            "examples": len(kept),
            "kinds": dict(Counter(ex.kind for ex in kept)),
            "dropped_held_out": dropped,
        }
    return datasets.Dataset.from_dict(cols, features=example_features()), info


def pretraining_mixture(
    data: RecData, seq_config, ids_dir: str | Path, config
) -> tuple["datasets.Dataset", dict]:  # noqa: F821
    """The rows ``gen_fm.train.pretrain(extra_rows=...)`` needs for ``config.augment.canvas_mix``
    (a ``PretrainConfig``): the same split and prompt format the pretraining run builds."""
    split = leave_one_out(build_sequences(data, seq_config), seq_config)
    ids = SemanticIDs.load(ids_dir)
    encoder = PromptEncoder.from_ids(ids, config.model.num_user_buckets)
    mix = config.augment
    return mixture_examples(
        data, split, ids, ids_dir, encoder, mix.canvas_mix, mix.canvas_mix_examples, config.seed
    )


__all__ = [
    "CANVASES",
    "CONTEXT_KINDS",
    "CanvasContext",
    "CanvasData",
    "CanvasExample",
    "CanvasSource",
    "CanvasSpec",
    "ExampleContext",
    "Examples",
    "QueryEncoder",
    "REQUEST_FIELDS",
    "build_canvas_data",
    "canvas_data_for",
    "canvas_names",
    "context_fields",
    "get_canvas",
    "hash_fraction",
    "held_out_examples",
    "mixture_examples",
    "next_title_examples",
    "pretraining_mixture",
    "register",
    "sample_examples",
    "theme_of",
    "unregister",
]
