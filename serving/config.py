"""The one config of the serving stage, grouped by concern.

``ServingConfig`` holds the model folder and one small frozen dataclass per concern: the engine
(``engine``: backend, dtype, device, sizing), the decoding (``decoding``: beam width, largest k,
history, candidate sets, title head), the catalog whose attributes back the rules (``catalog``),
the candidate-set settings (``candidates``: overrides of ``prompt_tuning.candidate_config.CandidateConfig``,
so every candidate setting is declared once, there) and the fresh-title slots (``fresh``).

Every field name is unique across the concerns, so a name alone also finds its field
(``ServingConfig.create(dir, num_beams=20)``, ``sidrec serve --set num_beams=20``), as does its
dotted path (``--set decoding.num_beams=20``, ``--set candidates.fusion_k=5``); the flat form a
config had before the grouping reads back through ``ServingConfig.from_dict``.
Everything the model folder already knows (layout, ID map, history length, fusion constants) is
read from the folder, never declared here; ``max_history`` may only shorten the trained one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from core.checks import at_least, one_of
from core.overrides import build_config, describe, overrides_of
from prompt_tuning.candidate_config import CandidateConfig
from serving.backends.registry import DEFAULT_BACKEND, backend_names

DTYPES = ("float32", "bfloat16", "float16", "auto")
FRESH_SOURCES = ("content", "model")
# CandidateConfig fields a model folder chooses on validation (``fusion/fusion.json``): left out of
# ``ServingConfig.candidates``, they are the folder's, else CandidateConfig's defaults.
FOLDER_FUSION = ("fusion_k", "fusion_weight")
# vllm.LLM arguments the beam loop depends on: set from the fields below, never through vllm_kwargs.
_RESERVED_VLLM_KWARGS = frozenset(
    {
        "model",
        "tokenizer",
        "dtype",
        "block_size",
        "enable_prefix_caching",
        "logprobs_mode",
        "max_logprobs",
        "enforce_eager",
        "kv_cache_memory_bytes",
        "gpu_memory_utilization",
    }
)


def check_fresh_share(share: float) -> None:
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ValueError(f"fresh_share must be a number in [0, 1], got {share!r}")


@dataclass(frozen=True)
class Engine:
    """What runs the model, and how it is sized."""

    # Decoding backend, a name registered in serving.backends.registry: "vllm" (vllm.LLM + our
    # trie-constrained beam loop), "transformers" (gen_fm.decode, the reference implementation; no
    # vLLM needed), or one added with serving.backends.registry.register_backend.
    backend: str = DEFAULT_BACKEND
    # Weights dtype. float32 reproduces the transformers reference up to float rounding; bfloat16 is
    # faster but can swap near-tied titles. "auto" = vLLM's choice (bf16 for fp32 weights).
    dtype: str = "float32"
    # transformers backend only: torch device ("cpu", "cuda", "cuda:1", ...). vLLM picks its platform.
    device: str = "cpu"
    # Requests decoded together (one engine call per ID position covers all their beams).
    max_batch: int = 64
    # vLLM: skip torch.compile / CUDA graphs (a much shorter start-up, slower decoding).
    enforce_eager: bool = False
    # vLLM KV cache size in GiB (kv_cache_memory_bytes). None = vLLM's own sizing: on GPU a share of
    # memory (gpu_memory_utilization); on CPU VLLM_CPU_KVCACHE_SPACE, set to 1 GiB when unset
    # (vLLM would otherwise reserve 92% of RAM). On CPU an operator's VLLM_CPU_KVCACHE_SPACE always wins.
    kv_cache_gib: float | None = 1.0
    # vLLM GPU memory share, used only when kv_cache_gib is None.
    gpu_memory_utilization: float = 0.9
    # vLLM KV block size (tokens). Prefix caching reuses whole blocks only, so a block must be shorter
    # than the prompts (the CPU default 128 is longer than most): beams then share their prompt's blocks.
    block_size: int = 32
    # Further vllm.LLM arguments (e.g. tensor_parallel_size, max_num_seqs); may not override the
    # settings above or the ones the beam loop relies on (logprobs_mode, prefix caching, max_logprobs).
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vllm_kwargs", dict(self.vllm_kwargs))
        if self.backend not in backend_names():
            raise ValueError(
                f"backend must be a registered one, {list(backend_names())}, got {self.backend!r} "
                f"(serving.backends.registry.register_backend adds one)"
            )
        one_of(DTYPES, dtype=self.dtype)
        at_least(1, max_batch=self.max_batch)
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise ValueError(f"kv_cache_gib must be > 0 or None, got {self.kv_cache_gib}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.block_size < 16 or self.block_size % 16:
            raise ValueError(f"block_size must be a multiple of 16 (32 on CPU), got {self.block_size}")
        clash = sorted(_RESERVED_VLLM_KWARGS & set(self.vllm_kwargs))
        if clash:
            raise ValueError(f"vllm_kwargs may not set {clash}: use the ServingConfig.engine fields")


@dataclass(frozen=True)
class Decoding:
    """How a request is searched and ranked."""

    # Beam width. A request asking for k > num_beams is searched with k beams (beam >= K always).
    num_beams: int = 20
    # Largest k a request may ask for; with num_beams it sizes vLLM's max_logprobs.
    max_k: int = 50
    # A request with a diversity rule is searched with k * diversity_widen beams (never fewer than
    # num_beams) and its titles picked greedily under the cap from those candidates; a cap left short
    # doubles the beam up to max_k * diversity_widen, which also sizes vLLM's max_logprobs (serving.rules).
    diversity_widen: int = 3
    # Most recent history titles put in the prompt; None = the length the model was trained with.
    max_history: int | None = None
    # Canvas contexts as candidate sets (``prompt_tuning.candidates``): a search query, a
    # collection theme and a t2t source restrict decoding to the titles they match (the source: its
    # neighbourhood), and the model ranks within them (sized by ``ServingConfig.candidates``).
    # False = the context only adds prompt tokens (the model may answer with any title).
    candidate_sets: bool = True
    # A title-token model's ranking fuses its constrained beam with its title head (the next-token
    # logits over title tokens) by reciprocal rank, the head weighted by this; 0 = the beam alone.
    # Applied where the bare model reads the prompt (no canvas adapter: the head is trained for the
    # foundation model's own prompts). None = the weight chosen on validation (``fusion.json``), else 0.
    title_weight: float | None = None

    def __post_init__(self) -> None:
        at_least(1, num_beams=self.num_beams, max_k=self.max_k, diversity_widen=self.diversity_widen)
        if self.max_history is not None and self.max_history < 1:
            raise ValueError(f"max_history must be >= 1 or None, got {self.max_history}")
        if (self.title_weight or 0) < 0:
            raise ValueError(f"title_weight must be >= 0, got {self.title_weight}")


@dataclass(frozen=True)
class Catalog:
    """The catalog the IDs were built from: its title attributes (categories, year) back the
    attribute rules. None = no attribute rules."""

    data_dir: str | None = None
    # Sub-folder of data_dir; None = the one named in the model's manifest when data_dir holds it.
    dataset: str | None = None

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))


@dataclass(frozen=True)
class FreshTitles:
    """Slots kept for titles a catalog update added after the model was trained (``sidrec catalog
    update``), placed by ``prompt_tuning.candidates.with_fresh``."""

    # Share of a list's k slots kept for fresh titles; 0 = no slots kept. A request may set its own.
    fresh_share: float = 0.0
    # What fills those slots: "content", the fresh titles nearest the history (and a t2t source) by
    # content embedding, or "model", the model's own beam search among them. "content" falls back
    # to the model for a request without a history or source.
    fresh_source: str = "content"

    def __post_init__(self) -> None:
        check_fresh_share(self.fresh_share)
        one_of(FRESH_SOURCES, fresh_source=self.fresh_source)


@dataclass(frozen=True)
class ServingConfig:
    """How a model folder is served (``Recommender.from_pretrained(dir, **fields)``)."""

    # Model folder written by `gen_fm.model.save_model` (Llama weights, tokenizer, semantic_ids/).
    model_dir: str
    engine: Engine = field(default_factory=Engine)
    decoding: Decoding = field(default_factory=Decoding)
    catalog: Catalog = field(default_factory=Catalog)
    # Overrides of CandidateConfig (sizes of the candidate sets, search settings, the t2t and home
    # rows' reciprocal-rank fusion with co-engagement). fusion_k and fusion_weight left out = the
    # constants chosen for this model on validation (the folder's ``fusion/fusion.json``), else
    # CandidateConfig's defaults; the other settings left out = CandidateConfig's defaults.
    candidates: dict[str, Any] = overrides_of(CandidateConfig)
    fresh: FreshTitles = field(default_factory=FreshTitles)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", str(self.model_dir))
        object.__setattr__(self, "candidates", dict(self.candidates))
        if not self.model_dir:
            raise ValueError("model_dir is required")
        self.candidate_config()  # unknown or invalid candidate settings fail here

    def candidate_config(self, chosen: Mapping[str, Any] | None = None) -> CandidateConfig:
        """The candidate settings served: CandidateConfig's defaults <- the fusion constants the
        folder chose (``chosen``, ``GenFM.fusion()``) <- ``candidates``."""
        folder = {key: chosen[key] for key in FOLDER_FUSION if key in chosen} if chosen else {}
        return build_config(CandidateConfig, {**folder, **self.candidates})

    @property
    def max_beams(self) -> int:
        """Widest beam any request can get (k, and a diversity rule, widen it); sizes vLLM's max_logprobs."""
        d = self.decoding
        return max(d.num_beams, d.max_k * d.diversity_widen)

    def beams_for(self, k: int, diverse: bool = False) -> int:
        """Beam width of a request asking for k titles: never narrower than k, and
        ``k * diversity_widen`` when a diversity cap will pick from the beam's titles."""
        d = self.decoding
        return max(d.num_beams, k * (d.diversity_widen if diverse else 1))

    @classmethod
    def create(cls, model_dir: str, **fields: Any) -> ServingConfig:
        """Build from keyword arguments: a field's dotted path or its name alone
        (``num_beams=20``, ``engine={"dtype": "bfloat16"}``); a misspelt one is an error listing the
        valid ones."""
        try:
            return build_config(cls, {**fields, "model_dir": model_dir})
        except ValueError as e:
            if "unknown" in str(e):
                raise TypeError(str(e)) from None
            raise

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> ServingConfig:
        """A config as ``dataclasses.asdict`` wrote it, grouped or in the flat form before the
        grouping (``num_beams``, ``search_candidates``, ``fusion_k: null`` at the top level)."""
        values = dict(obj)
        if "model_dir" not in values:
            raise ValueError("a ServingConfig needs model_dir: this is not a serving config")
        flat_candidates = {f.name for f in dataclasses.fields(CandidateConfig)} & set(values)
        for key in flat_candidates:  # flat form: None = the folder's choice, i.e. left out
            value = values.pop(key)
            if value is not None:
                values.setdefault("candidates", {})
                values["candidates"] = {**values["candidates"], key: value}
        try:
            return build_config(cls, values)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"cannot read this ServingConfig ({e}); write it again with ServingConfig.create "
                f"(keys: {describe(cls)})"
            ) from e
