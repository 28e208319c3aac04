"""Per-canvas evaluation: a soft prompt against the frozen base and against full fine-tuning.

For each canvas (``prompt_tuning.canvases``), on the same held-out examples and with the same
constrained beam search (beam >= K, a hit is the whole ID), the variants: ``base`` (the frozen model
with the canvas's prompt, no soft prompt); ``base_home_prompt`` (the frozen model asked the home
question: history, plus the source title for t2t; query or theme dropped); ``adapter`` (the trained
soft prompt, attached as served); ``full_finetune`` (every weight trained on the same examples);
``base_fused`` / ``adapter_fused`` (``CanvasSpec.fuse_co_engaged`` canvases, home: the whole-catalog
beam without the history fused with the titles co-engaged with the member's newest, as served);
``context_order`` (with ``--candidates``: no model, the candidate set's first K titles in its own
order). Canvas-specific figures: search's lexical relevance per query kind and how much the member's
history moves tag queries' results (1 - overlap of the top-K with and without it); collection's share
of the row inside the theme. ``--candidates`` adds each variant judged inside the context's candidate
set (``<variant>_candidates``, as the server decodes by default). ``sidrec bench canvases`` writes
``results/prompt_tuning/<dataset>.json``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import write_json
from core.data import DataConfig, load_data
from core.sequences import build_sequences, leave_one_out
from eval.machine import machine_info
from gen_fm.dataset import catalog_to_sid_rows, to_sid_rows
from gen_fm.model import load_model
from gen_fm.tokenizer import DEFAULT_CANVAS
from prompt_tuning.adapter import train_adapter, train_full, trainable_parameters
from prompt_tuning.candidate_config import CandidateConfig
from prompt_tuning.candidates import fuse_all, fuse_ranks
from prompt_tuning.canvases import CanvasData, CanvasExample, canvas_data_for, get_canvas, sample_examples
from prompt_tuning.config import PromptTuningStageConfig
from prompt_tuning.evaluate import (
    candidate_rows,
    canvas_metrics,
    decode_rows,
    evaluate_variant,
    row_attributes,
)
from prompt_tuning.export import as_served
from prompt_tuning.train import candidate_index_for, co_engagement_for
from semantic_ids.trie import PrefixTrie


def benchmark_canvas(
    model_dir: str | Path,
    data,
    split,
    canvas: str,
    config,
    k: int = 10,
    num_beams: int = 10,
    full_finetune: bool = True,
    candidates: Any = None,
    train_index: Any = None,
) -> dict[str, Any]:
    """Every variant of one canvas on the same held-out examples (see the module docstring).
    `candidates`: the index the ``_candidates`` variants are judged inside; `train_index`: the
    index soft prompts train inside (``config.training.train_in_candidates``; default `candidates`)."""
    gen = load_model(model_dir)
    encoder = gen.prompt_encoder()
    cd = canvas_data_for(gen, data, split, config)
    trie = PrefixTrie(gen.ids.codes, encoder.layout)
    titles, cats = row_attributes(gen, data)
    common = dict(
        data=cd,
        encoder=encoder,
        trie=trie,
        titles_lower=titles,
        row_categories=cats,
        k=k,
        num_beams=num_beams,
    )
    result: dict[str, Any] = {
        "data": cd.info,
        "config": {
            "query_mode": config.canvas_data.query_mode,
            "num_virtual_tokens": config.adapter.num_virtual_tokens,
            "method": config.adapter_method,
            "lora_rank": config.adapter.lora_rank,
            "epochs": config.training.epochs,
            "lr": config.training.lr,
        },
    }
    total = sum(p.numel() for p in {id(p): p for p in gen.model.parameters()}.values())
    allow = candidate_rows(cd, candidates)
    if allow is not None and cd.test[0].source is not None:  # title contexts: the source's neighbourhood
        result["neighbourhood"] = {
            "size": candidates.config.source_candidates,
            "targets_inside": float(np.mean([ex.target in set(a) for ex, a in zip(cd.test, allow)])),
        }
    if allow is not None:  # no model: the candidate set in its own order (BM25 fusion for a
        # query, co-engagement then content for a t2t source, catalog order for a theme)
        result["context_order"] = {
            **canvas_metrics(cd, [a[:k] for a in allow], titles, cats, k),
            "trainable_parameters": 0,
        }
    result["base"] = {**evaluate_variant(gen.model, **common), "trainable_parameters": 0}
    if allow is not None:
        result["base_candidates"] = {
            **evaluate_variant(gen.model, allow=allow, **common),
            "trainable_parameters": 0,
        }
    fuse_args = dict(cd=cd, encoder=encoder, trie=trie, titles=titles, cats=cats, k=k)
    if allow is not None and get_canvas(canvas).fuse_candidate_order:  # as served: fused
        result["base_fused_candidates"] = fused_variant(
            gen.model, (), orders=allow, allow=allow, config=candidates.config, **fuse_args
        )
        result["fusion_selection"] = fusion_selection(
            gen, data, split, canvas, candidates, encoder, trie, titles, cats, k
        )
    fuse_with = None
    if get_canvas(canvas).fuse_co_engaged:  # as served: the whole-catalog beam fused with the
        table = co_engagement_for(gen, data, split)  # newest title's co-engaged titles
        fuse_with = [table.of_recent(ex.history) for ex in cd.test]  # without the history's titles
        result["base_fused"] = fused_variant(gen.model, (), orders=fuse_with, drop_history=True, **fuse_args)
    if canvas != DEFAULT_CANVAS:  # the member's home prompt, as a reference for the other canvases
        result["base_home_prompt"] = {
            **evaluate_variant(gen.model, home=True, **common),
            "trainable_parameters": 0,
        }
        if allow is not None:  # the member's home ranking, inside the context's candidates
            result["base_home_prompt_candidates"] = {
                **evaluate_variant(gen.model, home=True, allow=allow, **common),
                "trainable_parameters": 0,
            }
    pairs = cd.training_pairs(encoder)
    if config.adapter_method == "none":  # served by the frozen model: --set method=... measures one
        return result
    t0 = time.perf_counter()
    train_allow = (
        candidate_rows(cd, train_index or candidates, cd.train)
        if config.training.train_in_candidates
        else None
    )
    peft_model = train_adapter(gen, pairs, config, train_allow)
    seconds = time.perf_counter() - t0
    trainable = trainable_parameters(peft_model)
    served, prefix = as_served(model_dir, peft_model, canvas)
    result["adapter"] = {
        **evaluate_variant(served, prefix=prefix, **common),
        "method": config.adapter_method,
        "trainable_parameters": trainable,
        "trainable_share": trainable / total,
        "train_seconds": round(seconds, 1),
        "train_examples": len(pairs),
        "in_candidates": train_allow is not None,
    }
    if fuse_with is not None:
        result["adapter_fused"] = {
            **fused_variant(served, prefix, orders=fuse_with, drop_history=True, **fuse_args),
            "trainable_parameters": trainable,
        }
    if allow is not None:
        result["adapter_candidates"] = {
            **evaluate_variant(served, prefix=prefix, allow=allow, **common),
            "trainable_parameters": trainable,
        }
    if full_finetune:
        gen = load_model(model_dir)
        t0 = time.perf_counter()
        train_full(gen, pairs, config)
        seconds = time.perf_counter() - t0
        result["full_finetune"] = {
            **evaluate_variant(gen.model, **common),
            "trainable_parameters": total,
            "trainable_share": 1.0,
            "train_seconds": round(seconds, 1),
            "train_examples": len(pairs),
        }
        if allow is not None:
            result["full_finetune_candidates"] = {
                **evaluate_variant(gen.model, allow=allow, **common),
                "trainable_parameters": total,
                "trainable_share": 1.0,
            }
    return result


def fused_variant(
    model,
    prefix,
    *,
    cd,
    encoder,
    trie,
    titles,
    cats,
    k: int,
    orders: list[list[int]],
    allow: list[list[int]] | None = None,
    config=None,
    drop_history: bool = False,
) -> dict[str, Any]:
    """A variant as a fusing canvas serves it: its beam of 2K (inside `allow`, if given; without
    the example's history titles with `drop_history`) fused with ``orders`` by reciprocal rank
    (``fuse_all``; `config`: a ``CandidateConfig``, default the served constants)."""
    cc = config or CandidateConfig()
    wide = decode_rows(
        model,
        [list(prefix) + ex.prompt(encoder, cd.canvas) for ex in cd.test],
        trie,
        2 * k,
        2 * k,
        allow=allow,
    )
    if drop_history:
        wide = [
            [r for r in row if r not in seen] for row, seen in zip(wide, (set(ex.history) for ex in cd.test))
        ]
    return {
        **canvas_metrics(cd, fuse_all(wide, orders, k, cc), titles, cats, k),
        "fusion_k": cc.fusion_k,
        "fusion_weight": cc.fusion_weight,
        "trainable_parameters": 0,
    }


def fusion_selection(
    gen, data, split, canvas: str, index, encoder, trie, titles, cats, k: int, n: int = 1000, seed: int = 1
) -> dict[str, Any]:
    """The fusion constants (``CandidateConfig.fusion_k`` / ``fusion_weight``) judged on the
    *validation* split: up to `n` members' second-to-last titles after the history before them,
    the source being that history's last title (the test pairs are never looked at)."""
    sid_rows = catalog_to_sid_rows(data, gen.ids)
    ex = split.examples("valid")
    val = []
    for u, h, t in zip(ex.users, ex.histories, ex.targets):
        h, t = to_sid_rows(h, sid_rows), int(to_sid_rows([t], sid_rows)[0])
        if len(h) and h[-1] != t:
            val.append(
                CanvasExample(
                    h[-split.max_history :], t, split.sequences.user_ids[u], kind="pair", source=int(h[-1])
                )
            )
    vd = CanvasData(canvas, [], sample_examples(val, n, seed))
    allow = candidate_rows(vd, index)
    wide = decode_rows(
        gen.model, [e.prompt(encoder, canvas) for e in vd.test], trie, 2 * k, 2 * k, allow=allow
    )

    def judge(ranked):
        m = canvas_metrics(vd, ranked, titles, cats, k)
        return [round(m[f"recall@{k}"], 4), round(m[f"ndcg@{k}"], 4)]

    grid = {
        f"k={c} w={w}": judge([fuse_ranks(r, a, k, c, w) for r, a in zip(wide, allow)])
        for c in (1, 5, 20, 60)
        for w in (0.0, 0.5, 1.0, 2.0)
    }
    return {
        "examples": len(vd.test),
        "recall_ndcg": grid,
        "order_only": judge([a[:k] for a in allow]),
        "best": max(grid, key=lambda g: tuple(grid[g])),
    }


def bench_canvases(
    *,
    model: str,
    out: str | None = None,
    data_dir: str | None = None,
    dataset: str | None = None,
    canvases: Sequence[str] = ("home", "search", "t2t", "collection"),
    overrides: dict[str, Any] | None = None,
    full_finetune: bool = True,
    candidates: bool = False,
    neighbourhood: int | None = None,
    title_tags: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Every variant of every canvas (``benchmark_canvas``); returns the report, written to ``out``
    (default ``results/prompt_tuning/<dataset>.json``) after every canvas.

    ``overrides``: PromptTuningStageConfig fields for every canvas; ``candidates``: also judge every
    variant inside the context's candidate set; ``neighbourhood``: the size of a t2t source's
    candidate set (``CandidateConfig.source_candidates``; None: its default, as served);
    ``title_tags``: False leaves members' tags out of the candidate index (the ablation);
    ``command``: recorded in the report.
    """
    import dataclasses
    import json

    gen = load_model(model)
    data = load_data(DataConfig(data_dir=data_dir, dataset=dataset or gen.manifest["data"]["dataset"]))
    if data.fingerprint != gen.manifest["data"]["fingerprint"]:
        raise ValueError(f"{model} was trained on other data than {data.path}")
    split = leave_one_out(build_sequences(data, gen.seq_config), gen.seq_config)
    configs = {c: PromptTuningStageConfig.create(**{**(overrides or {}), "canvas": c}) for c in canvases}
    index = None
    if candidates or any(config.training.train_in_candidates for config in configs.values()):
        # held-out tag pairs depend on the seed and eval_fraction, which every canvas shares
        index = candidate_index_for(
            gen,
            data,
            split,
            configs[canvases[0]],
            None if neighbourhood is None else CandidateConfig(source_candidates=neighbourhood),
            title_tags=title_tags,
        )
    report = {
        "benchmark": "prompt_tuning",
        "dataset": data.name,
        "model": str(model),
        "command": command,
        "machine": machine_info(),
        "title_tags": title_tags,
        "canvases": {},
    }
    path = Path(out or f"results/prompt_tuning/{data.name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    for canvas in canvases:
        config = configs[canvas]
        print(f"== {canvas}", flush=True)
        report["canvases"][canvas] = benchmark_canvas(
            model,
            data,
            split,
            canvas,
            config,
            full_finetune=full_finetune,
            candidates=index if candidates else None,
            train_index=index,
        )
        report["config"] = dataclasses.asdict(config)
        row = report["canvases"][canvas]
        print(
            json.dumps(
                {
                    v: {m: row[v].get(m) for m in ("recall@10", "ndcg@10")}
                    for v in row
                    if isinstance(row[v], dict) and "recall@10" in row[v]
                }
            ),
            flush=True,
        )
        write_json(path, report)  # after every canvas: a long run keeps what it measured
    print(f"wrote {path}")
    return report
