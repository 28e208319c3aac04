"""Benchmark semantic-ID building: quality figures of the codes and wall time on this machine.

    sidrec bench ids --dataset amazon-beauty --quantizer rqvae [--set key=value ...]

Writes results/semantic_ids/<dataset>-<quantizer>[-<tag>].json with the artifact's stats, the
config, the data fingerprint, the command line and the machine; BENCHMARKS.md quotes these files.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from eval.machine import machine_info
from semantic_ids.builder import build_ids
from semantic_ids.config import SemanticIDConfig
from core.artifacts import jsonable, write_json
from core.data import CACHE_DIR_ENV, DataConfig, load_data


def sample_groups(ids, depth: int, n: int = 5) -> list[dict]:
    """A few groups of titles sharing their first `depth` codes, for a person to judge."""
    groups = sorted((p, m) for p, m in ids.prefix_groups(depth).items() if len(m) >= 3)
    step = max(len(groups) // n, 1)
    return [
        {"prefix": list(p), "size": len(m), "titles": [ids.title(i) for i in m[:6]]}
        for p, m in groups[::step][:n]
    ]


def bench_ids(
    *,
    dataset: str,
    config: SemanticIDConfig,
    data_dir: str | None = None,
    tag: str | None = None,
    runs: str = "runs/bench",
    results: str = "results/semantic_ids",
    warm: bool = False,
    command: str = "",
) -> dict:
    """Build the IDs of ``dataset`` with ``config`` under ``runs``; write the report to
    ``results/<dataset>-<quantizer>[-<tag>].json`` and return it.

    ``warm=False`` times a cold start: the on-disk caches are a new empty folder for the duration,
    so the sentence encoder's time is measured. ``command`` is recorded in the report.
    """
    before = os.environ.get(CACHE_DIR_ENV)
    if not warm:
        os.environ[CACHE_DIR_ENV] = tempfile.mkdtemp(prefix="sidrec-bench-cache-")
    try:
        name = f"{dataset}-{config.codes.quantizer}" + (f"-{tag}" if tag else "")
        t0 = time.perf_counter()
        data = load_data(DataConfig(data_dir=data_dir, dataset=dataset))
        ids = build_ids(data, config, Path(runs) / name / "ids")
        wall = time.perf_counter() - t0
    finally:
        if before is None:
            os.environ.pop(CACHE_DIR_ENV, None)
        else:
            os.environ[CACHE_DIR_ENV] = before
    stats = ids.stats()
    report = {
        "benchmark": "semantic_ids",
        "dataset": data.name,
        "data_fingerprint": data.fingerprint,
        "command": command,
        "machine": machine_info(),
        "config": jsonable(config),
        "wall_seconds": round(wall, 1),
        "cache": "warm" if warm else "cold",
        "stats": stats,
        "sample_groups": sample_groups(ids, ids.sid_length - 2),
    }
    out = Path(results) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(
        f"wrote {out}: collision_rate {stats['collision_rate']:.3f}, max group "
        f"{stats['max_collision_group']}, utilization {stats['codebook_utilization']}, "
        f"perplexity {[round(p, 1) for p in stats['perplexity']]}, {wall:.0f}s"
    )
    return report
