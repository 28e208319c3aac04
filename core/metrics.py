"""Deterministic ranking metrics for leave-one-out evaluation (one relevant title per member).

A hit is the whole title: a ranked entry equals the target exactly. Entries are catalog rows (int)
or item-id strings, never a mix of the two: comparing a row number with an id string would silently
score zero, so it is refused. Ranked lists may be shorter than K (the missing places are misses) but
may not repeat a title, since a repeat would let one title fill several places.

Metrics follow the benchmark's definitions (SASRec, S3-Rec, TIGER), with 0-based rank r:
Recall@K = 1[r < K] and NDCG@K = 1[r < K] / log2(r + 2), averaged over members.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10)


@dataclass(frozen=True)
class RankingMetrics:
    """Mean Recall@K and NDCG@K over `num_users` members."""

    num_users: int
    recall: dict[int, float]
    ndcg: dict[int, float]

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(self.recall)

    def to_dict(self) -> dict[str, float | int]:
        """Flat, JSON-friendly form: {"num_users": n, "recall@5": ..., "ndcg@5": ..., ...}."""
        out: dict[str, float | int] = {"num_users": self.num_users}
        for k in self.ks:
            out[f"recall@{k}"] = self.recall[k]
            out[f"ndcg@{k}"] = self.ndcg[k]
        return out


def validate_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Cut-offs as a sorted tuple of distinct positive ints."""
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"every K must be a positive int, got {k!r}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks must be distinct, got {ks}")
    return tuple(sorted(int(k) for k in ks))


def _kind(x: Hashable) -> str:
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"items must be catalog rows (int) or item ids (str), got a bool {x!r}")
    if isinstance(x, (int, np.integer)):
        return "row"
    if isinstance(x, str):
        return "id"
    raise TypeError(f"items must be catalog rows (int) or item ids (str), got {type(x).__name__}")


def _as_list(x) -> list:
    # numpy / torch arrays to plain Python values, so np.int64(3) and 3 compare and hash alike
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return list(x)


def target_ranks(ranked: Sequence[Sequence[Hashable]], targets: Sequence[Hashable]) -> np.ndarray:
    """0-based place of each member's target in its ranked list, -1 where it is absent.

    Kept separate from the averages so that per-member outcomes can feed paired comparisons.
    """
    rows = _as_list(ranked)
    tgts = _as_list(targets)
    if len(rows) != len(tgts):
        raise ValueError(f"{len(rows)} ranked lists but {len(tgts)} targets: one target per member")
    kinds = {_kind(t) for t in tgts}
    if len(kinds) > 1:
        raise TypeError("targets mix catalog rows (int) and item ids (str)")
    out = np.full(len(rows), -1, dtype=np.int64)
    for u, (row, tgt) in enumerate(zip(rows, tgts)):
        row = _as_list(row)
        for x in row:
            kinds.add(_kind(x))
            if len(kinds) > 1:
                raise TypeError(
                    f"member {u}: ranked items and targets mix catalog rows (int) and "
                    f"item ids (str); map both to the same kind first"
                )
        if len(set(row)) != len(row):
            dup = sorted({x for x in row if row.count(x) > 1}, key=str)
            raise ValueError(f"member {u}: ranked list repeats item(s) {dup[:5]}")
        try:
            out[u] = row.index(tgt)
        except ValueError:
            pass
    return out


