"""Which validated epoch is kept: best, last, or the latest within one standard error of the best."""

from __future__ import annotations

import itertools

import pytest

from gen_fm.selection import choose, standard_error


def test_rules_on_a_hand_made_history():
    recalls, ndcgs = [0.040, 0.060, 0.058, 0.050], [0.02, 0.03, 0.03, 0.02]
    se = standard_error(0.060, 1000)
    assert abs(se - (0.06 * 0.94 / 1000) ** 0.5) < 1e-12
    assert choose(recalls, ndcgs, 1000, "best").index == 1
    assert choose(recalls, ndcgs, 1000, "last").index == 3
    within = choose(recalls, ndcgs, 1000, "within-se")
    assert within.index == 2 and "standard error" in within.reason  # 0.058 is within 0.0075
    assert choose(recalls, ndcgs, 100_000, "within-se").index == 1  # a tight sample: the best
    assert choose([0.05, 0.05], [0.02, 0.03], 10, "best").index == 1  # NDCG breaks ties
    with pytest.raises(ValueError):
        choose([], [], 10, "best")
    with pytest.raises(ValueError, match="rule"):
        choose([0.1], [0.1], 10, "median")


def test_the_choice_made_online_equals_the_choice_from_the_whole_history():
    """Training saves weights when the choice moves to the epoch just validated: valid only if the
    choice never moves back to an earlier epoch."""
    values = [0.03, 0.05, 0.049, 0.06, 0.055, 0.061, 0.02]
    for history in itertools.permutations(values, 5):
        for rule in ("within-se", "best", "last"):
            chosen = None
            for t in range(1, len(history) + 1):
                c = choose(history[:t], [0.0] * t, 400, rule).index
                assert c in (chosen, t - 1)
                chosen = c
            assert chosen == choose(history, [0.0] * len(history), 400, rule).index
