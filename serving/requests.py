"""What a request to ``serving.recommender.Recommender`` carries and what comes back: the request,
the ranked list with how it was obtained, and the validated request ``Recommender.prepare`` makes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gen_fm.decode import Recommendations
from gen_fm.tokenizer import DEFAULT_CANVAS
from semantic_ids.trie import Restriction
from serving.rules import DiversityCap, Rules


@dataclass(frozen=True)
class Recommendation:
    item_id: str  # title id, as in the ID artifact
    title: str | None  # display title (None if the ID artifact has no titles)
    score: float  # log-probability among the titles this request permits (see module doc)
    semantic_id: str  # "<a_12><b_7><c_200><d_0>"
    # a fresh title in a slot kept for fresh titles (its score: the content similarity, or the model's)
    fresh: bool = False


@dataclass(frozen=True, init=False)
class RecommendationRequest:
    """One request of ``recommend_batch``; the fields mean what ``Recommender.recommend``'s arguments do.

    A canvas's context is a keyword named by its spec's ``context_field`` (``query="space opera"``,
    ``source="tt0114709"``, or a registered canvas's own), or a ``context`` mapping; both land in
    ``context``, which ``Recommender.prepare`` checks against the canvas (``serving.prompts``).
    """

    history: Sequence[str]
    canvas: str = DEFAULT_CANVAS
    k: int = 10
    exclude: Sequence[str] | None = None
    allow: Sequence[str] | None = None
    user_id: str | None = None
    exclude_history: bool = True
    rules: Rules | Mapping[str, Any] | None = None  # serving.rules JSON shape
    fresh_share: float | None = None  # share of the k slots kept for fresh titles (None: the server's)
    context: Mapping[str, Any] = field(default_factory=dict)  # context field -> value, e.g. {"query": ...}

    def __init__(
        self,
        history: Sequence[str],
        canvas: str = DEFAULT_CANVAS,
        k: int = 10,
        exclude: Sequence[str] | None = None,
        allow: Sequence[str] | None = None,
        user_id: str | None = None,
        exclude_history: bool = True,
        rules: Rules | Mapping[str, Any] | None = None,
        *,
        fresh_share: float | None = None,
        context: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        given = locals()  # the parameters, by name: each field is set from its own
        twice = sorted(set(context or {}) & set(fields))
        if twice:
            raise ValueError(f"context field(s) {twice} given twice: as keywords and in context")
        for f in dataclasses.fields(self):  # frozen: set once, here
            object.__setattr__(self, f.name, given[f.name])
        object.__setattr__(self, "context", {**(context or {}), **fields})


@dataclass(frozen=True)
class RecommendationList(Sequence[Recommendation]):
    """Ranked titles, best first (a sequence of :class:`Recommendation`), and how they were obtained."""

    items: tuple[Recommendation, ...]
    k: int  # titles asked for
    cold_start: bool  # empty history: ranked from the prompt prefix alone (see module doc)
    history_used: int  # history titles in the prompt (the most recent max_history)
    history_dropped: int  # older titles left out of the prompt (still excluded if exclude_history)
    num_permitted: int  # titles this request allows (catalogue, allow-list, minus exclusions)
    reason: str | None  # why fewer than k came back; None when k did
    prompt_tokens: int = 0  # length of the prompt the model saw
    rules_applied: tuple[str, ...] = ()  # business rules that narrowed this request (serving.rules)
    canvas: str = DEFAULT_CANVAS  # the canvas adapter that served it
    soft_prompt: bool = False  # the canvas's trained soft prompt led the prompt
    context: str | None = None  # the context field behind the prompt's context ("query", "source", ...)
    warnings: tuple[str, ...] = ()  # what the request was turned into (e.g. t2t source fallback)
    # how the context became the titles this list was chosen from (search, collection), e.g.
    # "catalog theme 'Western': 167 titles"; None when the context did not restrict the titles
    candidates: str | None = None
    # the ranking the model's beam was fused with by reciprocal rank (the scores are the fusion's),
    # e.g. "the titles most often paired with 'Heat (1995)'"; None: the model's ranking alone
    fused_with: str | None = None

    def __getitem__(self, i):  # type: ignore[override]
        return self.items[i]

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request, ready to decode (``Recommender.prepare``; decoded by ``Recommender.run``)."""

    prompt: list[int]
    view: Restriction | None
    k: int
    beams: int
    want: int  # titles asked of the beam search: k, or every beam when a diversity cap picks from them
    cap: DiversityCap | None
    history_used: int
    history_dropped: int
    num_permitted: int
    reason: str | None
    rules_applied: tuple[str, ...]
    canvas: str = DEFAULT_CANVAS
    soft_prompt: bool = False
    context: str | None = None
    warnings: tuple[str, ...] = ()
    candidates: str | None = None  # how the context's candidate set was found (None: no set)
    lora: str | None = None  # the canvas whose LoRA decodes it (None: the base weights)
    # the permitted rows the beam's titles are fused with (``CanvasPrompt.fuse_order``); None: not fused
    fuse_order: tuple[int, ...] | None = None
    fused_with: str | None = None  # what fuse_order is, for the result
    # the fresh titles this request permits and the slots they get (None: no slots kept)
    fresh_view: Restriction | None = None  # the model searches among them (fresh_source "model")
    fresh_ranked: Recommendations | None = None  # ranked already, by content (fresh_source "content")
    fresh_slots: int = 0
