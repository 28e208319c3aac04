"""Held-out evaluation of one canvas: the same constrained beam search and figures for every variant.

Lives with training: ``sidrec prompts train`` compares its adapter with the frozen base through it,
and the benchmark (``eval.bench_canvases``) calls it for every variant. Canvas-specific figures come
from the canvas's spec (``CanvasSpec.metrics``): search reports lexical relevance (share of the top-K
whose title contains the query text) per query kind and how much the member's history moves the
results for tag queries (its ``anonymous_kinds`` are decoded twice); collection reports the share of
the row inside the theme.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gen_fm.decode import recommend
from gen_fm.tokenizer import DEFAULT_CANVAS, PromptEncoder
from prompt_tuning.canvases import CanvasData, CanvasExample, get_canvas
from semantic_ids.trie import PrefixTrie
from core.metrics import metrics_from_ranks, target_ranks


def decode_rows(
    model: torch.nn.Module,
    prompts: list[list[int]],
    trie: PrefixTrie,
    k: int,
    num_beams: int,
    batch_size: int = 64,
    allow: list[list[int] | None] | None = None,
) -> list[list[int]]:
    recs = recommend(
        model, prompts, trie, k=k, num_beams=num_beams, constrained=True, batch_size=batch_size, allow=allow
    )
    return [r.rows for r in recs]


def candidate_rows(
    data: CanvasData, candidates, examples: Sequence[CanvasExample] | None = None
) -> list[list[int] | None] | None:
    """Per example (default: the held-out ones), the rows its context makes eligible (the spec's
    ``candidates`` over a ``prompt_tuning.candidates.CandidateIndex``: the query for search, the
    theme for collection, the source title for t2t); None for canvases whose context restricts
    nothing. Examples with the same context share one list."""
    spec = get_canvas(data.canvas)
    if candidates is None or spec.candidates is None:
        return None
    memo: dict[Any, list[int]] = {}
    out: list[list[int] | None] = []
    for ex in data.test if examples is None else examples:
        value = ex.source if spec.context_kind == "title" else (ex.text or "")
        if value not in memo:
            memo[value] = spec.candidates(candidates, value).rows.tolist()
        out.append(memo[value])
    return out


def home_prompt(ex: CanvasExample, encoder: PromptEncoder) -> list[int]:
    """The home question for a canvas example: history (or the t2t source), no context."""
    hist = ex.history if ex.source is None else np.asarray([ex.source], dtype=np.int64)
    return encoder.encode(hist, canvas=DEFAULT_CANVAS, user_id=ex.user)


def canvas_metrics(
    data: CanvasData,
    ranked: list[list[int]],
    titles_lower: Sequence[str],
    row_categories: Sequence[Sequence[str]],
    k: int,
    ranked_anonymous: list[list[int]] | None = None,
) -> dict[str, Any]:
    """Recall/NDCG@5,K overall and per example kind, plus the canvas's own figures."""
    ks = tuple(sorted({min(5, k), k}))
    targets = [ex.target for ex in data.test]
    m = metrics_from_ranks(target_ranks(ranked, targets), ks)
    out: dict[str, Any] = {"num_examples": len(targets)}
    for kk in ks:
        out[f"recall@{kk}"], out[f"ndcg@{kk}"] = m.recall[kk], m.ndcg[kk]
    kinds = sorted({ex.kind for ex in data.test})
    if len(kinds) > 1:
        for kind in kinds:
            idx = [i for i, ex in enumerate(data.test) if ex.kind == kind]
            mk = metrics_from_ranks(target_ranks([ranked[i] for i in idx], [targets[i] for i in idx]), (k,))
            out[f"recall@{k}_{kind}"] = mk.recall[k]
            out[f"examples_{kind}"] = len(idx)
    spec = get_canvas(data.canvas)
    if spec.metrics is not None:
        out.update(
            spec.metrics(
                data,
                ranked,
                titles_lower=titles_lower,
                row_categories=row_categories,
                k=k,
                ranked_anonymous=ranked_anonymous,
            )
        )
    return out


def evaluate_variant(
    model: torch.nn.Module,
    data: CanvasData,
    encoder: PromptEncoder,
    trie: PrefixTrie,
    titles_lower,
    row_categories,
    k: int = 10,
    num_beams: int = 10,
    prefix: Sequence[int] = (),
    home: bool = False,
    allow: list[list[int] | None] | None = None,
) -> dict[str, Any]:
    """Metrics of one model on a canvas's held-out examples; `prefix` = soft-prompt token ids;
    `allow` = per-example candidate rows (``candidate_rows``): the answer is chosen inside them."""
    build = (
        (lambda ex, hist=True: home_prompt(ex, encoder))
        if home
        else (lambda ex, hist=True: ex.prompt(encoder, data.canvas, history=hist))
    )
    prompts = [list(prefix) + build(ex) for ex in data.test]
    t0 = time.perf_counter()
    ranked = decode_rows(model, prompts, trie, k, num_beams, allow=allow)
    seconds = time.perf_counter() - t0
    anonymous = None
    kinds = get_canvas(data.canvas).anonymous_kinds  # the canvas's figures compare these without history
    if kinds and not home and any(ex.kind in kinds for ex in data.test):
        anonymous = decode_rows(
            model, [list(prefix) + build(ex, False) for ex in data.test], trie, k, num_beams, allow=allow
        )
    out = canvas_metrics(data, ranked, titles_lower, row_categories, k, anonymous)
    out["decode_seconds"] = round(seconds, 2)
    if allow is not None:
        sizes = [len(a) for a in allow if a is not None]
        out["candidates_mean"] = float(np.mean(sizes)) if sizes else None
        out["rows_short_of_k"] = float(np.mean([len(r) < k for r in ranked]))
    return out


def row_attributes(gen, data) -> tuple[list[str], list[list[str]]]:
    """Lower-cased title and categories per ID-artifact row (from the catalog)."""
    cats = dict(zip(data.catalog["item_id"], data.catalog["categories"]))
    titles = gen.ids.titles or [""] * gen.ids.num_items
    return [(t or "").lower() for t in titles], [list(cats.get(i, [])) for i in gen.ids.item_ids]
