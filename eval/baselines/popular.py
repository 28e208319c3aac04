"""Most-popular baseline: every member gets the titles with the most training events.

What counts as training data depends on the split judged, so that no target leaks:
- valid: each member's training prefix (``split.train_items``: all events but the last two of an
  evaluable member, every event of a member too short to evaluate).
- test: the same plus every validation target. The test protocol shows a model everything before
  the test event (the test history itself contains the validation target), so the counts may too.
Members' own history titles are not removed from the ranking (the benchmark protocol ranks the full
catalog), and equal counts are ordered by catalog row, so the ranking is deterministic.
"""

from __future__ import annotations

import numpy as np

from core.metrics import RankingMetrics, ranking_metrics, topk_rows
from core.sequences import Split


def popularity_counts(split: Split, num_items: int, judged: str) -> np.ndarray:
    """Events per catalog row that a model judged on `judged` ("valid" | "test") may see. (N,) int64."""
    if judged not in ("valid", "test"):
        raise ValueError(f"judged must be 'valid' or 'test', got {judged!r}")
    _, items = split.train_pairs()
    if judged == "test":
        items = np.concatenate([items, split.examples("valid").targets])
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"catalog rows outside [0, {num_items}) in the split")
    return np.bincount(items, minlength=num_items).astype(np.int64)


def popular_ranking(counts: np.ndarray, k: int) -> np.ndarray:
    """The k most counted catalog rows, most counted first, ties to the lower row. (k,) int64."""
    return topk_rows(counts[None, :].astype(np.float64), k)[0]


def evaluate_popular(
    split: Split, num_items: int, judged: str, ks: tuple[int, ...] = (5, 10)
) -> RankingMetrics:
    """Recall / NDCG of the most-popular list, the same list for every member."""
    examples = split.examples(judged)
    top = popular_ranking(popularity_counts(split, num_items, judged), max(ks))
    ranked = np.broadcast_to(top, (len(examples.targets), len(top)))  # (U, K), shared rows
    return ranking_metrics(ranked, examples.targets, ks)
