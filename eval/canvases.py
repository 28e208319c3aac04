"""Per-canvas evaluation: a soft prompt against the frozen base and against full fine-tuning.

For each canvas (``prompt_tuning.canvases``) on the same held-out examples, with the same constrained
beam search (beam >= K, a hit is the whole ID):

- ``base``: the frozen foundation model with the canvas's prompt (canvas token and context, no soft
  prompt): what the model does on that surface untrained;
- ``base_home_prompt``: the frozen model asked the home question instead (history, plus the source
  title for t2t; the query or theme is dropped): the reuse-the-home-model reference;
- ``adapter``: the trained soft prompt, attached as virtual tokens exactly as it is served;
- ``full_finetune``: every weight trained on the same examples.

Canvas-specific figures: search reports lexical relevance (share of the top-K whose title contains
the query text) per query kind, and how much the member's history moves the results for tag queries
(1 - overlap of the top-K with and without the history); collection reports the share of the row
inside the theme. ``python -m eval.canvases`` writes ``results/prompt_tuning/<dataset>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.metrics import metrics_from_ranks, target_ranks
from gen_fm.decode import recommend
from gen_fm.tokenizer import PromptEncoder
from prompt_tuning.canvases import CanvasData, CanvasExample
from semantic_ids.trie import PrefixTrie


def decode_rows(model: torch.nn.Module, prompts: list[list[int]], trie: PrefixTrie, k: int,
                num_beams: int, batch_size: int = 64) -> list[list[int]]:
    recs = recommend(model, prompts, trie, k=k, num_beams=num_beams, constrained=True,
                     batch_size=batch_size)
    return [r.rows for r in recs]


def home_prompt(ex: CanvasExample, encoder: PromptEncoder) -> list[int]:
    """The home question for a canvas example: history (or the t2t source), no context."""
    hist = ex.history if ex.source is None else np.asarray([ex.source], dtype=np.int64)
    return encoder.encode(hist, canvas="home", user_id=ex.user)


def canvas_metrics(data: CanvasData, ranked: list[list[int]], titles_lower: Sequence[str],
                   row_categories: Sequence[Sequence[str]], k: int,
                   ranked_anonymous: list[list[int]] | None = None) -> dict[str, Any]:
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
    if data.canvas == "search":
        for kind in kinds:
            shares = [np.mean([ex.text in titles_lower[r] for r in rows[:k]]) if rows else 0.0
                      for ex, rows in zip(data.test, ranked) if ex.kind == kind]
            out[f"lexical_relevance_{kind}"] = float(np.mean(shares)) if shares else None
        if ranked_anonymous is not None:
            moved = [1.0 - len(set(a[:k]) & set(b[:k])) / k
                     for ex, a, b in zip(data.test, ranked, ranked_anonymous)
                     if ex.kind == "tag" and len(ex.history)]
            out["personalisation_shift_tag"] = float(np.mean(moved)) if moved else None
    if data.canvas == "collection":
        shares = [np.mean([ex.text in row_categories[r] for r in rows[:k]]) if rows else 0.0
                  for ex, rows in zip(data.test, ranked)]
        out["in_theme_share"] = float(np.mean(shares))
    return out


def evaluate_variant(model: torch.nn.Module, data: CanvasData, encoder: PromptEncoder,
                     trie: PrefixTrie, titles_lower, row_categories, k: int = 10,
                     num_beams: int = 10, prefix: Sequence[int] = (), home: bool = False
                     ) -> dict[str, Any]:
    """Metrics of one model on a canvas's held-out examples; `prefix` = soft-prompt token ids."""
    build = (lambda ex, hist=True: home_prompt(ex, encoder)) if home else \
        (lambda ex, hist=True: ex.prompt(encoder, data.canvas, history=hist))
    prompts = [list(prefix) + build(ex) for ex in data.test]
    t0 = time.perf_counter()
    ranked = decode_rows(model, prompts, trie, k, num_beams)
    seconds = time.perf_counter() - t0
    anonymous = None
    if data.canvas == "search" and not home and any(ex.kind == "tag" for ex in data.test):
        anonymous = decode_rows(model, [list(prefix) + build(ex, False) for ex in data.test], trie,
                                k, num_beams)
    out = canvas_metrics(data, ranked, titles_lower, row_categories, k, anonymous)
    out["decode_seconds"] = round(seconds, 2)
    return out


def row_attributes(gen, data) -> tuple[list[str], list[list[str]]]:
    """Lower-cased title and categories per ID-artifact row (from the catalog)."""
    cats = dict(zip(data.catalog["item_id"], data.catalog["categories"]))
    titles = gen.ids.titles or [""] * gen.ids.num_items
    return [(t or "").lower() for t in titles], [list(cats.get(i, [])) for i in gen.ids.item_ids]


