"""The model's own ranking: two rankings fused by reciprocal rank, and the model's constrained beam
fused with its title head (``gen_fm.decode.recommend_titles``). The weights every fusion choice
tries on the validation split live here too, so training, evaluation and serving share them."""

from __future__ import annotations


from gen_fm.decode import Recommendations

# Fusion weights tried on validation (reciprocal-rank constant FUSION_K): 0 is the first list
# alone; at 64 the second list's head outranks the first list's first title
# (64 / (5 + 20) > 1 / (5 + 1)), so it is the second list first, filled by the first.
FUSION_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 64.0)
FUSION_K = 5


def fusion_scores(
    model_rows: list[int], order_rows: list[int], fusion_k: int, weight: float
) -> dict[int, float]:
    """Two rankings fused by reciprocal rank, best first: the model's list counts
    1 / (fusion_k + rank), the candidate order weight / (fusion_k + rank); ties keep the model's
    order. Hand-written: a few lines, where a fusion library would be a dependency for them."""
    score: dict[int, float] = {}
    for rank, r in enumerate(model_rows):
        score[r] = score.get(r, 0.0) + 1.0 / (fusion_k + rank + 1)
    for rank, r in enumerate(order_rows):
        score[r] = score.get(r, 0.0) + weight / (fusion_k + rank + 1)
    first = {r: i for i, r in enumerate(dict.fromkeys([*model_rows, *order_rows]))}
    return {r: score[r] for r in sorted(score, key=lambda r: (-score[r], first[r]))}


def beam_with_head(beam_rows: list[int], head_rows: list[int], weight: float) -> dict[int, float]:
    """The model's ranking, best first with its scores: its constrained beam fused by reciprocal
    rank (``FUSION_K``) with its title head's list (``gen_fm.decode.recommend_titles``), the head's
    ranks weighted by `weight`."""
    return fusion_scores(list(beam_rows), list(head_rows), FUSION_K, weight)


def fuse_title_head(
    beam: Recommendations, head: Recommendations | None, weight: float, codes
) -> Recommendations:
    """``beam_with_head`` on decoded lists (0 or no head: the beam as it is); scores become the
    fused scores, `codes` gives each title's semantic ID."""
    if head is None or weight <= 0:
        return beam
    fused = beam_with_head(beam.rows, head.rows, weight)
    rows = list(fused)
    return Recommendations(rows, [tuple(int(c) for c in codes[r]) for r in rows], list(fused.values()), 0)
