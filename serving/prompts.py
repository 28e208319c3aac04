"""Per-canvas prompts: the canvas's adapter (soft-prompt virtual tokens, or the LoRA that decodes it)
and the context the canvas takes, as its spec in the registry (``prompt_tuning.canvases``) says.

A folder exported by ``prompt_tuning.export.export_adapters`` holds ``adapters.json``: a canvas with a
soft prompt starts its prompts with its virtual tokens; one with a LoRA keeps the plain prompt and
``CanvasPrompt.lora`` names the adapter the engine applies; in a plain folder a canvas is its token.
- A field belongs to the canvases that read it: ``query`` on the home canvas is an error, not ignored.
- A canvas served by an adapter needs its context (the adapter never saw a prompt without one), but
  t2t without ``source`` takes the history's last title and says so in the warnings (no history: error).
- A canvas without an adapter uses a context when one is given, else the history-only prompt.
- A t2t source joins the history as its newest title (an earlier occurrence moves there); the answer
  is chosen inside its neighbourhood and never holds the source itself.
- Text goes through ``QueryEncoder`` with the adapter's ``query_mode`` and ``num_anchors``; every mode
  shares one sentence encoder that keeps recent texts in memory (``TextEncoder``'s disk cache suits a
  catalog, not a stream of queries)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gen_fm.co_engagement import RECENT_TITLES
from gen_fm.model import IDS_SUBDIR, GenFM
from prompt_tuning.candidates import CandidateIndex
from prompt_tuning.canvases import CanvasSpec, QueryEncoder, canvas_names, context_fields, get_canvas
from prompt_tuning.config import PromptTuningStageConfig
from prompt_tuning.export import ADAPTERS_FILE, adapter_configs, lora_adapters, virtual_token_ids
from semantic_ids.config import TextOptions, recorded_config, text_weight_of
from semantic_ids.embeddings import TextEncoder

_TEXT_FILES = ("quantizer.safetensors", "embedder.json", "embeddings.safetensors")


class RequestError(ValueError):
    """A request value that cannot be served; ``param`` names the field (for the HTTP error body)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class CanvasPrompt:
    """The prompt of one request and how it was made."""

    prompt: list[int]  # token ids, virtual tokens first when the canvas has a soft prompt
    history_used: int  # history titles in the prompt
    history_dropped: int  # older titles left out (max_history); 0 when the prompt holds no history
    context: str | None  # the context field the prompt holds ("query", "source", ...) or None
    soft_prompt: bool  # the canvas's trained adapter serves it (soft prompt tokens or its LoRA)
    source_row: int | None  # t2t source title: never recommended
    warnings: tuple[str, ...] = ()
    # the titles the context makes eligible (search, collection; ``prompt_tuning.candidates``)
    candidates: Any = None
    lora: str | None = None  # the canvas whose LoRA decodes this prompt, or None
    # the ranking the model's beam is fused with (ID rows, best first), or None: the candidate set's
    # own order (``CanvasSpec.fuse_candidate_order``), or the titles most co-engaged with the
    # prompt's newest titles (``CanvasSpec.fuse_co_engaged``, ``CoEngagement.of_recent``)
    fuse_order: np.ndarray | list[int] | None = None
    fused_with: str | None = None  # what fuse_order is, in words


class _MemoryTextEncoder:
    """Sentence embeddings of request texts, the most recent ``capacity`` texts kept in memory."""

    def __init__(self, model_path: str, batch_size: int = 32, capacity: int = 4096) -> None:
        self.model_path, self.batch_size, self.capacity = model_path, batch_size, capacity
        self._model: Any = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(self.model_path, device="cpu")
            vecs = self._model.encode(
                missing,
                batch_size=self.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=False,
            )  # (M, d)
            for t, v in zip(missing, vecs.astype(np.float32)):
                self._cache[t] = v
        for t in texts:
            self._cache.move_to_end(t)
        out = np.stack([self._cache[t] for t in texts])  # (Q, d)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return out


