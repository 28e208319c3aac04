"""The Python API: title ids in, ranked titles out, on either decoding backend.

    rec = Recommender.from_pretrained("runs/gen_fm/model", backend="vllm", num_beams=20)
    top = rec.recommend(["tt0114709", "tt0113497"], canvas="home", k=10)
    top[0].item_id, top[0].title, top[0].score, top[0].semantic_id

Both backends get the same prompts (``PromptEncoder.encode``: bos, member token, canvas token, the
history's code tokens oldest first) and the same per-request ``Restriction`` of the one ``PrefixTrie``,
and rank by the same score, so they return the same titles (the vLLM parity tests check it).

Decisions a caller should know:
- Unknown title ids (in history, exclude or allow) raise ``ValueError`` naming them: a silently
  dropped history title changes the recommendations without anyone noticing.
- History longer than ``max_history``: the most recent ``max_history`` titles form the prompt (the
  model was trained on windows of that length); the result says how many were left out.
- ``exclude_history=True`` (default) never recommends a title of the history, the whole history
  included: a "home" row should not offer what the member has just watched. Pass False for rows
  where re-watching is the point (e.g. "continue watching"-like canvases).
- Empty history (a new member): the prompt is the bos/member/canvas prefix alone and the result is
  flagged ``cold_start``. The model never learned this case (every training window starts with a
  context title), so it is a weak, popularity-like guess; prefer a popularity list when it is set.
- Score: log-probability of the title among the titles this request permits (sum of the L token
  log-probs, each renormalised over the allowed next tokens), so scores of different requests with
  different exclusions are not comparable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gen_fm.decode import Recommendations, recommend
from gen_fm.model import load_model
from gen_fm.tokenizer import CANVASES, DEFAULT_CANVAS
from semantic_ids.trie import PrefixTrie, Restriction
from serving.config import ServingConfig


@dataclass(frozen=True)
class Recommendation:
    item_id: str  # title id, as in the ID artifact
    title: str | None  # display title (None if the ID artifact has no titles)
    score: float  # log-probability among the titles this request permits (see module doc)
    semantic_id: str  # "<a_12><b_7><c_200><d_0>"


@dataclass(frozen=True)
class RecommendationRequest:
    """One request of ``recommend_batch``; the fields mean what ``Recommender.recommend``'s arguments do."""

    history: Sequence[str]
    canvas: str = DEFAULT_CANVAS
    k: int = 10
    exclude: Sequence[str] | None = None
    allow: Sequence[str] | None = None
    user_id: str | None = None
    exclude_history: bool = True


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

    def __getitem__(self, i):  # type: ignore[override]
        return self.items[i]

    def __len__(self) -> int:
        return len(self.items)


class _Backend(Protocol):
    def search(self, prompts: Sequence[Sequence[int]], k: int, num_beams: int,
               views: Sequence[Restriction | None] | None) -> list[Recommendations]: ...

    def close(self) -> None: ...


class TransformersBackend:
    """``gen_fm.decode.recommend`` (HF beam search + trie logits processor): the reference path."""

    def __init__(self, model: Any, trie: PrefixTrie, config: ServingConfig) -> None:
        import torch

        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(config.dtype, torch.float32)
        self.model = model.to(device=config.device, dtype=dtype).eval()
        self.trie = trie
        self.batch_size = config.max_batch

    def search(self, prompts: Sequence[Sequence[int]], k: int, num_beams: int,
               views: Sequence[Restriction | None] | None) -> list[Recommendations]:
        exclude = None
        if views is not None and any(v is not None for v in views):
            # decode.recommend takes exclusion lists; an allow-view is its complement
            exclude = [excluded_rows(v, self.trie.num_items) for v in views]
        return recommend(self.model, [list(p) for p in prompts], self.trie, k=k, num_beams=num_beams,
                         exclude=exclude, batch_size=self.batch_size)

    def close(self) -> None:
        pass


def excluded_rows(view: Restriction | None, num_items: int) -> list[int]:
    """Item rows a view forbids (the complement of an allow-list)."""
    if view is None:
        return []
    if view.mode == "exclude":
        return view.rows.tolist()
    return np.setdiff1d(np.arange(num_items), view.rows, assume_unique=True).tolist()


@dataclass(frozen=True)
class _Prepared:
    """A validated request, ready to decode."""

    prompt: list[int]
    view: Restriction | None
    k: int
    beams: int
    history_used: int
    history_dropped: int
    num_permitted: int
    reason: str | None


