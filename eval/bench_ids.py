"""Benchmark semantic-ID building: quality figures of the codes and wall time on this machine.

    python -m eval.bench_ids --dataset amazon-beauty --quantizer rqvae [--set key=value ...]

Writes results/semantic_ids/<dataset>-<quantizer>[-<tag>].json with the artifact's stats, the
config, the data fingerprint, the command line and the machine; BENCHMARKS.md quotes these files.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from eval.machine import machine_info
from semantic_ids.builder import build_ids
from semantic_ids.config import SemanticIDConfig
from sidrec.artifacts import jsonable, write_json
from sidrec.overrides import config_from_args
from sidrec.data import DataConfig, load_data


def sample_groups(ids, depth: int, n: int = 5) -> list[dict]:
    """A few groups of titles sharing their first `depth` codes, for a person to judge."""
    groups = sorted((p, m) for p, m in ids.prefix_groups(depth).items() if len(m) >= 3)
    step = max(len(groups) // n, 1)
    return [{"prefix": list(p), "size": len(m), "titles": [ids.title(i) for i in m[:6]]}
            for p, m in groups[::step][:n]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="data directory (default: $SIDREC_DATA_DIR)")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--quantizer", choices=["rqvae", "rqkmeans"], default="rqvae")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE")
    ap.add_argument("--tag", help="suffix of the results file for a variant (e.g. a modality mix)")
    ap.add_argument("--runs", default="runs/bench", help="where the ID artifacts are written")
    ap.add_argument("--results", default="results/semantic_ids")
    ap.add_argument("--warm", action="store_true",
                    help="reuse the on-disk caches (default: a cold, empty cache, so the sentence "
                         "encoder's time is measured)")
    args = ap.parse_args(argv)
    if not args.warm:
        os.environ["SIDREC_CACHE_DIR"] = tempfile.mkdtemp(prefix="sidrec-bench-cache-")

    config = config_from_args(SemanticIDConfig, None, args.set, quantizer=args.quantizer)
    name = f"{args.dataset}-{args.quantizer}" + (f"-{args.tag}" if args.tag else "")
    t0 = time.perf_counter()
    data = load_data(DataConfig(data_dir=args.data, dataset=args.dataset))
    ids = build_ids(data, config, Path(args.runs) / name / "ids")
    wall = time.perf_counter() - t0
    stats = ids.stats()
    report = {
        "benchmark": "semantic_ids", "dataset": data.name, "data_fingerprint": data.fingerprint,
        "command": " ".join(["python -m eval.bench_ids", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(), "config": jsonable(config), "wall_seconds": round(wall, 1),
        "cache": "warm" if args.warm else "cold",
        "stats": stats, "sample_groups": sample_groups(ids, ids.sid_length - 2),
    }
    out = Path(args.results) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"wrote {out}: collision_rate {stats['collision_rate']:.3f}, max group "
          f"{stats['max_collision_group']}, utilization {stats['codebook_utilization']}, "
          f"perplexity {[round(p, 1) for p in stats['perplexity']]}, {wall:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
