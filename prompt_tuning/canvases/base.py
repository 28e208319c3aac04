"""What every canvas is made of: its spec (``CanvasSpec``), its examples, and the shared helpers.

A canvas file (``home.py``, ``search.py``, ...) defines one ``CanvasSpec``: the spec says everything
training, evaluation and serving ask of the canvas, so none of them names a canvas. The example
builders below (next-title positions, leave-one-out test targets, seeded sampling) are the pieces a
canvas's ``build_examples`` is usually made of.
"""

from __future__ import annotations

import hashlib
import keyword
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from core.checks import one_of
from core.data import RecData
from core.sequences import Split
from gen_fm.dataset import to_sid_rows
from gen_fm.tokenizer import CANVASES as CANVAS_TOKENS
from gen_fm.tokenizer import PromptEncoder
from prompt_tuning.candidates import CandidateIndex, Candidates
from prompt_tuning.canvases.registry import get_canvas
from prompt_tuning.config import PromptTuningStageConfig
from semantic_ids.builder import load_quantizer
from semantic_ids.embeddings import TextEncoder
from semantic_ids.ids import SemanticIDs

# A request's own fields (``serving.requests.RecommendationRequest``, ``Recommender.recommend``
# and the HTTP bodies of ``serving.api``; the serving tests hold them to this list): a context field
# takes any other identifier, and the request gains that field.
REQUEST_FIELDS = frozenset(
    ("history", "canvas", "k", "exclude", "allow", "user_id", "exclude_history", "rules", "fresh_share")
    + ("context", "self")  # the request's context mapping; recommend's own first argument
    + ("model", "prompt", "n", "user", "stream")  # the completions body's
)
# "text": a query or theme, through ``QueryEncoder``; "title": a title id, as its semantic-ID tokens.
CONTEXT_KINDS = ("text", "title")
# A request served by the canvas's soft prompt without its context: refused, or the history's last
# title taken as the context (a "because you watched X" row).
MISSING_CONTEXT = ("error", "last_title")
ADAPTERS = ("soft_prompt", "lora", "none")  # CanvasSpec.adapter
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # goes into token names <v_{name}_i> and model ids


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def hash_fraction(*parts: object) -> float:
    """A stable number in [0, 1) per key: seeded held-out splits that do not depend on row order."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class QueryEncoder:
    """Turns text (a search query, a collection theme) into prompt context tokens.

    Modes (``PromptTuningStageConfig.query_mode``):

    - ``anchors``: the full IDs of the ``num_anchors`` titles that best match the text: titles whose
      name contains it first (lexical), then by cosine of all-MiniLM-L6-v2 embeddings (semantic).
    - ``quantized``: the text's sentence embedding placed in the text block of the fused title
      embedding (other modalities zero) and encoded by the ID artifact's trained quantizer: one code
      per quantizer level, a point in the titles' own code space.

    Both read only the ID artifact (quantizer, embedder state, fused title embeddings), so a model
    folder's copy of it is all serving needs.
    """

    def __init__(
        self, ids_dir: str | Path, mode: str = "anchors", num_anchors: int = 3, text_encoder=None
    ) -> None:
        from safetensors.numpy import load_file

        if mode not in ("anchors", "quantized"):
            raise ValueError(f"unknown query mode {mode!r}")
        self.ids, self.quantizer, _, self.id_config = load_quantizer(ids_dir)
        if self.id_config.modalities.text_weight <= 0:
            raise ValueError(
                f"the ID artifact {ids_dir} has no text modality: text queries cannot be "
                f"placed among its titles"
            )
        self.mode, self.num_anchors = mode, num_anchors
        # `text_encoder`: anything with .encode(list[str]) -> (n, d) array, e.g. serving's in-memory
        # encoder (TextEncoder's disk cache suits a catalog, not a stream of queries)
        self.text = text_encoder or TextEncoder(
            self.id_config.text.text_model, self.id_config.text.text_batch_size
        )
        self.fused = load_file(str(Path(ids_dir) / "embeddings.safetensors"))["fused"]  # (N, D)
        self.layout = self.ids.layout
        self.sid_tokens = self.layout.sids_to_ids(self.ids.codes)  # (N, L)
        self.titles_lower = [(t or "").lower() for t in (self.ids.titles or [""] * self.ids.num_items)]
        self._text_dim: int | None = None

    def _embed(self, texts: list[str]) -> np.ndarray:
        vecs = _unit(self.text.encode(texts).astype(np.float32))  # (Q, d)
        self._text_dim = vecs.shape[1]
        return vecs

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Context tokens per text (code tokens of the model's layout)."""
        texts = [str(t).strip() for t in texts]
        if any(not t for t in texts):
            raise ValueError("a query or theme is empty")
        q = self._embed(texts)  # (Q, d)
        d = q.shape[1]
        if self.mode == "quantized":
            x = np.zeros((len(texts), self.fused.shape[1]), dtype=np.float32)  # (Q, D)
            x[:, :d] = q * np.float32(
                np.sqrt(self.id_config.modalities.text_weight)
            )  # text block comes first
            codes = self.quantizer.encode(x).codes[:, : self.id_config.codes.num_levels]  # (Q, levels)
            offsets = np.asarray(self.layout.offsets[: codes.shape[1]], dtype=np.int64)
            return (codes.astype(np.int64) + offsets).tolist()
        titles = _unit(self.fused[:, :d])  # (N, d): the text block of every title
        sims = titles @ q.T  # (N, Q)
        out = []
        for j, text in enumerate(texts):
            order = np.argsort(-sims[:, j], kind="stable")
            needle = text.lower()
            lexical = [i for i in order if needle in self.titles_lower[i]][: self.num_anchors]
            rest = [i for i in order[: self.num_anchors + len(lexical)] if i not in set(lexical)]
            rows = (lexical + rest)[: self.num_anchors]
            out.append(self.sid_tokens[rows].reshape(-1).tolist())
        return out


