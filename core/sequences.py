"""Member sequences: roll up repeated engagement, then split leave-one-out.

Roll-up: engagements of one member with one title are chained into one event while the gap between
consecutive engagements is at most the window (rating a film and tagging it a minute later is one
event; watching it again a year later is another). A rolled-up event keeps its count, its first and
last time and its strongest rating, and sits in the sequence at its first time.

Split (the benchmark protocol of SASRec, S3-Rec, P5 and TIGER): per member, the last event is the test
target, the one before it the validation target, the rest is training data. Histories given to a
model are capped at the most recent ``max_history`` events. Members with fewer than three events
cannot be evaluated: they keep all events for training and are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data import RecData


@dataclass(frozen=True)
class SequenceConfig:
    """How interactions become sequences and how they are split."""

    # Gap (seconds) under which repeated engagement with a title is one event, for timestamped data.
    rollup_window_seconds: float = 86_400.0
    # The same for data without a clock, in sequence positions (1 = only back-to-back repeats).
    rollup_window_steps: int = 1
    # Most recent events given to a model as history.
    max_history: int = 20

    def __post_init__(self) -> None:
        if self.rollup_window_seconds < 0 or self.rollup_window_steps < 0:
            raise ValueError("roll-up windows must be >= 0")
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}")


@dataclass
class Sequences:
    """Rolled-up events of every member, flat arrays with per-member offsets (CSR layout)."""

    user_ids: list[str]
    offsets: np.ndarray  # (U+1,) int64: events of member u are [offsets[u], offsets[u+1])
    item_index: np.ndarray  # (E,) int32: row of the title in the catalog
    first_time: np.ndarray  # (E,) int64
    last_time: np.ndarray  # (E,) int64
    count: np.ndarray  # (E,) int32: engagements rolled into this event
    rating: np.ndarray  # (E,) float32: strongest rating, NaN if none
    rolled_up: int  # engagements merged away by the roll-up

    def __len__(self) -> int:
        return len(self.user_ids)

    def items(self, u: int) -> np.ndarray:
        return self.item_index[self.offsets[u] : self.offsets[u + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def build_sequences(data: RecData, config: SequenceConfig | None = None) -> Sequences:
    config = config or SequenceConfig()
    inter = data.interactions.with_format("numpy", columns=["user_id", "item_id", "timestamp", "rating"])
    cols = inter[:]
    item_pos = {iid: i for i, iid in enumerate(data.catalog["item_id"])}
    users, user_code = np.unique(np.asarray(cols["user_id"], dtype=object), return_inverse=True)
    item = np.fromiter((item_pos[i] for i in cols["item_id"]), dtype=np.int64, count=len(user_code))
    ts = np.asarray(cols["timestamp"], dtype=np.int64)
    rating = np.asarray(cols["rating"], dtype=np.float32)
    window = config.rollup_window_seconds if data.has_time else config.rollup_window_steps

    # Chain engagements of the same (member, title) whose gap is within the window.
    order = np.lexsort((ts, item, user_code))
    u, it, t, r = user_code[order], item[order], ts[order], rating[order]
    new = np.ones(len(u), dtype=bool)
    new[1:] = (u[1:] != u[:-1]) | (it[1:] != it[:-1]) | ((t[1:] - t[:-1]) > window)
    starts = np.flatnonzero(new)
    g_user, g_item, g_first = u[starts], it[starts], t[starts]
    g_last = np.maximum.reduceat(t, starts)
    g_count = np.diff(np.append(starts, len(u))).astype(np.int32)
    r_filled = np.where(np.isnan(r), -np.inf, r)
    g_rating = np.maximum.reduceat(r_filled, starts).astype(np.float32)
    g_rating[np.isneginf(g_rating)] = np.nan

    # Member-major, time order. Events in the same second (MovieLens rates in batches, so a
    # member's last events can tie) are ordered by catalog row: deterministic, not causal.
    order = np.lexsort((g_item, g_first, g_user))
    g_user, g_item, g_first = g_user[order], g_item[order], g_first[order]
    g_last, g_count, g_rating = g_last[order], g_count[order], g_rating[order]
    counts = np.bincount(g_user, minlength=len(users))  # every member has >= 1 row by construction
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Sequences(
        user_ids=[str(x) for x in users],
        offsets=offsets,
        item_index=g_item.astype(np.int32),
        first_time=g_first,
        last_time=g_last,
        count=g_count,
        rating=g_rating,
        rolled_up=int(len(u) - len(starts)),
    )


@dataclass
class EvalExamples:
    """Histories (capped, oldest first) and the one target title per member."""

    users: np.ndarray  # (N,) member row in Sequences
    histories: list[np.ndarray]
    targets: np.ndarray  # (N,) catalog rows


@dataclass
class Split:
    """Leave-one-out split of rolled-up sequences."""

    sequences: Sequences
    max_history: int
    evaluable: np.ndarray  # (U,) bool: member has >= 3 events

    @property
    def num_train_only(self) -> int:
        return int((~self.evaluable).sum())

    def train_items(self, u: int) -> np.ndarray:
        """All training events of member u (everything but the last two when evaluable)."""
        items = self.sequences.items(u)
        return items[:-2] if self.evaluable[u] else items

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(member row, catalog row) of every training event: the only input allowed to see data."""
        users, items = [], []
        for u in range(len(self.sequences)):
            tr = self.train_items(u)
            users.append(np.full(len(tr), u, dtype=np.int64))
            items.append(tr)
        return np.concatenate(users), np.concatenate(items).astype(np.int64)

    def examples(self, split: str) -> EvalExamples:
        """The held-out transitions of `split`: "test" (last event), "valid" (the one before), or
        "train" (the newest training event, a transition the model was trained on: recall there
        against test tells capacity from generalisation; members with 4 or more events)."""
        if split not in ("valid", "test", "train"):
            raise ValueError(f"split must be 'valid', 'test' or 'train', got {split!r}")
        back = {"test": 1, "valid": 2, "train": 3}[split]
        users = np.flatnonzero(self.evaluable & (self.sequences.lengths > back))
        hist, tgt = [], []
        for u in users:
            items = self.sequences.items(u)
            hist.append(items[: len(items) - back][-self.max_history :])
            tgt.append(items[len(items) - back])
        return EvalExamples(users=users, histories=hist, targets=np.asarray(tgt, dtype=np.int64))


def leave_one_out(sequences: Sequences, config: SequenceConfig | None = None) -> Split:
    config = config or SequenceConfig()
    return Split(sequences=sequences, max_history=config.max_history, evaluable=sequences.lengths >= 3)