def member_scores(ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per member Recall@k (0 or 1) and NDCG@k from target places (-1 = not ranked)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    in_k = (ranks >= 0) & (ranks < k)
    return in_k.astype(np.float64), np.where(in_k, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> RankingMetrics:
    """Recall@K and NDCG@K from target places (-1 = not ranked)."""
    ks = validate_ks(ks)
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError("need a non-empty 1-d array of ranks (one per member)")
    if (ranks < -1).any():
        raise ValueError("ranks must be >= 0, or -1 for a miss")
    recall, ndcg = {}, {}
    for k in ks:
        in_k, gain = member_scores(ranks, k)
        recall[k] = float(in_k.mean())
        ndcg[k] = float(gain.mean())
    return RankingMetrics(num_users=len(ranks), recall=recall, ndcg=ndcg)


def ranking_metrics(
    ranked: Sequence[Sequence[Hashable]], targets: Sequence[Hashable], ks: Sequence[int] = DEFAULT_KS
) -> RankingMetrics:
    """Mean Recall@K / NDCG@K of per-member ranked lists against one target title per member."""
    ks = validate_ks(ks)
    if len(_as_list(targets)) == 0:
        raise ValueError("no members to evaluate")
    return metrics_from_ranks(target_ranks(ranked, targets), ks)


def topk_rows(scores: torch.Tensor | np.ndarray, k: int, batch_size: int = 1024) -> np.ndarray:
    """Top-k column indices per row, best first; equal scores go to the lower column index.

    torch.topk leaves the order of ties unspecified (it differs between CPU, CUDA and thread
    counts), so the k winners are chosen exactly (every column above the k-th value, then the
    lowest-indexed columns equal to it) and a stable sort orders them. Returns (rows, k) int64.
    """
    if isinstance(scores, np.ndarray):
        scores = torch.from_numpy(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (users, items), got shape {tuple(scores.shape)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    n_rows, n_items = scores.shape
    if k > n_items:
        raise ValueError(f"k={k} exceeds the {n_items} items scored")
    if not scores.is_floating_point():
        scores = scores.double()
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; ranking would be undefined")
    out = torch.empty((n_rows, k), dtype=torch.int64)
    for start in range(0, n_rows, batch_size):
        s = scores[start : start + batch_size]  # (b, N)
        vals, cols = s.topk(min(k + 1, n_items), dim=1)  # (b, k + 1) each
        kth, cols = vals[:, k - 1 : k], cols[:, :k]  # (b, 1), (b, k)
        # A row whose (k+1)-th score equals its k-th has a tie across the cut: which tied columns
        # win must be chosen explicitly.
        if k < n_items:
            crowded = vals[:, k] == vals[:, k - 1]  # (b,)
        else:
            crowded = torch.zeros(len(s), dtype=torch.bool, device=s.device)
        if crowded.any():
            sc, kc = s[crowded], kth[crowded]
            above, tied = sc > kc, sc == kc  # (c, N): every column above kth is a winner
            need = k - above.sum(1, keepdim=True)  # (c, 1) places left for tied columns
            chosen = above | (tied & (tied.cumsum(1) <= need))  # exactly k per row
            cols[crowded] = chosen.nonzero()[:, 1].view(-1, k)
        cols = cols.sort(dim=1).values  # ascending column, then a stable sort by score
        order = s.gather(1, cols).sort(dim=1, descending=True, stable=True).indices
        out[start : start + len(s)] = cols.gather(1, order).cpu()
    return out.numpy()


def paired_difference(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int) -> dict[str, Any]:
    """Recall@k and NDCG@k of two rankers on the same members, and their difference (a - b) with
    the standard error of the per-member differences: on the same members the two hit patterns are
    correlated, so this error is far smaller than either figure's own, and it is the one that says
    whether a gap is noise.

    Each side is one run's target places, (members,), or several runs' (runs, members), such as
    seeds of one recipe: a member's score is then its mean over the runs. With several runs on
    either side the result also holds each run's figure, and with two or more on both sides
    ``_diff_seed_se``, the standard error of the difference of the runs' means (what training again
    would move it by; with two runs a side it rests on one degree of freedom each); the
    member-paired error says nothing about that."""
    a, b = np.asarray(ranks_a, dtype=np.int64), np.asarray(ranks_b, dtype=np.int64)
    a, b = (x[None, :] if x.ndim == 1 else x for x in (a, b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] < 2 or 0 in (len(a), len(b)):
        raise ValueError(
            f"need rank arrays of the same members (2 or more), (members,) or (runs, members), "
            f"got {np.shape(ranks_a)} and {np.shape(ranks_b)}"
        )
    out: dict[str, Any] = {"members": int(a.shape[1]), "runs_a": len(a), "runs_b": len(b)}
    per_run = [member_scores(r, k) for r in a], [member_scores(r, k) for r in b]
    for m, name in enumerate(("recall", "ndcg")):
        xa = np.mean([s[m] for s in per_run[0]], axis=0)  # (members,) mean over runs
        xb = np.mean([s[m] for s in per_run[1]], axis=0)
        d = xa - xb
        key = f"{name}@{k}"
        out[f"{key}_a"], out[f"{key}_b"] = float(xa.mean()), float(xb.mean())
        out[f"{key}_diff"] = float(d.mean())
        out[f"{key}_diff_se"] = float(d.std(ddof=1) / np.sqrt(d.size))
        if len(a) > 1 or len(b) > 1:
            runs_a = np.array([s[m].mean() for s in per_run[0]])
            runs_b = np.array([s[m].mean() for s in per_run[1]])
            out[f"{key}_a_runs"], out[f"{key}_b_runs"] = runs_a.tolist(), runs_b.tolist()
            if len(a) > 1 and len(b) > 1:
                out[f"{key}_diff_seed_se"] = float(
                    np.sqrt(runs_a.var(ddof=1) / len(a) + runs_b.var(ddof=1) / len(b))
                )
    return out
