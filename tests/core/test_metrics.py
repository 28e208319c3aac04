"""Ranking metrics and deterministic top-k on hand-made cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eval.config import EvalConfig
from core.metrics import (
    RankingMetrics,
    metrics_from_ranks,
    ranking_metrics,
    target_ranks,
    topk_rows,
    validate_ks,
)


def test_known_answers_rows():
    ranked = [[3, 1, 2], [7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [5]]
    targets = [1, 12, 42, 5]  # ranks 1, 5, miss, 0
    m = ranking_metrics(ranked, targets, ks=(5, 10))
    assert isinstance(m, RankingMetrics) and m.num_users == 4
    assert m.recall[5] == pytest.approx(2 / 4)
    assert m.recall[10] == pytest.approx(3 / 4)
    assert m.ndcg[5] == pytest.approx((1 / math.log2(3) + 1.0) / 4)
    assert m.ndcg[10] == pytest.approx((1 / math.log2(3) + 1 / math.log2(7) + 1.0) / 4)
    assert m.to_dict() == {
        "num_users": 4,
        "recall@5": m.recall[5],
        "ndcg@5": m.ndcg[5],
        "recall@10": m.recall[10],
        "ndcg@10": m.ndcg[10],
    }


def test_rank_exactly_k_is_a_miss_and_k_minus_one_a_hit():
    ranked = [list(range(10))] * 2
    m = ranking_metrics(ranked, [4, 5], ks=(5,))
    assert m.recall[5] == 0.5
    assert m.ndcg[5] == pytest.approx(0.5 / math.log2(6))


def test_item_id_strings_and_whole_item_equality():
    # "12" is not "1" or "123": a hit is the whole id, never a prefix.
    m = ranking_metrics([["1", "123", "12"], ["a"]], ["12", "b"], ks=(1, 3))
    assert target_ranks([["1", "123", "12"], ["a"]], ["12", "b"]).tolist() == [2, -1]
    assert m.recall == {1: 0.0, 3: 0.5}


def test_numpy_and_torch_inputs_match_lists():
    ranked = [[4, 2, 9], [1, 0, 3]]
    targets = [9, 1]
    ref = ranking_metrics(ranked, targets)
    assert ranking_metrics(np.array(ranked, dtype=np.int64), np.array(targets)) == ref
    assert ranking_metrics(torch.tensor(ranked), torch.tensor(targets)) == ref


def test_short_lists_are_misses_not_errors():
    m = ranking_metrics([[], [2], [5, 6]], [1, 2, 6], ks=(5, 10))
    assert m.recall[5] == pytest.approx(2 / 3)
    assert m.ndcg[10] == pytest.approx((1.0 + 1 / math.log2(3)) / 3)


def test_duplicates_are_an_error():
    with pytest.raises(ValueError, match="repeats"):
        ranking_metrics([[1, 2], [3, 4, 3]], [1, 3])


def test_mixed_kinds_and_bad_shapes_are_errors():
    with pytest.raises(TypeError, match="mix"):
        ranking_metrics([[1, 2]], ["1"])
    with pytest.raises(TypeError):
        ranking_metrics([[1.5]], [1])
    with pytest.raises(ValueError, match="one target per member"):
        ranking_metrics([[1], [2]], [1])
    with pytest.raises(ValueError, match="no members"):
        ranking_metrics([], [])
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([0, -2]))


def test_validate_ks():
    assert validate_ks([10, 5]) == (5, 10)
    for bad in [(), (0,), (5, 5), (2.5,), (True,)]:
        with pytest.raises(ValueError):
            validate_ks(bad)


def test_topk_rows_breaks_ties_by_lower_index():
    scores = torch.tensor([[0.0, 1.0, 1.0, 0.5, 1.0], [2.0, 2.0, 2.0, 2.0, 2.0], [0.1, 0.9, 0.3, 0.9, 0.7]])
    assert topk_rows(scores, 2).tolist() == [[1, 2], [0, 1], [1, 3]]
    assert topk_rows(scores, 4).tolist() == [[1, 2, 4, 3], [0, 1, 2, 3], [1, 3, 4, 2]]
    assert topk_rows(scores.numpy(), 5)[2].tolist() == [1, 3, 4, 2, 0]
    assert topk_rows(np.array([[3, 1, 3]]), 2).tolist() == [[0, 2]]  # ints are fine


def _reference_topk(row: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]


def test_topk_rows_matches_a_sort_on_heavily_tied_scores():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(37, 50)).astype(np.float32)  # many ties at every cut
    scores[3] = 1.0
    scores[5, :7] = -np.inf
    for k in (1, 5, 10, 50):
        got = topk_rows(scores, k, batch_size=8)
        assert got.shape == (37, k) and got.dtype == np.int64
        assert got.tolist() == [_reference_topk(r, k) for r in scores]


def test_topk_rows_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        topk_rows(torch.tensor([[0.0, float("nan")]]), 1)
    with pytest.raises(ValueError, match="exceeds"):
        topk_rows(torch.zeros(1, 3), 4)
    with pytest.raises(ValueError):
        topk_rows(torch.zeros(3), 1)


def test_eval_config_validation():
    cfg = EvalConfig(ks=(10, 5), split="valid")
    assert cfg.ks == (5, 10) and cfg.max_k == 10
    assert EvalConfig(split="train").split == "train"  # the diagnosis split
    for bad in [dict(split="training"), dict(ks=()), dict(ks=(0,)), dict(batch_size=0), dict(seed=-1)]:
        with pytest.raises(ValueError):
            EvalConfig(**bad)
    with pytest.raises(Exception):
        cfg.split = "test"  # frozen


def test_paired_difference_is_the_mean_of_per_member_differences_with_their_error():
    from core.metrics import paired_difference

    a = np.array([0, 3, -1, 12, 1, -1])  # places of the target; -1 = not ranked
    b = np.array([0, -1, -1, 2, 9, 4])
    f = paired_difference(a, b, 10)
    hits_a, hits_b = np.array([1, 1, 0, 0, 1, 0.0]), np.array([1, 0, 0, 1, 1, 1.0])
    assert f["members"] == 6 and f["recall@10_a"] == hits_a.mean() and f["recall@10_b"] == hits_b.mean()
    d = hits_a - hits_b
    assert f["recall@10_diff"] == pytest.approx(d.mean())
    assert f["recall@10_diff_se"] == pytest.approx(d.std(ddof=1) / np.sqrt(6))
    assert f["ndcg@10_diff"] == pytest.approx(f["ndcg@10_a"] - f["ndcg@10_b"])
    same = paired_difference(a, a, 10)
    assert same["recall@10_diff"] == same["recall@10_diff_se"] == 0.0
    with pytest.raises(ValueError, match="same members"):
        paired_difference(a, b[:5], 10)
