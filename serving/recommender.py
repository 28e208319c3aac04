"""The Python API: title ids in, ranked titles out, on any decoding backend (``serving.backends``:
vLLM, transformers or one registered there; the same prompts, restrictions and scores, so the same
titles).

    rec = Recommender.from_pretrained("runs/prompt_tuning/served", backend="vllm", num_beams=20)
    top = rec.recommend(["tt0114709", "tt0113497"], canvas="home", k=10)
    rec.recommend(history, canvas="search", query="space opera", k=10)

What a caller should know: unknown title ids raise ``ValueError`` naming them; only the newest
``max_history`` titles form the prompt (the result says how many were left out); the history is
never recommended unless ``exclude_history=False``; an empty history without a context is a weak,
popularity-like guess flagged ``cold_start``; a score is the title's log-probability among the
titles the request permits, or the fusion's score where a canvas fuses rankings (``fused_with``);
business rules narrow the search itself; ``fresh_share`` keeps slots for titles added after training;
fewer than ``k`` titles always come with a ``reason``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gen_fm.decode import Recommendations, title_tokens
from gen_fm.model import load_model
from gen_fm.ranking import fuse_title_head, fusion_scores
from gen_fm.tokenizer import DEFAULT_CANVAS
from prompt_tuning.candidates import (
    content_nearest,
    content_vectors,
    with_fresh,
)
from prompt_tuning.canvases import get_canvas
from semantic_ids.trie import PrefixTrie
from serving.backends import Backend, BackendFactory
from serving.backends.registry import DEFAULT_BACKEND, get_backend
from serving.config import ServingConfig, check_fresh_share
from serving.lifecycle import EngineUnavailable
from serving.prompts import CanvasPrompts, RequestError
from serving.requests import PreparedRequest, Recommendation, RecommendationList, RecommendationRequest
from serving.rules import AttributeTable, compile_rules, load_attributes, title_rows


class Recommender:
    """A loaded model folder behind one decoding backend.

    One caller at a time: neither ``vllm.LLM`` nor the transformers model is safe to drive from
    several threads, so a server must queue requests (``recommend_batch`` is the batching point).
    """

    def __init__(self, config: ServingConfig, attributes: AttributeTable | None = None) -> None:
        gm = load_model(config.model_dir)
        trained = gm.seq_config.max_history
        if config.decoding.max_history is not None and config.decoding.max_history > trained:
            raise ValueError(
                f"max_history {config.decoding.max_history} exceeds the {trained} titles the model was trained with"
            )
        self.config = config
        self.max_history = config.decoding.max_history or trained
        self.ids = gm.ids
        self.seq_config = gm.seq_config  # how the model's training sequences were rolled up
        # soft prompts, canvas contexts and the candidate sets contexts make
        chosen = gm.fusion() or {}  # the fusion constants chosen for this model on validation
        candidate_config = config.candidate_config(chosen) if config.decoding.candidate_sets else None
        self.prompts = CanvasPrompts(gm, self.max_history, candidate_config)
        self.encoder = self.prompts.encoder
        self.trie = PrefixTrie.from_ids(gm.ids)
        self.manifest = gm.manifest
        # titles added by catalog updates after training: the ID rows from the trained count on
        trained = (gm.manifest.get("catalog") or {}).get("trained_titles", gm.ids.num_items)
        self.fresh_rows = np.arange(trained, gm.ids.num_items, dtype=np.int64)
        self._content = None  # unit content vectors of every title, read when a fresh slot needs them
        # fusion constants: the config's, else those chosen for this model on validation, else defaults
        fusion = config.candidate_config(chosen)
        self.fusion_k, self.fusion_weight = fusion.fusion_k, fusion.fusion_weight
        # the title head's weight in the model's own ranking (a title-token model only)
        self.title_tokens = title_tokens(gm.layout, gm.ids.num_items)
        self.title_weight = 0.0
        if self.title_tokens is not None:
            self.title_weight = next(
                v for v in (config.decoding.title_weight, chosen.get("title_weight"), 0.0) if v is not None
            )
        if attributes is None and config.catalog.data_dir is not None:
            attributes = load_attributes(gm.ids, config.catalog.data_dir, self._dataset(config))
        if attributes is not None and attributes.num_items != gm.ids.num_items:
            raise ValueError(
                f"attribute table covers {attributes.num_items} titles, the model {gm.ids.num_items}"
            )
        self.attributes = attributes  # catalog attributes for rules; None = attribute rules refused
        # the folder is handed over: a backend that loads the weights itself drops gm.model
        build: BackendFactory = get_backend(config.engine.backend)
        self.backend: Backend = build(gm, self.trie, config, self.prompts.loras, self.title_tokens)
        if not isinstance(self.backend, Backend):
            raise TypeError(
                f"backend {config.engine.backend!r}: its factory returned {type(self.backend).__name__}, "
                f"which lacks the serving.backends.Backend methods (search, titles, failure, close)"
            )

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str,
        backend: str = DEFAULT_BACKEND,
        attributes: AttributeTable | None = None,
        **config: Any,
    ) -> "Recommender":
        """Load ``model_dir``; ``config`` holds further ``ServingConfig`` fields (num_beams=, data_dir=, ...);
        ``attributes`` is a ready attribute table (else one is loaded from ``data_dir`` when set)."""
        return cls(ServingConfig.create(str(model_dir), backend=backend, **config), attributes)

    def recommend(
        self, history: Sequence[str], canvas: str = DEFAULT_CANVAS, k: int = 10, **options: Any
    ) -> RecommendationList:
        """Top-``k`` titles after ``history`` (title ids, oldest first) on ``canvas``; ``options`` are
        the other fields of :class:`RecommendationRequest`, by keyword.

        ``exclude`` titles are never returned; ``allow`` (when given) is the only titles that may be;
        ``user_id`` selects the member token (ignored by models trained without member tokens);
        ``rules`` are business rules (``serving.rules``), applied while decoding. The canvas's
        context is the keyword its spec names (``CanvasSpec.context_field``: ``query`` for search,
        ``source`` for t2t, ``theme`` for collection); a name no registered canvas takes is a
        ``ValueError`` listing those that exist (``serving.prompts``: which are required, and the
        t2t fallback). ``fresh_share`` of the ``k`` slots go to titles added after training
        (``ServingConfig.fresh.fresh_share`` when None).
        """
        request = RecommendationRequest(history, canvas, k, **options)
        return self.recommend_batch([request])[0]

    def recommend_batch(
        self, requests: Sequence[RecommendationRequest | Mapping[str, Any]]
    ) -> list[RecommendationList]:
        """Many requests decoded together; every request is validated before any decoding starts."""
        reqs = [r if isinstance(r, RecommendationRequest) else RecommendationRequest(**r) for r in requests]
        prepared = []
        for i, r in enumerate(reqs):
            try:
                prepared.append(self.prepare(r))
            except ValueError as e:
                if len(reqs) > 1:  # same type, same attributes (RequestError.param)
                    e.args = (f"request {i}: {e}",)
                raise e from None
        return self.run(prepared)

    def prepare(self, r: RecommendationRequest) -> PreparedRequest:
        """Validate one request and build its prompt and restriction (``ValueError`` names the problem).

        Separate from ``run`` so a server can reject a bad request without failing its batch.
        """
        max_k = self.config.decoding.max_k
        if not isinstance(r.k, (int, np.integer)) or isinstance(r.k, bool) or not 1 <= r.k <= max_k:
            raise ValueError(
                f"k must be an integer in 1..{max_k} (ServingConfig.decoding.max_k), got {r.k!r}"
            )
        get_canvas(r.canvas)  # a ValueError naming the registered canvases
        history = title_rows(self.ids, r.history, "history")
        exclude = title_rows(self.ids, r.exclude, "exclude")
        allow = title_rows(self.ids, r.allow, "allow") if r.allow is not None else None
        mask = compile_rules(r.rules, self.ids, self.attributes)
        cp = self.prompts.build(r.canvas, history, r.user_id, r.context)
        source = {cp.source_row} if cp.source_row is not None else set()  # "more like X" never offers X
        excluded = sorted(set(exclude) | (set(history) if r.exclude_history else set()) | source)
        if cp.candidates is not None:  # the context's candidate set: the model ranks within it
            cands = cp.candidates.rows.tolist()
            allow = cands if allow is None else sorted(set(allow) & set(cands))
        view = None
        if excluded or allow is not None:
            view = self.trie.restrict(exclude_rows=excluded, allow_rows=allow)
        view = mask.narrow(self.trie, view)  # rules stack onto the same restriction
        share = self.config.fresh.fresh_share if r.fresh_share is None else r.fresh_share
        check_fresh_share(share)
        fresh_view, fresh_ranked, slots = None, None, int(share * int(r.k) + 1e-9)
        fresh = self.fresh_rows if view is None else self.fresh_rows[view.permits(self.fresh_rows)]
        if slots and len(fresh):  # the fresh titles are ranked apart; the other slots never hold one
            basis = [*history, *([cp.source_row] if cp.source_row is not None else [])]
            if self.config.fresh.fresh_source == "content" and basis:
                fresh_ranked = self._content_fresh(basis, fresh, slots)
            else:  # the model's own search among them (also the fallback without a history)
                fresh_view = self.trie.restrict(allow_rows=fresh.tolist())
            view = (self.trie if view is None else view).restrict(exclude_rows=self.fresh_rows)
        permitted = self.trie.num_items if view is None else view.num_permitted
        permitted += len(fresh) if slots and (fresh_view is not None or fresh_ranked is not None) else 0
        k = int(r.k)
        reason = None
        if permitted < k:
            parts = (
                (["the allow-list"] if r.allow is not None else [])
                + (
                    [f"the {r.canvas} context's candidates: {cp.candidates.how}"]
                    if cp.candidates is not None
                    else []
                )
                + (["minus exclusions"] if exclude else [])
                + (["minus the history"] if r.exclude_history and history else [])
                + (["minus the source title"] if source else [])
                + [f"rule {name}" for name in mask.applied if name != "diversity"]
            )
            rule = ", ".join(parts) or "the catalogue"
            reason = (
                f"only {permitted} title(s) permitted ({rule}), fewer than k={k}"
                if permitted
                else f"no title is permitted ({rule})"
            )
        beams = self.config.beams_for(k, diverse=mask.cap is not None)
        order = None
        if cp.fuse_order is not None and self.fusion_weight > 0:
            rows = np.asarray(cp.fuse_order, dtype=np.int64)
            order = tuple(int(x) for x in (rows if view is None else rows[view.permits(rows)]))
        return PreparedRequest(
            prompt=cp.prompt,
            view=view,
            k=k,
            beams=beams,
            want=beams if mask.cap is not None or order is not None else k,
            cap=mask.cap,
            fuse_order=order,
            fused_with=None if order is None else cp.fused_with,
            history_used=cp.history_used,
            history_dropped=cp.history_dropped,
            num_permitted=permitted,
            reason=reason,
            rules_applied=mask.applied,
            canvas=r.canvas,
            soft_prompt=cp.soft_prompt,
            context=cp.context,
            warnings=cp.warnings,
            candidates=None if cp.candidates is None else cp.candidates.how,
            lora=cp.lora,
            fresh_view=fresh_view,
            fresh_ranked=fresh_ranked,
            fresh_slots=slots if fresh_view is not None or fresh_ranked is not None else 0,
        )

    def _content_fresh(self, basis: list[int], fresh: np.ndarray, n: int) -> Recommendations:
        """The `n` fresh titles nearest the mean of the `basis` titles' content vectors (the ID
        artifact's embeddings, unit rows); scores are cosine similarities."""
        if self._content is None:
            self._content = content_vectors(self.ids.path)
        rows, sims = content_nearest(self._content, fresh, basis, n)
        return Recommendations(rows, [self.ids.codes[r] for r in rows], sims, 0)

    def run(self, prepared: Sequence[PreparedRequest]) -> list[RecommendationList]:
        """Decode prepared requests together.

        Requests are grouped by beam width so a request's result never depends on which other
        requests share its batch (with equal beams, each request's top titles are a prefix of the
        group's widest ask). A request whose diversity cap leaves it short is searched again with
        twice the beam, up to ``ServingConfig.max_beams``; that sequence depends on the request alone.
        """
        prepared = list(prepared)
        self.ensure_alive()
        try:
            found = self._search(prepared, range(len(prepared)))
        except Exception as e:
            self.ensure_alive(cause=e)  # a dead engine's error says so, whatever the backend raised
            raise
        widest = self.config.max_beams
        while True:  # a diversity cap the beam could not fill: search again, twice as wide
            short = [
                i
                for i, p in enumerate(prepared)
                if p.cap is not None
                and p.beams < widest
                and i in found
                and len(p.cap.select(found[i].rows, p.k)) < min(p.k, p.num_permitted)
            ]
            if not short:
                break
            for i in short:
                beams = min(2 * prepared[i].beams, widest)
                prepared[i] = dataclasses.replace(prepared[i], beams=beams, want=beams)
            found.update(self._search(prepared, short))
        fresh = [dataclasses.replace(p, view=p.fresh_view, want=p.fresh_slots) for p in prepared]
        found_fresh = self._search(fresh, [i for i, p in enumerate(prepared) if p.fresh_view is not None])
        found_fresh.update({i: p.fresh_ranked for i, p in enumerate(prepared) if p.fresh_ranked is not None})
        return [self._result(p, found.get(i), found_fresh.get(i)) for i, p in enumerate(prepared)]

    def _search(self, prepared: list[PreparedRequest], which: Iterable[int]) -> dict[int, Recommendations]:
        """Beam search for ``prepared[i]``, i in ``which``, one backend call per beam width and
        LoRA (None: the base weights first)."""
        which = [i for i in which if prepared[i].num_permitted > 0]
        found: dict[int, Recommendations] = {}
        groups = sorted({(prepared[i].beams, prepared[i].lora or "") for i in which})
        for beams, lora in groups:
            todo = [i for i in which if prepared[i].beams == beams and (prepared[i].lora or "") == lora]
            want = max(prepared[i].want for i in todo)
            recs = self.backend.search(
                [prepared[i].prompt for i in todo],
                want,
                beams,
                [prepared[i].view for i in todo],
                lora=lora or None,
            )
            found.update(zip(todo, recs))
            # the bare model's prompts: its ranking is the beam fused with its title head
            bare = [i for i in todo if not prepared[i].soft_prompt] if self.title_weight > 0 else []
            heads = (
                self.backend.titles(
                    [prepared[i].prompt for i in bare], beams, [prepared[i].view for i in bare]
                )
                if bare
                else []
            )
            for i, head in zip(bare, heads):
                found[i] = fuse_title_head(found[i], head, self.title_weight, self.ids.codes)
        return found

    def failure(self) -> str | None:
        """None while the engine can answer; else why not (closed, or its process died)."""
        return self.backend.failure()

    def ensure_alive(self, cause: BaseException | None = None) -> None:
        """Raise ``EngineUnavailable`` naming the dead engine instead of hanging or answering wrongly."""
        reason = self.failure()
        if reason is not None:
            raise EngineUnavailable(f"{self.config.engine.backend} engine unavailable: {reason}") from cause

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Recommender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _dataset(self, config: ServingConfig) -> str | None:
        """The dataset sub-folder: the configured one, else the model's own when data_dir holds it."""
        if config.catalog.dataset is not None:
            return config.catalog.dataset
        name = (self.manifest.get("data") or {}).get("dataset")
        return name if name and Path(config.catalog.data_dir, str(name)).is_dir() else None

    def _result(
        self, p: PreparedRequest, rec: Recommendations | None, fresh: Recommendations | None = None
    ) -> RecommendationList:
        rows, sids, scores = (rec.rows, rec.sids, rec.scores) if rec is not None else ([], [], [])
        found = min(len(rows), p.want)
        reason = p.reason
        if p.fuse_order is not None:  # the beam's titles fused with the canvas's own ranking
            fused = fusion_scores(list(rows[:found]), list(p.fuse_order), self.fusion_k, self.fusion_weight)
            rows, scores = list(fused), list(fused.values())
            sids, found = [self.ids.codes[r] for r in rows], len(rows)
        if p.cap is not None:  # the diversity cap picks from every title the beam found
            keep = p.cap.select(rows[:found], p.k)
            rows, sids, scores = ([x[i] for i in keep] for x in (rows, sids, scores))
            if len(rows) < min(p.k, p.num_permitted):
                reason = ((reason + "; ") if reason else "") + (
                    f"the diversity rule (at most {p.cap.max_per_group} per {p.cap.label}) kept "
                    f"{len(rows)} of the {found} titles the beam search found (beam width {p.beams}, "
                    f"the widest this server runs: ServingConfig.decoding.max_k * diversity_widen); the cap picks "
                    f"from the beam's titles only"
                )
        fresh_rows: set[int] = set()
        if fresh is not None and fresh.rows:  # the slots kept for fresh titles, the model's best ones
            of = {r: (s, x) for r, s, x in zip(rows, sids, scores)}
            of.update({r: (s, x) for r, s, x in zip(fresh.rows, fresh.sids, fresh.scores)})
            fresh_rows = set(fresh.rows)
            rows = with_fresh(list(rows[: p.k]), list(fresh.rows), p.k, p.fresh_slots / p.k, fresh_rows)
            sids, scores = [of[r][0] for r in rows], [of[r][1] for r in rows]
        items: list[Recommendation] = []
        layout = self.ids.layout
        for row, sid, score in zip(rows[: p.k], sids, scores):
            item = self.ids.item_ids[row]
            items.append(
                Recommendation(
                    item_id=item,
                    title=self.ids.title(item),
                    score=float(score),
                    semantic_id=layout.sid_string(sid),
                    fresh=row in fresh_rows,
                )
            )
        if reason is None and len(items) < p.k:  # cannot happen with beam >= k; say so if it does
            reason = f"beam search returned {len(items)} of {p.k} titles"
        return RecommendationList(
            items=tuple(items),
            k=p.k,
            cold_start=p.history_used == 0 and p.context is None,
            history_used=p.history_used,
            history_dropped=p.history_dropped,
            num_permitted=p.num_permitted,
            reason=reason,
            prompt_tokens=len(p.prompt),
            rules_applied=p.rules_applied,
            canvas=p.canvas,
            soft_prompt=p.soft_prompt,
            context=p.context,
            warnings=p.warnings,
            candidates=p.candidates,
            fused_with=p.fused_with,
        )


__all__ = [
    "PreparedRequest",
    "Recommendation",
    "RecommendationList",
    "RecommendationRequest",
    "Recommender",
    "RequestError",
    "ServingConfig",
]