class CanvasPrompts:
    """Builds every request's prompt for one model folder (see the module doc)."""

    def __init__(self, gen: GenFM, max_history: int, candidate_config: Any = None) -> None:
        self.model_dir = Path(gen.path)
        self.ids = gen.ids
        self.encoder = gen.prompt_encoder()
        self.max_history = max_history
        # the model's positions: a prompt plus one semantic ID must fit
        self.max_positions = int(gen.model.config.max_position_embeddings)
        self.virtual: dict[str, list[int]] = {}  # canvas -> virtual token ids of its soft prompt
        self.configs: dict[str, Any] = {}  # canvas -> PromptTuningStageConfig of its adapter
        self.loras: dict[str, tuple[Path, int]] = {}  # canvas -> (LoRA folder, rank)
        if (self.model_dir / ADAPTERS_FILE).is_file():
            self.virtual = virtual_token_ids(gen)
            self.loras = lora_adapters(gen)
            unknown = sorted((set(self.virtual) | set(self.loras)) - set(canvas_names()))
            if unknown:
                raise ValueError(
                    f"{self.model_dir} holds soft prompts of canvases {unknown} that are not "
                    f"registered here ({list(canvas_names())}): register their CanvasSpec "
                    f"(prompt_tuning.canvases.register) before loading the folder"
                )
            self.configs = adapter_configs(gen)
        self.ids_dir = self.model_dir / IDS_SUBDIR  # the folder's copy of the ID artifact
        self.text_problem = self._text_problem()  # why text contexts cannot be encoded, or None
        needs_text = sorted(c for c in self.adapted if get_canvas(c).context_kind == "text")
        if needs_text and self.text_problem:
            raise ValueError(
                f"{self.model_dir}: the {needs_text} soft prompt(s) take text, but {self.text_problem}"
            )
        self._queries: dict[tuple[str, int], Any] = {}
        self._text: _MemoryTextEncoder | None = None
        # prompt_tuning.candidate_config.CandidateConfig, or None: contexts do not restrict the titles
        self.candidate_config = candidate_config
        self._candidates: Any = None  # CandidateIndex, built on first use
        # t2t neighbourhoods and the home row's fusion (None: content only, the model alone)
        self._co_engagement = gen.co_engagement()
        self._title_tags = gen.title_tags()  # search matches what members wrote about titles

    # ------------------------------------------------------------------ public
    def num_virtual_tokens(self, canvas: str) -> int:
        return len(self.virtual.get(canvas, ()))

    @property
    def adapted(self) -> list[str]:
        """Canvases with a trained adapter in this folder (soft prompt or LoRA)."""
        return [*self.virtual, *(c for c in self.loras if c not in self.virtual)]

    def context_required(self, canvas: str) -> bool:
        """Whether requests of ``canvas`` must carry its context field (t2t falls back instead)."""
        return canvas in self.adapted and get_canvas(canvas).requires_context

    def warm_up(self) -> None:
        """Build the query encoders the soft prompts need and load the sentence encoder now
        (a server calls this at start-up, so the first search request is not the slow one)."""
        for spec in map(get_canvas, self.adapted):
            if spec.context_kind == "text":
                self._text_tokens(spec, "warm up")
        if self.candidate_config is not None and not self.text_problem:
            self.candidate_index()

    def build(
        self,
        canvas: str,
        history: Sequence[int],
        user_id: str | None,
        context: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> CanvasPrompt:
        """The prompt of one request; ``history`` holds ID-map rows, oldest first; the request's
        contexts by field name, in ``context`` or as keywords (``query="paris"``; None: not given)."""
        spec = get_canvas(canvas)
        given = {**(context or {}), **fields}
        for field in given:  # a field no canvas reads is refused even when None (a misspelt name)
            if field != spec.context_field and (given[field] is not None or field not in context_fields()):
                raise RequestError(_misplaced(field, canvas), str(field))
        given = {f: v for f, v in given.items() if v is not None}
        for field, value in given.items():
            if not isinstance(value, str) or not value.strip():
                raise RequestError(f"{field} must be a non-empty string, got {value!r}", field)
        adapter = canvas in self.virtual or canvas in self.loras
        field = spec.context_field
        value = given.get(field) if field else None
        warnings: list[str] = []
        tokens, rows, member, source_row, candidates = None, list(history), user_id, None, None
        if value is None and field is not None and spec.context.missing == "last_title" and (rows or adapter):
            if not rows:
                raise RequestError(
                    f"the {canvas} canvas needs a source title ({field}), or a history "
                    f"whose last title is taken as the source",
                    field,
                )
            value = self.ids.item_ids[rows[-1]]
            warnings.append(f"no {field} given: the last history title {value!r} is the source")
        if value is None and adapter and field is not None:
            raise RequestError(
                f"the {canvas} canvas needs a {field}: its soft prompt was trained on prompts that carry one",
                field,
            )
        if value is not None:
            if spec.context_kind == "title":
                if value not in self.ids:
                    raise RequestError(f"unknown {field} title id {value!r}", field)
                source_row = self.ids.index_of(value)
                if spec.title_in_history:  # the source is the newest title of the history
                    rows = (rows if spec.keeps_history else []) + [source_row]
                    rows = [r for i, r in enumerate(rows) if r != source_row or i == len(rows) - 1]
                else:
                    tokens = self.encoder.sid_tokens[source_row].tolist()
                if self.candidate_config is not None and spec.candidates is not None:
                    if self.text_problem:  # no content neighbours to build the set from
                        warnings.append(
                            f"the {canvas} canvas decodes over the whole catalog: {self.text_problem}"
                        )
                    else:
                        candidates = spec.candidates(self.candidate_index(), source_row)
            else:
                tokens = self._text_tokens(spec, spec.normalise(value))
                if self.candidate_config is not None and spec.candidates is not None:
                    candidates = spec.candidates(self.candidate_index(), value)
            if not spec.keeps_history and not spec.title_in_history:  # the context alone
                rows, member = [], None
        kept = rows[-self.max_history :] if rows else []
        prompt = self.encoder.encode(
            kept, canvas=spec.token, user_id=None if member is None else str(member), context=tokens
        )
        if canvas in self.virtual:
            prompt = self.virtual[canvas] + prompt
        longest = len(prompt) + self.ids.sid_length
        if longest > self.max_positions:
            raise RequestError(
                f"the prompt ({len(prompt)} tokens: soft prompt, history and context) "
                f"plus one semantic ID exceeds the model's {self.max_positions} positions",
                field,
            )
        fuse_order, fused_with = None, None
        if spec.fuse_candidate_order and candidates is not None:
            fuse_order, fused_with = candidates.rows, "the candidate set's own order"
        elif spec.fuse_co_engaged and kept and self._co_engagement is not None:
            # the request's exclude_history and rules filter this order in ``Recommender.prepare``
            fuse_order = self._co_engagement.of_recent(kept, exclude_history=False)
            newest = self.ids.item_ids[kept[-1]]
            before = min(len(kept), RECENT_TITLES) - 1
            fused_with = f"the titles most often paired with {self.ids.title(newest) or newest!r}" + (
                f" and the {before} title(s) before it" if before else ""
            )
        return CanvasPrompt(
            prompt=prompt,
            history_used=len(kept),
            history_dropped=len(rows) - len(kept),
            context=None if value is None else field,
            soft_prompt=adapter,
            source_row=source_row,
            warnings=tuple(warnings),
            candidates=candidates,
            lora=canvas if canvas in self.loras else None,
            fuse_order=fuse_order,
            fused_with=fused_with,
        )

    def candidate_index(self) -> Any:
        """The ``CandidateIndex`` over this folder's ID artifact (built on first use)."""
        if self._candidates is None:
            self._candidates = CandidateIndex(
                self.ids_dir,
                self._sentence_encoder(),
                self.candidate_config,
                self._co_engagement,
                tags=self._title_tags,
            )
        return self._candidates

    def _sentence_encoder(self) -> _MemoryTextEncoder:
        if self._text is None:  # one sentence encoder for every use, no disk cache
            recorded = recorded_config(self.ids.manifest)
            text = recorded.text if recorded is not None else TextOptions()
            spec = TextEncoder(text.text_model, text.text_batch_size)
            self._text = _MemoryTextEncoder(spec.model_path, spec.batch_size)
        return self._text

    # ------------------------------------------------------------------ helpers
    def _text_problem(self) -> str | None:
        missing = [n for n in _TEXT_FILES if not (self.ids_dir / n).is_file()]
        if missing:
            return f"its ID artifact has no {', '.join(missing)} (built without a trained quantizer)"
        if not text_weight_of(self.ids.manifest) > 0:
            return "its ID artifact was built without the text modality"
        return None

    def _text_tokens(self, spec: CanvasSpec, text: str) -> list[int]:
        """Code tokens of a query or theme, encoded as the canvas's adapter was trained."""
        canvas, field = spec.name, spec.context_field
        if self.text_problem:
            raise RequestError(f"this model cannot take a {field}: {self.text_problem}", field)
        config = self.configs.get(canvas) or PromptTuningStageConfig.create(canvas=canvas)
        key = (config.canvas_data.query_mode, config.canvas_data.num_anchors)
        queries = self._queries.get(key)
        if queries is None:
            queries = QueryEncoder(self.ids_dir, *key, text_encoder=self._sentence_encoder())
            self._queries[key] = queries
        return queries.encode([text])[0]


def _misplaced(field: Any, canvas: str) -> str:
    """Why ``field`` has no place on ``canvas``: it belongs to other canvases (named), or to none."""
    fields = context_fields()
    names = fields.get(field)
    if names:
        readers = f"the {names[0]} canvas" if len(names) == 1 else f"the {', '.join(names)} canvases"
        return f"{field} applies to {readers} only, not {canvas}"
    known = "; ".join(f"{f} ({', '.join(c)})" for f, c in fields.items()) or "none"
    return f"{field!r} is the context field of no registered canvas; the context fields are: {known}"


__all__ = ["CanvasPrompt", "CanvasPrompts", "RequestError"]
