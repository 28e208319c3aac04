"""The data as it stood at a cutoff: the newest titles and everything after it held out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.timeline import old_world, rolling_pool


def test_old_world_holds_out_the_newest_titles_and_everything_after(ml_small):
    world = old_world(ml_small, 0.2)
    inter = ml_small.interactions.with_format("numpy", columns=["item_id", "timestamp"])[:]
    first: dict[str, int] = {}
    for iid, t in zip(inter["item_id"].tolist(), inter["timestamp"].tolist()):
        first[iid] = min(t, first.get(iid, t))
    new = set(world.new_titles)
    assert len(new) >= math.ceil(0.2 * len(first))
    assert all(first[i] >= world.cutoff for i in new)
    assert all(t < world.cutoff for i, t in first.items() if i not in new)
    assert not new & set(world.data.catalog["item_id"])
    assert len(world.data.catalog) == len(ml_small.catalog) - len(new)
    old_t = np.asarray(world.data.interactions["timestamp"])
    assert old_t.max() < world.cutoff
    assert world.held_out_interactions == int((inter["timestamp"] >= world.cutoff).sum())
    assert len(old_t) + world.held_out_interactions == len(ml_small.interactions)
    assert not new & set(world.data.interactions["item_id"])
    # a proper RecData that says what it is: its own, reproducible fingerprint
    assert world.data.fingerprint != ml_small.fingerprint
    assert world.data.fingerprint == old_world(ml_small, 0.2).data.fingerprint
    assert world.data.fingerprint != old_world(ml_small, 0.1).data.fingerprint
    assert (
        world.data.report.dropped["old world: interactions at or after the cutoff"]
        == world.held_out_interactions
    )


def test_bad_input_is_refused(ml_small, beauty_small):
    for share in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="new_title_share"):
            old_world(ml_small, share)
    with pytest.raises(ValueError, match="no clock"):  # positions are not a global time order
        old_world(beauty_small, 0.05)


def test_rolling_pool_counts_only_what_was_known_at_each_cutoff(ml_small):
    """Checked against a direct reading of the events: history is strictly before the cutoff, the
    next title is the member's first event from the cutoff on, and it is new when nobody engaged
    with it before the cutoff."""
    inter = ml_small.interactions.with_format("numpy", columns=["user_id", "item_id", "timestamp"])[:]
    events = sorted(
        zip(
            inter["timestamp"].tolist(),
            range(len(inter["timestamp"])),
            inter["user_id"].tolist(),
            inter["item_id"].tolist(),
        )
    )
    quantiles = [0.3, 0.6, 0.9]
    pools = rolling_pool(ml_small, quantiles)
    assert [p.cutoff for p in pools] == np.quantile(inter["timestamp"], quantiles).astype(np.int64).tolist()
    for pool in pools:
        c = pool.cutoff
        before = [(u, i) for t, _, u, i in events if t < c]
        seen_items, with_history = {i for _, i in before}, {u for u, _ in before}
        nxt: dict = {}
        for t, _, u, i in events:
            if t >= c and u in with_history:
                nxt.setdefault(u, i)
        assert pool.members_with_history == len(with_history)
        assert pool.active_after == len(nxt)
        assert pool.next_is_new == sorted(str(u) for u, i in nxt.items() if i not in seen_items)
    assert any(p.next_is_new for p in pools)  # the slice has something to count
    with pytest.raises(ValueError, match="quantiles"):
        rolling_pool(ml_small, [0.0, 0.5])


def test_rolling_pool_refuses_clockless_data(beauty_small):
    with pytest.raises(ValueError, match="no clock"):
        rolling_pool(beauty_small, [0.5])
