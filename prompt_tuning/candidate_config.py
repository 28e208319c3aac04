"""How large a context's candidate set is: ``CandidateConfig``, on its own so that configs which
hold it (``serving.config``) import neither numpy nor torch (``prompt_tuning.candidates`` uses it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class CandidateConfig:
    """How large a context's candidate set is (the knobs a canvas exposes)."""

    search_candidates: int = 30  # most titles a search query makes eligible
    # Titles whose BM25 score is at least this share of the best one are a one-word query's lexical
    # matches (and a query of several words' when no title holds all of them).
    lexical_cutoff: float = 0.6
    # A query with fewer lexical matches than this is filled up to it from the fused ranking
    # (BM25 and sentence embedding). 1 = no filling: a query that matches titles gets those titles
    # only (fewer than K come back with a reason), since the model would otherwise often prefer a
    # popular fill title to a match; a query matching none gets its nearest titles by embedding.
    min_candidates: int = 1
    theme_candidates: int = 100  # most titles a free-text (non-catalog) theme makes eligible
    # A free-text theme matching fewer titles is filled up to this from its fused ranking (BM25
    # and sentence embedding), so a collection row is full; not to theme_candidates, since the
    # model would then often prefer a popular fill title to a match ("heist": Spider-Man).
    theme_fill: int = 20
    # Titles a t2t source makes eligible: half its most co-engaged, the rest its content neighbours.
    source_candidates: int = 100
    # A t2t row fuses the model's ranking with the neighbourhood's own order (co-engagement counts)
    # by reciprocal rank (``fuse_ranks``): each list adds weight / (fusion_k + rank). The counts
    # alone rank better than the model inside the neighbourhood, the model personalises; the
    # constants were chosen on the validation split. fusion_weight 0: the model alone.
    fusion_k: int = 5
    fusion_weight: float = 1.0
    rrf_k: int = 20  # reciprocal-rank-fusion constant: smaller favours each list's head
    prefix_expansions: int = 20  # vocabulary words an unknown query word may expand to

    def __post_init__(self) -> None:
        for name in (
            "search_candidates",
            "theme_candidates",
            "source_candidates",
            "rrf_k",
            "prefix_expansions",
            "min_candidates",
            "theme_fill",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fusion_k < 0 or self.fusion_weight < 0:
            raise ValueError(
                f"fusion_k and fusion_weight must be >= 0, got {self.fusion_k}, {self.fusion_weight}"
            )
        if not 0.0 < self.lexical_cutoff <= 1.0:
            raise ValueError(f"lexical_cutoff must be in (0, 1], got {self.lexical_cutoff}")

    @classmethod
    def with_fusion(cls, chosen: Mapping[str, Any] | None) -> "CandidateConfig":
        """The defaults with the fusion constants a model folder chose (``GenFM.fusion``), if any."""
        return cls(**{key: chosen[key] for key in ("fusion_k", "fusion_weight")} if chosen else {})
