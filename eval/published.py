"""Published numbers that our results are plotted against, each row naming where it comes from.

Kept as data, in one place, so the report (and anyone else) reads the same figures. All rows are
amazon-beauty (the 5-core Amazon "Beauty" set: 22,363 users, 12,101 titles) under the protocol that
the field reports: leave-one-out (last item test, the one before it validation), histories capped
at the 20 most recent items, ranking over the full catalog without sampled negatives. Collected in
``shared/notes/anchors.md``; a missing figure is ``None`` (the source does not report it).
"""

from __future__ import annotations

from typing import Any

PROTOCOL = (
    "leave-one-out (last item test); history capped at 20 items; full-catalog ranking, no sampled negatives"
)

# dataset -> published model -> figures and their source.
PUBLISHED: dict[str, dict[str, dict[str, Any]]] = {
    "amazon-beauty": {
        "TIGER (paper)": {
            "source": "Rajput et al., Recommender Systems with Generative Retrieval "
            "(TIGER), NeurIPS 2023, Table 1",
            "recall@5": 0.0454,
            "ndcg@5": 0.0321,
            "recall@10": 0.0648,
            "ndcg@10": 0.0384,
        },
        "SASRec (reported by TIGER)": {
            "source": "SASRec row of the TIGER paper, NeurIPS 2023, Table 1",
            "recall@5": 0.0387,
            "ndcg@5": 0.0249,
            "recall@10": 0.0605,
            "ndcg@10": 0.0318,
        },
        "SASRec (tuned reproduction)": {
            "source": "tuned public reproduction of SASRec (shared/notes/anchors.md)",
            "recall@5": 0.0508,
            "ndcg@5": 0.0348,
            "recall@10": 0.0740,
            "ndcg@10": 0.0423,
        },
        "SASRec full-softmax": {
            "source": "SASRec trained with a full-softmax (cross-entropy) loss, independent "
            "report (shared/notes/anchors.md); Recall@10 only",
            "recall@5": None,
            "ndcg@5": None,
            "recall@10": 0.0859,
            "ndcg@10": None,
        },
    },
}


def published(dataset: str) -> dict[str, dict[str, Any]]:
    """The published rows for one dataset (empty when the field reports none)."""
    return PUBLISHED.get(dataset, {})