@dataclass
class CanvasExample:
    """One request of a canvas and the title that answers it (rows are ID-artifact rows)."""

    history: np.ndarray  # (h,) oldest first, capped; empty for anonymous requests
    target: int
    user: str | None = None
    context: list[int] | None = None  # tokens after <sep>
    text: str | None = None  # query or theme behind the context (search, collection)
    kind: str = ""  # "next", "tag", "word", "pair", "theme"
    source: int | None = None  # t2t source title
    # Rows judged about the query beyond its words, for relevance figures only, never an input
    # (search tags: the titles any member tagged with it, held-out pairs included).
    relevant: frozenset[int] = frozenset()

    def prompt(self, encoder: PromptEncoder, canvas: str, history: bool = True) -> list[int]:
        """The prompt of ``canvas`` (a registered name: its spec says which canvas token)."""
        hist = self.history if history else np.zeros(0, dtype=np.int64)
        return encoder.encode(
            hist,
            canvas=get_canvas(canvas).token,
            user_id=self.user if history else None,
            context=self.context,
        )


@dataclass
class CanvasData:
    canvas: str
    train: list[CanvasExample]
    test: list[CanvasExample]
    info: dict = field(default_factory=dict)  # counts per kind, sources

    def training_pairs(self, encoder: PromptEncoder) -> list[tuple[list[int], list[int]]]:
        """(prompt, target code tokens) as ``prompt_tuning.adapter.train_adapter`` takes them."""
        return [
            (ex.prompt(encoder, self.canvas), encoder.sid_tokens[ex.target].tolist()) for ex in self.train
        ]


@dataclass(frozen=True)
class CanvasSource:
    """What a canvas's examples are built from (``CanvasSpec.build_examples`` takes it)."""

    data: RecData
    split: Split  # the foundation model's own leave-one-out split
    ids: SemanticIDs
    encoder: PromptEncoder
    config: "PromptTuningStageConfig"
    sid_rows: np.ndarray  # (catalog rows,) ID-artifact row of each catalog row, -1 if none
    queries: QueryEncoder | None = None  # text canvases: turns a query or theme into tokens


class Examples(NamedTuple):
    """A canvas's examples before the shared seeded sampling (``build_canvas_data`` does that)."""

    train: list[CanvasExample]
    test: list[CanvasExample]
    info: dict  # the canvas's own counts (e.g. themes); sizes and kinds are added for every canvas


class ExampleContext(NamedTuple):
    """A demonstration request of a canvas for one member (the quickstart's printed rows)."""

    value: str | None  # the context field's value; None: the request carries none
    label: str  # how the row is introduced, e.g. "search 'pixar'"


