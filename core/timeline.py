"""The data as it stood at a point in time: what a model trained then could have known.

Used to judge new titles honestly (``sidrec refresh --simulate``; rolling cutoffs in
``eval.new_titles``): the titles first engaged after the cutoff, and every interaction after it,
are held out of the old world.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from core.data import DataReport, RecData


@dataclass
class OldWorld:
    """The data as it stood just before the cutoff, and what was held out of it."""

    data: RecData  # catalog without the new titles, interactions strictly before the cutoff
    cutoff: int  # first interaction time (unix seconds) of the newest titles
    new_titles: list[str]  # every title first engaged at or after the cutoff
    held_out_interactions: int  # interactions at or after the cutoff (any title)

    def to_json(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff,
            "cutoff_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.cutoff)),
            "new_titles": len(self.new_titles),
            "held_out_interactions": self.held_out_interactions,
            "old_world_interactions": len(self.data.interactions),
            "old_world_titles": len(self.data.catalog),
            "old_world_fingerprint": self.data.fingerprint,
        }


def old_world(data: RecData, new_title_share: float) -> OldWorld:
    """Hold out the newest `new_title_share` of the titles that have interactions, by first interaction.

    The cutoff is the first interaction time of the newest ceil(share * titles) titles; every title
    first engaged at or after it is new (ties at the cutoff included: an interaction at the cutoff is
    held out, so such a title has no old-world history either). Titles nobody engaged with stay in
    the old catalog. Clockless data is refused: positions within each member's sequence are not a
    global time order, and item ids are not release dates, so "newest" has no honest meaning there.
    """
    if not 0.0 < new_title_share < 1.0:
        raise ValueError(f"new_title_share must be in (0, 1), got {new_title_share}")
    if not data.has_time:
        raise ValueError(
            f"{data.name} has no clock (its timestamps are positions in each member's "
            f"sequence), so neither 'the newest titles' nor 'interactions after a point "
            f"in time' is defined: the refresh simulation needs timestamped data "
            f"(e.g. ml-latest-small). A model can still be refreshed with real newer "
            f"data: sidrec refresh --model DIR"
        )
    table = data.interactions.with_format("arrow")[:]  # pyarrow.Table, rows in dataset order
    first = table.group_by("item_id", use_threads=False).aggregate([("timestamp", "min")])
    times = np.asarray(first["timestamp_min"].to_numpy(), dtype=np.int64)  # (titles engaged,)
    n_new = math.ceil(new_title_share * len(times))
    if n_new >= len(times):
        raise ValueError(f"new_title_share {new_title_share} would hold out all {len(times)} titles")
    cutoff = int(np.sort(times)[len(times) - n_new])
    new = set(np.asarray(first["item_id"].to_pylist(), dtype=object)[times >= cutoff].tolist())
    keep_int = np.flatnonzero(pc.less(table["timestamp"], cutoff).to_numpy(zero_copy_only=False))
    keep_cat = [i for i, iid in enumerate(data.catalog["item_id"]) if iid not in new]
    report = DataReport(rows_read=dict(data.report.rows_read), dropped=data.report.dropped.copy())
    report.drop("old world: interactions at or after the cutoff", len(table) - len(keep_int))
    report.drop("old world: titles first engaged at or after the cutoff", len(new))
    hashes = {
        **data.source_hashes,
        "_old_world": json.dumps({"cutoff": cutoff, "new_title_share": new_title_share}),
    }
    view = dataclasses.replace(
        data,
        catalog=data.catalog.select(keep_cat),
        interactions=data.interactions.select(keep_int),
        report=report,
        source_hashes=hashes,
    )
    order = [iid for iid in data.catalog["item_id"] if iid in new]  # catalog order: deterministic
    return OldWorld(view, cutoff, order, len(table) - len(keep_int))


@dataclass(frozen=True)
class CutoffPool:
    """At one cutoff: the members a rolling new-title evaluation can judge there."""

    cutoff: int  # unix seconds; the old world is every interaction strictly before it
    members_with_history: int  # members with an interaction before the cutoff
    active_after: int  # of those, members with an interaction at or after it
    next_is_new: list[str]  # of those, members whose first interaction from the cutoff on is a
    #                        title first engaged at or after the cutoff (a new title)


def rolling_pool(data: RecData, quantiles: "np.ndarray | list[float]") -> list[CutoffPool]:
    """Replay cutoffs at these quantiles of the interaction times: who could be judged on a new
    title at each (the member's next title after the cutoff, with history before it).

    Only interactions strictly before a cutoff count as history, and a title is new at a cutoff
    when nobody engaged with it before; so the pool never uses what a model trained at the cutoff
    could not have known. Ties at the same second are ordered by the dataset's row order.
    """
    if not data.has_time:
        raise ValueError(f"{data.name} has no clock: rolling cutoffs need timestamped data")
    q = np.asarray(quantiles, dtype=float)
    if q.size == 0 or np.any((q <= 0.0) | (q >= 1.0)):
        raise ValueError(f"cutoff quantiles must lie in (0, 1), got {q.tolist()}")
    table = data.interactions.with_format("arrow")[:]
    users = np.asarray(table["user_id"].to_pylist(), dtype=object)
    items = np.asarray(table["item_id"].to_pylist(), dtype=object)
    times = np.asarray(table["timestamp"].to_numpy(), dtype=np.int64)
    order = np.argsort(times, kind="stable")  # (N,) time order, row order within a second
    users, items, times = users[order], items[order], times[order]
    first_seen: dict[Any, int] = {}
    for i, t in zip(items, times):
        first_seen.setdefault(i, int(t))
    out = []
    for cutoff in np.quantile(times, q).astype(np.int64).tolist():
        start = int(np.searchsorted(times, cutoff, side="left"))  # first event at or after cutoff
        with_history = set(users[:start].tolist())
        nxt: dict[Any, Any] = {}
        for u, i in zip(users[start:], items[start:]):
            if u in with_history and u not in nxt:
                nxt[u] = i
        new = sorted(str(u) for u, i in nxt.items() if first_seen[i] >= cutoff)
        out.append(CutoffPool(int(cutoff), len(with_history), len(nxt), new))
    return out