def benchmark_canvas(model_dir: str | Path, data, split, canvas: str, config, k: int = 10,
                     num_beams: int = 10, full_finetune: bool = True) -> dict[str, Any]:
    """Every variant of one canvas on the same held-out examples (see the module docstring)."""
    from gen_fm.model import load_model
    from prompt_tuning.adapter import train_adapter, train_full, trainable_parameters
    from prompt_tuning.canvases import canvas_data_for
    from prompt_tuning.export import attach_soft_prompts

    gen = load_model(model_dir)
    encoder = gen.prompt_encoder()
    cd = canvas_data_for(gen, data, split, config)
    trie = PrefixTrie(gen.ids.codes, encoder.layout)
    titles, cats = row_attributes(gen, data)
    common = dict(data=cd, encoder=encoder, trie=trie, titles_lower=titles, row_categories=cats,
                  k=k, num_beams=num_beams)
    result: dict[str, Any] = {"data": cd.info, "config": {"query_mode": config.query_mode,
                                                          "num_virtual_tokens": config.num_virtual_tokens,
                                                          "epochs": config.epochs, "lr": config.lr}}
    total = sum(p.numel() for p in {id(p): p for p in gen.model.parameters()}.values())
    result["base"] = {**evaluate_variant(gen.model, **common), "trainable_parameters": 0}
    if canvas != "home":
        result["base_home_prompt"] = {**evaluate_variant(gen.model, home=True, **common),
                                      "trainable_parameters": 0}
    pairs = cd.training_pairs(encoder)
    t0 = time.perf_counter()
    peft_model = train_adapter(gen, pairs, config)
    seconds = time.perf_counter() - t0
    trainable = trainable_parameters(peft_model)
    prompt = peft_model.prompt_encoder["default"].embedding.weight.detach().clone()  # (n, H)
    gen = load_model(model_dir)  # a clean base for the virtual tokens
    _, served, virtual = attach_soft_prompts(gen, {canvas: prompt})
    result["adapter"] = {**evaluate_variant(served, prefix=virtual[canvas], **common),
                         "trainable_parameters": trainable,
                         "trainable_share": trainable / total, "train_seconds": round(seconds, 1),
                         "train_examples": len(pairs)}
    if full_finetune:
        gen = load_model(model_dir)
        t0 = time.perf_counter()
        train_full(gen, pairs, config)
        seconds = time.perf_counter() - t0
        result["full_finetune"] = {**evaluate_variant(gen.model, **common),
                                   "trainable_parameters": total, "trainable_share": 1.0,
                                   "train_seconds": round(seconds, 1), "train_examples": len(pairs)}
    return result


def main(argv: list[str] | None = None) -> int:
    import dataclasses
    import json

    from eval.machine import machine_info
    from gen_fm.model import load_model
    from prompt_tuning.config import PromptTuningStageConfig
    from sidrec.artifacts import write_json
    from sidrec.cli import parse_overrides
    from sidrec.data import DataConfig, load_data
    from sidrec.sequences import build_sequences, leave_one_out

    p = argparse.ArgumentParser(prog="python -m eval.canvases", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="foundation model folder")
    p.add_argument("--data", help="data directory (default $SIDREC_DATA_DIR)")
    p.add_argument("--dataset", help="dataset sub-folder")
    p.add_argument("--canvases", default="home,search,t2t,collection")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="PromptTuningStageConfig override (repeatable)")
    p.add_argument("--no-full-finetune", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="results JSON (default results/prompt_tuning/<dataset>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(None, args.set)
    gen = load_model(args.model)
    data = load_data(DataConfig(data_dir=args.data, dataset=args.dataset or gen.manifest["data"]["dataset"]))
    if data.fingerprint != gen.manifest["data"]["fingerprint"]:
        raise SystemExit(f"{args.model} was trained on other data than {data.path}")
    split = leave_one_out(build_sequences(data, gen.seq_config), gen.seq_config)
    canvases = [c.strip() for c in args.canvases.split(",") if c.strip()]
    out = {"benchmark": "prompt_tuning", "dataset": data.name, "model": str(args.model),
           "command": "python -m eval.canvases " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": machine_info(), "canvases": {}}
    path = Path(args.out or f"results/prompt_tuning/{data.name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    for canvas in canvases:
        config = PromptTuningStageConfig(**{**overrides, "canvas": canvas})
        print(f"== {canvas}", flush=True)
        out["canvases"][canvas] = benchmark_canvas(args.model, data, split, canvas, config,
                                                   full_finetune=not args.no_full_finetune)
        out["config"] = dataclasses.asdict(config)
        row = out["canvases"][canvas]
        print(json.dumps({v: {m: row[v].get(m) for m in ("recall@10", "ndcg@10")}
                          for v in row if isinstance(row[v], dict) and "recall@10" in row[v]}), flush=True)
        write_json(path, out)  # after every canvas: a long run keeps what it measured
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