@dataclass(frozen=True)
class CanvasContext:
    """The request field a canvas reads as its context, and how its value enters the prompt."""

    # Request field whose value becomes the context: any identifier outside REQUEST_FIELDS; serving
    # takes it as a keyword (``recommend(..., query=...)``) and as a body field.
    field: str
    # How that value becomes tokens: "text" (QueryEncoder) or "title" (the title's ID tokens).
    kind: str
    # What that field holds, in words: its description in the HTTP schema ("the query text").
    description: str | None = None
    # Text contexts are lower-cased before encoding, as the examples were (search).
    lowercase: bool = False
    # A soft-prompt request without the context: "error", or "last_title" (title contexts only).
    missing: str = "error"
    # A title context joins the prompt as the history's newest title (the model is asked its own
    # question, what comes next) instead of following <sep> (t2t).
    in_history: bool = False

    def __post_init__(self) -> None:
        name = self.field
        if (
            not isinstance(name, str)
            or not name.isidentifier()
            or keyword.iskeyword(name)
            or name.startswith("_")
        ):
            raise ValueError(
                f"a context field names a request field, a Python identifier that is not a "
                f"keyword and does not start with '_'; got {name!r}"
            )
        if name in REQUEST_FIELDS:
            raise ValueError(
                f"context field {name!r} is a request's own field; choose a name other than {sorted(REQUEST_FIELDS)}"
            )
        one_of(CONTEXT_KINDS, kind=self.kind)
        one_of(MISSING_CONTEXT, missing=self.missing)
        if self.missing == "last_title" and self.kind != "title":
            raise ValueError(f"context {name!r}: only a title context falls back to the last title")
        if self.lowercase and self.kind != "text":
            raise ValueError(f"context {name!r}: lowercase applies to text contexts")
        if self.in_history and self.kind != "title":
            raise ValueError(f"context {name!r}: in_history needs a title context")


@dataclass(frozen=True, kw_only=True)
class CanvasSpec:
    """One canvas: everything training, evaluation, serving and the quickstart ask of it.

    Registered with ``prompt_tuning.canvases.register``; looked up by name everywhere else
    (``get_canvas``). Adapters
    (soft prompts), served models (``sidrec-<name>``) and configs are keyed by ``name``; the prompt
    carries the foundation model's canvas token ``token``, so a canvas added after pretraining reuses
    one (e.g. "home") and is told apart by its own soft prompt.
    """

    name: str
    # The foundation model's canvas token its prompts carry (one of gen_fm.tokenizer.CANVASES).
    token: str
    # Training and held-out examples from the model's own data (see ``CanvasSource``).
    build_examples: Callable[[CanvasSource], Examples]
    # The request field read as the context after <sep>, and how it enters the prompt; None: the
    # canvas takes no context.
    context: CanvasContext | None = None
    # A prompt with a context still holds the member's history and member token.
    keeps_history: bool = True
    # The answer fuses the model's ranking with the candidate set's own order (``fuse_ranks``, with
    # ``CandidateConfig.fusion_k`` and ``fusion_weight``): for sets whose order is a ranking of its
    # own (a t2t source's co-engagement counts).
    fuse_candidate_order: bool = False
    # The answer fuses the model's ranking, over the whole catalog, with the titles most co-engaged
    # with the history's newest titles (``CoEngagement.of_recent`` over the model folder's
    # ``gen_fm.co_engagement`` table; the same constants): item-to-item counts and the model are
    # strong on different members, so together they beat both (home).
    fuse_co_engaged: bool = False
    # Text contexts are lower-cased before encoding, as the examples were (search).
    lowercase: bool = False
    # A soft-prompt request without the context: "error", or "last_title" (title contexts only).
    missing_context: str = "error"
    # The titles the context makes eligible: (CandidateIndex, value) -> Candidates, the value being
    # the raw text of a text context or the ID-artifact row of a title context; None: all titles.
    candidates: Callable[["CandidateIndex", Any], "Candidates"] | None = None
    # Example kinds also decoded without the member's history, for ``metrics``' ranked_anonymous.
    anonymous_kinds: tuple[str, ...] = ()
    # The canvas's own held-out figures: (data, ranked, *, titles_lower, row_categories, k,
    # ranked_anonymous) -> {name: value}, added after recall/NDCG (``prompt_tuning.evaluate``).
    metrics: Callable[..., dict[str, Any]] | None = None
    # A demonstration request for a member: (data, ids, history_rows, user) -> ExampleContext, or
    # None to skip that member; unset: no context, labelled with the name.
    example_context: Callable[..., ExampleContext | None] | None = None
    # Held-out queries that are member tags: (PromptTuningStageConfig, tag, item_id) -> True where a
    # held-out example asks that tag for that title. The candidate index a canvas is trained and
    # judged inside (``prompt_tuning.train.candidate_index_for``) leaves such pairs out of its
    # titles' tags, or the index would hold the answer to the question (search).
    holds_out_tag: Callable[[Any, str, str], bool] | None = None
    # How its adapter is trained unless the config says (``PromptTuningStageConfig.method``):
    # "soft_prompt" (virtual tokens), "lora" (where a soft prompt cannot learn to read the context)
    # or "none" (served by the frozen model, where no adapter beats it beyond noise: home, t2t).
    adapter: str = "soft_prompt"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"a canvas name is letters, digits, '_', '.', '-', got {self.name!r}")
        if self.token not in CANVAS_TOKENS:
            raise ValueError(
                f"canvas {self.name!r}: token {self.token!r} is not a canvas token of the "
                f"foundation model; choose one of {CANVAS_TOKENS}"
            )
        if self.context is not None and not isinstance(self.context, CanvasContext):
            raise TypeError(f"canvas {self.name!r}: context must be a CanvasContext, got {self.context!r}")
        if self.candidates is not None and self.context is None:
            raise ValueError(f"canvas {self.name!r}: candidates come from a context; set context")
        if self.adapter not in ADAPTERS:
            raise ValueError(f"canvas {self.name!r}: adapter must be one of {ADAPTERS}, got {self.adapter!r}")
        if self.fuse_candidate_order and self.candidates is None:
            raise ValueError(f"canvas {self.name!r}: fuse_candidate_order needs candidates")
        if self.fuse_candidate_order and self.fuse_co_engaged:
            raise ValueError(
                f"canvas {self.name!r}: fuse with the candidate order or with the newest "
                f"title's co-engaged titles, not both"
            )
        if not self.keeps_history and self.context is None:
            raise ValueError(f"canvas {self.name!r}: keeps_history=False needs a context to prompt with")

    @property
    def context_field(self) -> str | None:
        """The request field read as the context (None: no context)."""
        return None if self.context is None else self.context.field

    @property
    def context_kind(self) -> str | None:
        """The context's kind, "text" or "title" (None: no context)."""
        return None if self.context is None else self.context.kind

    @property
    def title_in_history(self) -> bool:
        """The title context joins the prompt as the history's newest title."""
        return self.context is not None and self.context.in_history

    @property
    def requires_context(self) -> bool:
        """Soft-prompt requests must carry the context field (no fallback)."""
        return self.context is not None and self.context.missing == "error"

    def normalise(self, text: str) -> str:
        """A request's text as the canvas's examples spelt it."""
        return text.strip().lower() if self.context is not None and self.context.lowercase else text.strip()

    def example(
        self, data: RecData, ids: SemanticIDs, history_rows: list[int], user: str
    ) -> ExampleContext | None:
        if self.example_context is None:
            return ExampleContext(None, self.name)
        return self.example_context(data, ids, history_rows, user)


