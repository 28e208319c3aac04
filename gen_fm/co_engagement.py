"""Which titles members engage with together: the co-engagement table a model folder carries.

For every title (ID-artifact row) its ``top`` most co-engaged titles: how often another title sits
within ``window`` events of it in members' *training* histories (the leave-one-out split's training
part: a member's validation and test titles never count). The title-to-title canvas serves inside a
source title's neighbourhood made of these titles, filled with its nearest titles by content
(``prompt_tuning.candidates.CandidateIndex.for_source``). The home row fuses the model's ranking
with the titles co-engaged with the member's newest titles (``of_recent``).

The table is written by pretraining into the model folder (``co_engagement/table.safetensors``, hashed in
its manifest) because it is a fact of the data the model was trained on, and serving has no data.
Counting is a few lines of numpy; no library computes windowed co-occurrence over ragged sequences
any better, and the table is small (titles x top).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gen_fm.dataset import to_sid_rows

# In a sub-folder: vLLM loads every *.safetensors file at the model folder's top level as weights.
CO_ENGAGEMENT_FILE = "co_engagement/table.safetensors"
# How many of a member's newest titles ``CoEngagement.of_recent`` sums, and how much less each older
# one weighs: chosen on the validation split of both datasets.
RECENT_TITLES = 5
RECENT_DECAY = 0.5


@dataclass(frozen=True)
class CoEngagement:
    """Per title, its most co-engaged titles, most first (``neighbours`` -1 where there are fewer)."""

    neighbours: np.ndarray  # (N, top) int64 ID rows
    counts: np.ndarray  # (N, top) int64 co-engagements, 0 with the -1 pads
    window: int  # events either side that count as "together"

    def __post_init__(self) -> None:
        if self.neighbours.ndim != 2 or self.neighbours.shape != self.counts.shape:
            raise ValueError(
                f"neighbours {self.neighbours.shape} and counts {self.counts.shape} must "
                f"be the same (titles, top) shape"
            )

    @property
    def num_items(self) -> int:
        return int(self.neighbours.shape[0])

    def padded(self, num_items: int) -> "CoEngagement":
        """The table over `num_items` titles: titles added after it was counted have no neighbours."""
        extra = num_items - self.num_items
        if extra < 0:
            raise ValueError(f"cannot shrink a table of {self.num_items} titles to {num_items}")
        pad = np.full((extra, self.neighbours.shape[1]), -1, dtype=self.neighbours.dtype)
        return CoEngagement(
            np.concatenate([self.neighbours, pad]),
            np.concatenate([self.counts, np.zeros_like(pad, dtype=self.counts.dtype)]),
            self.window,
        )

    def of(self, row: int, n: int | None = None) -> np.ndarray:
        """The (at most `n`) titles most co-engaged with title `row`, most first."""
        if not 0 <= row < self.num_items:
            raise ValueError(f"title row {row} is not in the co-engagement table ({self.num_items} titles)")
        near = self.neighbours[row]
        near = near[near >= 0]
        return near if n is None else near[:n]

    def of_recent(
        self, history, titles: int = RECENT_TITLES, decay: float = RECENT_DECAY, exclude_history: bool = True
    ) -> list[int]:
        """The titles most co-engaged with the member's `titles` newest history titles (ID rows,
        oldest first): each newest title's counts weigh ``decay ** age`` (age 0 = the newest) and are
        summed per title; ties go to the table's own order (the newest title's first). With
        `exclude_history` a title of the history is never returned (targets are never re-watched
        titles on either dataset, and serving excludes the history by default). What a
        ``fuse_co_engaged`` canvas (home) fuses the model's ranking with; [] for an empty history.

        Summing over several recent titles is item-based session kNN; on both datasets it ranks the
        next title better than the newest title's list alone."""
        if titles < 1 or not 0.0 < decay <= 1.0:
            raise ValueError(f"titles must be >= 1 and decay in (0, 1], got {titles}, {decay}")
        rows = [int(r) for r in history if int(r) >= 0]
        if not rows:
            return []
        recent = rows[::-1][:titles]  # newest first
        bad = [r for r in recent if r >= self.num_items]
        if bad:
            raise ValueError(
                f"title row {bad[0]} is not in the co-engagement table ({self.num_items} titles)"
            )
        near = self.neighbours[recent]  # (m, top)
        weight = self.counts[recent] * (decay ** np.arange(len(recent)))[:, None]
        keep = near >= 0
        if exclude_history:
            keep &= ~np.isin(near, rows)
        near, weight = near[keep], weight[keep]  # flattened newest title first, each most first
        if not near.size:
            return []
        uniq, first, inverse = np.unique(near, return_index=True, return_inverse=True)
        total = np.bincount(inverse, weights=weight)
        order = np.lexsort((first, -total))  # most weight first, then the table's own order
        return uniq[order].tolist()


