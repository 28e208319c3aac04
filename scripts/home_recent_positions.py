"""Experiment: a home soft prompt trained on each member's freshest positions instead of every one.

Every training position of the home canvas is one pretraining already fit, so a soft prompt trained
on them has nothing new to learn. This trains it on the last N positions of each member's training
events plus their validation target (a position pretraining never trained on, and the closest in
time to the test target), then judges it on the test targets beside the frozen base, alone and
fused as served (``eval.bench_canvases``). Measured on ml-latest-small it does not beat the frozen
base either (BENCHMARKS.md, "Home as served"), which is why home is served by the frozen model.

    SIDREC_DATA_DIR=../shared/data .venv/bin/python scripts/home_recent_positions.py \
        --model runs/quickstart/run-*/model --positions 3 --out results/prompt_tuning/...json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from itertools import groupby
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from eval.bench_canvases import bench_canvases  # noqa: E402
from prompt_tuning.canvases import register  # noqa: E402
from prompt_tuning.canvases import home  # noqa: E402
from prompt_tuning.canvases.base import Examples, held_out_examples, next_title_examples  # noqa: E402


def recent_examples(positions: int):
    """The home canvas's examples builder, restricted to the freshest positions (see above)."""

    def build(src) -> Examples:
        split, rows = src.split, src.sid_rows
        every = next_title_examples(split, rows, split.max_history)  # each member's, oldest first
        train = [ex for _, mine in groupby(every, key=lambda ex: ex.user)
                 for ex in list(mine)[-positions:] if positions]
        train += held_out_examples(split, rows, "valid")
        return Examples(train, held_out_examples(split, rows), {"recent_positions": positions})

    return build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--positions", type=int, default=3, help="newest training positions per member")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.positions < 0:
        p.error("--positions must be >= 0")
    torch.set_num_threads(1)
    register(dataclasses.replace(home.SPEC, build_examples=recent_examples(args.positions)), replace=True)
    bench_canvases(model=args.model, out=args.out, canvases=["home"], full_finetune=False,
                   overrides={"epochs": args.epochs, "method": "soft_prompt"},
                   command=" ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