# ---------------------------------------------------------------------------- example builders
def sample_examples(examples: list, n: int | None, seed: int) -> list:
    """A seeded sample of ``n`` (order kept); all of them when ``n`` is None or not smaller."""
    if n is None or len(examples) <= n:
        return examples
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False))
    return [examples[i] for i in keep]


def next_title_examples(split: Split, sid_rows: np.ndarray, max_history: int) -> list[CanvasExample]:
    """Every (history, next title) position inside members' training events."""
    out = []
    for u in range(len(split.sequences)):
        items = to_sid_rows(split.train_items(u), sid_rows)
        user = split.sequences.user_ids[u]
        for j in range(1, len(items)):
            out.append(CanvasExample(items[max(0, j - max_history) : j], int(items[j]), user, kind="next"))
    return out


def held_out_examples(split: Split, sid_rows: np.ndarray, part: str = "test") -> list[CanvasExample]:
    """Each member's leave-one-out test target after their history (never trained on); `part`
    "valid": the validation target instead."""
    ex = split.examples(part)
    return [
        CanvasExample(
            to_sid_rows(h, sid_rows),
            int(to_sid_rows([t], sid_rows)[0]),
            split.sequences.user_ids[u],
            kind="next",
        )
        for u, h, t in zip(ex.users, ex.histories, ex.targets)
    ]


def theme_of(categories: Sequence[Sequence[str]], min_titles: int) -> list[str | None]:
    """Per title: its rarest category with >= `min_titles` titles and on at most half the catalog
    (so "Beauty", on every Amazon Beauty title, is never a theme); None if it has none."""
    counts = Counter(c for cats in categories for c in set(cats))
    half = len(categories) / 2
    out = []
    for cats in categories:
        ok = [c for c in set(cats) if min_titles <= counts[c] <= half and "no genres" not in c]
        out.append(min(ok, key=lambda c: (counts[c], c)) if ok else None)
    return out
