"""New-title baselines on hand-made data: popularity among new titles, content nearest the history."""

from __future__ import annotations

import numpy as np

from eval.new_titles import content_nearest_new, popular_new


def test_popular_new_ranks_new_titles_by_training_events_and_skips_the_history():
    train_rows = np.array([0, 1, 5, 5, 5, 7, 7, 6, 2, 2, 2, 2])  # 2 is old: never a candidate
    new = np.array([5, 6, 7, 8])
    got = popular_new(train_rows, new, [np.array([0, 1]), np.array([5]), np.array([], np.int64)], 3)
    assert got == [[5, 7, 6], [7, 6, 8], [5, 7, 6]]  # 8 has no events: last; ties by row


def test_content_nearest_new_follows_the_mean_of_the_history():
    vec = np.zeros((6, 2), np.float32)
    vec[0], vec[1] = [1, 0], [0, 1]  # old titles of the history
    vec[3], vec[4], vec[5] = [1, 0], [0.6, 0.8], [0, 1]  # new titles
    new = np.array([3, 4, 5])
    assert content_nearest_new(vec, new, [np.array([0])], 2) == [[3, 4]]
    assert content_nearest_new(vec, new, [np.array([1])], 2) == [[5, 4]]
    assert content_nearest_new(vec, new, [np.array([0, 1])], 1) == [[4]]  # between both
    assert content_nearest_new(vec, new, [np.array([], np.int64)], 2) == [[]]