class Recommender:
    """A loaded model folder behind one decoding backend.

    One caller at a time: neither ``vllm.LLM`` nor the transformers model is safe to drive from
    several threads, so a server must queue requests (``recommend_batch`` is the batching point).
    """

    def __init__(self, config: ServingConfig) -> None:
        gm = load_model(config.model_dir)
        trained = gm.seq_config.max_history
        if config.max_history is not None and config.max_history > trained:
            raise ValueError(f"max_history {config.max_history} exceeds the {trained} titles the model "
                             f"was trained with")
        self.config = config
        self.max_history = config.max_history or trained
        self.ids = gm.ids
        self.encoder = gm.prompt_encoder()
        self.trie = PrefixTrie.from_ids(gm.ids)
        self.manifest = gm.manifest
        if config.backend == "transformers":
            self.backend: _Backend = TransformersBackend(gm.model, self.trie, config)
        else:
            del gm.model  # vLLM loads the weights itself
            from serving.engine import VLLMBeamSearch

            self.backend = VLLMBeamSearch(config, self.trie)

    @classmethod
    def from_pretrained(cls, model_dir: str, backend: str = "vllm", **config: Any) -> "Recommender":
        """Load ``model_dir``; ``config`` holds further ``ServingConfig`` fields (num_beams=, ...)."""
        return cls(ServingConfig.create(str(model_dir), backend=backend, **config))

    def recommend(self, history: Sequence[str], canvas: str = DEFAULT_CANVAS, k: int = 10,
                  exclude: Sequence[str] | None = None, allow: Sequence[str] | None = None,
                  user_id: str | None = None, exclude_history: bool = True) -> RecommendationList:
        """Top-``k`` titles after ``history`` (title ids, oldest first) on ``canvas``.

        ``exclude`` titles are never returned; ``allow`` (when given) is the only titles that may be;
        ``user_id`` selects the member token (ignored by models trained without member tokens).
        """
        return self.recommend_batch([RecommendationRequest(history, canvas, k, exclude, allow, user_id,
                                                           exclude_history)])[0]

    def recommend_batch(self, requests: Sequence[RecommendationRequest | Mapping[str, Any]]
                        ) -> list[RecommendationList]:
        """Many requests decoded together; every request is validated before any decoding starts.

        Requests are grouped by beam width (``max(num_beams, k)``) so a request's result never
        depends on which other requests share its batch.
        """
        reqs = [r if isinstance(r, RecommendationRequest) else RecommendationRequest(**r) for r in requests]
        prepared = []
        for i, r in enumerate(reqs):
            try:
                prepared.append(self._prepare(r))
            except ValueError as e:
                raise ValueError(f"request {i}: {e}" if len(reqs) > 1 else str(e)) from None
        found: dict[int, Recommendations] = {}
        for beams in sorted({p.beams for p in prepared}):
            todo = [i for i, p in enumerate(prepared) if p.beams == beams and p.num_permitted > 0]
            if not todo:
                continue
            k = max(prepared[i].k for i in todo)  # the same beams, so each request's top-k is a prefix
            recs = self.backend.search([prepared[i].prompt for i in todo], k, beams,
                                       [prepared[i].view for i in todo])
            found.update(zip(todo, recs))
        return [self._result(p, found.get(i)) for i, p in enumerate(prepared)]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Recommender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _rows(self, titles: Sequence[str] | None, what: str) -> list[int]:
        if titles is None:
            return []
        if isinstance(titles, str):
            raise ValueError(f"{what} must be a list of title ids, got the string {titles!r}")
        unknown = [t for t in titles if t not in self.ids]
        if unknown:
            shown = ", ".join(repr(t) for t in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise ValueError(f"{len(unknown)} unknown title id(s) in {what}: {shown} (titles without a "
                             f"semantic ID must be assigned one first: `sidrec ids assign`)")
        return [self.ids.index_of(t) for t in titles]

    def _prepare(self, r: RecommendationRequest) -> _Prepared:
        max_k = self.config.max_k
        if not isinstance(r.k, (int, np.integer)) or isinstance(r.k, bool) or not 1 <= r.k <= max_k:
            raise ValueError(f"k must be an integer in 1..{max_k} (ServingConfig.max_k), got {r.k!r}")
        if r.canvas not in CANVASES:
            raise ValueError(f"unknown canvas {r.canvas!r}; choose one of {CANVASES}")
        history = self._rows(r.history, "history")
        exclude = self._rows(r.exclude, "exclude")
        allow = self._rows(r.allow, "allow") if r.allow is not None else None
        kept = history[-self.max_history:] if history else []
        prompt = self.encoder.encode(kept, canvas=r.canvas,
                                     user_id=None if r.user_id is None else str(r.user_id))
        excluded = sorted(set(exclude) | (set(history) if r.exclude_history else set()))
        view = None
        if excluded or allow is not None:
            view = self.trie.restrict(exclude_rows=excluded, allow_rows=allow)
        permitted = self.trie.num_items if view is None else view.num_permitted
        reason = None
        if permitted < r.k:
            parts = (["the allow-list"] if allow is not None else []) + \
                    (["minus exclusions"] if exclude else []) + \
                    (["minus the history"] if r.exclude_history and history else [])
            rule = " ".join(parts) or "the catalogue"
            reason = (f"only {permitted} title(s) permitted ({rule}), fewer than k={r.k}" if permitted
                      else f"no title is permitted ({rule})")
        return _Prepared(prompt=prompt, view=view, k=int(r.k), beams=self.config.beams_for(int(r.k)),
                         history_used=len(kept), history_dropped=len(history) - len(kept),
                         num_permitted=permitted, reason=reason)

    def _result(self, p: _Prepared, rec: Recommendations | None) -> RecommendationList:
        items: list[Recommendation] = []
        if rec is not None:
            layout = self.ids.layout
            for row, sid, score in zip(rec.rows[:p.k], rec.sids, rec.scores):
                item = self.ids.item_ids[row]
                items.append(Recommendation(item_id=item, title=self.ids.title(item), score=float(score),
                                            semantic_id=layout.sid_string(sid)))
        reason = p.reason
        if reason is None and len(items) < p.k:  # cannot happen with beam >= k; say so if it does
            reason = f"beam search returned {len(items)} of {p.k} titles"
        return RecommendationList(items=tuple(items), k=p.k, cold_start=p.history_used == 0,
                                  history_used=p.history_used, history_dropped=p.history_dropped,
                                  num_permitted=p.num_permitted, reason=reason)


__all__ = ["Recommendation", "RecommendationList", "RecommendationRequest", "Recommender",
           "ServingConfig", "TransformersBackend", "excluded_rows"]
