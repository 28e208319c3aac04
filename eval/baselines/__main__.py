"""python -m eval.baselines --kind sasrec --dataset amazon-beauty --out results/baselines/x.json"""

from __future__ import annotations

import argparse
import sys

import torch

from eval.baselines.run import BASELINES, run_baseline
from eval.config import EvalConfig
from sidrec.overrides import parse_overrides
from sidrec.data import DataConfig
from sidrec.sequences import SequenceConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.baselines", description=__doc__)
    p.add_argument("--kind", required=True, choices=BASELINES)
    p.add_argument("--data", help="data directory (default: $SIDREC_DATA_DIR)")
    p.add_argument("--dataset", help="sub-folder of --data, e.g. amazon-beauty or ml-latest-small")
    p.add_argument("--max-users", type=int, help="read only the first N members (quick runs)")
    p.add_argument("--max-history", type=int, default=20, help="history cap (benchmark: 20)")
    p.add_argument("--out", required=True, help="JSON report to write")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="SASRec hyperparameter override (JSON value), repeatable; e.g. --set dropout=0.2")
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    p.add_argument("--batch-size", type=int, default=256, help="members per scoring batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (results can differ by thread count)")
    args = p.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        report = run_baseline(
            args.kind,
            DataConfig(data_dir=args.data, dataset=args.dataset, max_users=args.max_users),
            SequenceConfig(max_history=args.max_history),
            args.out,
            EvalConfig(ks=tuple(args.ks), batch_size=args.batch_size, device=args.device),
            **parse_overrides(None, args.set))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    for split, m in report["metrics"].items():
        print(f"{split}: " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    print(f"params {report['params']:,}  train {report['train_seconds']:.1f}s  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