def build_co_engagement(
    sequences: list[np.ndarray], num_items: int, window: int = 3, top: int = 50
) -> CoEngagement:
    """The table from members' training sequences of ID rows (oldest first; -1 = a title without
    an ID, skipped). Equal counts are frequent (most pairs are seen once or twice), so ties go to
    the more watched title, then the lower row: deterministic, and a likelier next title first."""
    if window < 1 or top < 1:
        raise ValueError(f"window and top must be >= 1, got {window}, {top}")
    pairs_a, pairs_b = [], []
    for seq in sequences:
        s = np.asarray(seq, dtype=np.int64)
        s = s[s >= 0]
        for d in range(1, window + 1):  # every ordered pair of titles at most `window` apart
            if len(s) > d:
                pairs_a += [s[:-d], s[d:]]
                pairs_b += [s[d:], s[:-d]]
    neighbours = np.full((num_items, top), -1, dtype=np.int64)
    counts = np.zeros((num_items, top), dtype=np.int64)
    if not pairs_a:
        return CoEngagement(neighbours, counts, window)
    a, b = np.concatenate(pairs_a), np.concatenate(pairs_b)  # (P,)
    keep = a != b
    a, b = a[keep], b[keep]
    if a.size and max(a.max(), b.max()) >= num_items:
        raise ValueError(f"a sequence holds row {max(a.max(), b.max())}, beyond the {num_items} titles")
    key, n = np.unique(a * num_items + b, return_counts=True)  # (U,) pair keys, sorted
    src, dst = key // num_items, key % num_items
    flat = np.concatenate([np.asarray(q, dtype=np.int64) for q in sequences])
    watched = np.bincount(flat[flat >= 0], minlength=num_items)  # (N,) training events per title
    # per source: most co-engaged first, then the more watched, then the lower row
    order = np.lexsort((dst, -watched[dst], -n, src))
    src, dst, n = src[order], dst[order], n[order]
    starts = np.searchsorted(src, np.arange(num_items))
    ends = np.searchsorted(src, np.arange(num_items), side="right")
    for row in np.flatnonzero(ends > starts):
        m = min(top, ends[row] - starts[row])
        neighbours[row, :m] = dst[starts[row] : starts[row] + m]
        counts[row, :m] = n[starts[row] : starts[row] + m]
    return CoEngagement(neighbours, counts, window)


def co_engagement_of_split(
    split, sid_rows: np.ndarray, num_items: int, window: int = 3, top: int = 50
) -> CoEngagement:
    """``build_co_engagement`` over a leave-one-out split's training events (``core.sequences``)."""
    seqs = [to_sid_rows(split.train_items(u), sid_rows) for u in range(len(split.sequences))]
    return build_co_engagement(seqs, num_items, window, top)


def save_co_engagement(path: str | Path, table: CoEngagement) -> None:
    from safetensors.numpy import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"neighbours": table.neighbours, "counts": table.counts},
        str(path),
        metadata={"window": str(table.window)},
    )


def load_co_engagement(path: str | Path) -> CoEngagement:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
        if "window" not in meta:
            raise ValueError(f"{path} is not a co-engagement table (no 'window' in its metadata)")
        return CoEngagement(f.get_tensor("neighbours"), f.get_tensor("counts"), int(meta["window"]))


__all__ = [
    "CO_ENGAGEMENT_FILE",
    "RECENT_DECAY",
    "RECENT_TITLES",
    "CoEngagement",
    "build_co_engagement",
    "co_engagement_of_split",
    "load_co_engagement",
    "save_co_engagement",
]
