"""Which validated epoch's weights a run keeps: a pure function of the validation history.

A validation Recall@K on n members has a standard error of sqrt(r (1 - r) / n). Two epochs whose
recalls differ by less than that are not told apart by the sample, so ``within-se`` keeps the latest
epoch within one standard error of the best: the weights trained longest on the decayed learning
rate, unless an earlier epoch is better beyond the noise. The choice can only move to the epoch
just validated or stay where it was, so training saves the chosen weights as it goes and the result
is the same as choosing from the finished history (``choose`` is called after every validation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    index: int  # position in the validated epochs
    reason: str  # one sentence for the manifest and the person reading the run's output


def standard_error(recall: float, n: int) -> float:
    """Binomial standard error of a recall measured on n members."""
    return math.sqrt(max(recall * (1.0 - recall), 0.0) / max(n, 1))


def choose(recalls: Sequence[float], ndcgs: Sequence[float], n: int, rule: str) -> Choice:
    """The chosen position among validations (recall, ndcg in validation order, n members each)."""
    if not recalls or len(recalls) != len(ndcgs):
        raise ValueError("choose needs one recall and one ndcg per validation, at least one")
    best = max(range(len(recalls)), key=lambda i: (recalls[i], ndcgs[i], -i))  # earliest of ties
    if rule == "best":
        return Choice(best, f"highest validation recall ({recalls[best]:.4f})")
    if rule == "last":
        return Choice(len(recalls) - 1, "the last validated epoch (selection=last)")
    if rule != "within-se":
        raise ValueError(f"unknown selection rule {rule!r}")
    se = standard_error(recalls[best], n)
    latest = max(i for i in range(len(recalls)) if recalls[i] >= recalls[best] - se)
    if latest == best:
        return Choice(
            best,
            f"highest validation recall ({recalls[best]:.4f}, one standard error {se:.4f} on {n:,} members)",
        )
    return Choice(
        latest,
        f"latest epoch within one standard error ({se:.4f}, {n:,} members) of "
        f"the best validation recall {recalls[best]:.4f}: {recalls[latest]:.4f}",
    )
