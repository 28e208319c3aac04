"""The one config of the soft-prompt stage: one PEFT adapter per canvas, grouped by concern.

``PromptTuningStageConfig`` holds the canvas and the seed, and one small frozen dataclass per
concern: the adapter (``adapter``), its training (``training``) and the canvas's examples
(``canvas_data``). Every field name is unique across the groups, so ``--set epochs=5`` and
``--set training.epochs=5`` are the same, and adapters written flat before the grouping load
(``from_json``).

The model's sizes, layout and history length are not declared here: they come from the foundation
model folder the adapter is trained on (its manifest hash is recorded in the adapter's manifest).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from core.checks import one_of
from core.overrides import build_config

INITS = ("random", "canvas_token")
METHODS = ("soft_prompt", "lora")
QUERY_MODES = ("anchors", "quantized")


@dataclass(frozen=True)
class AdapterOptions:
    """What adapts the frozen model to the canvas, and its size."""

    # "soft_prompt" (PEFT prompt tuning: virtual tokens before the prompt, served as embedding rows
    # of one engine) or "lora" (PEFT LoRA on every attention and MLP projection, served per request
    # by vLLM's LoRA support). None = the canvas's own choice (its spec's ``adapter``): LoRA where a
    # soft prompt cannot learn to read the context (collection: a LoRA ranks inside the theme as
    # well as full fine-tuning, a soft prompt does not), "none" where the frozen model is better
    # than every adapter (t2t).
    method: str | None = None
    # LoRA rank r (alpha = 2r); ignored by soft prompts. A larger rank adds weights without ranking
    # a collection's theme better beyond one standard error.
    lora_rank: int = 4
    # Virtual tokens prepended before <bos>; must fit in the model's position_headroom.
    num_virtual_tokens: int = 8
    # "random": N(0, std of the model's embedding rows); "canvas_token": every virtual token starts
    # as the embedding of the canvas's token (its spec's ``token``), so the untrained adapter is
    # close to the base prompt.
    init: str = "canvas_token"

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise ValueError(
                f"method must be one of {METHODS} or None (the canvas's own), got {self.method!r}"
            )
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        one_of(INITS, init=self.init)
        if self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")


@dataclass(frozen=True)
class Training:
    """How the adapter (and the full fine-tuning baseline) is trained."""

    lr: float = 3e-2  # AdamW learning rate of the soft prompt (prompt tuning wants large steps)
    lora_lr: float = 1e-3  # AdamW learning rate of the LoRA weights
    epochs: int = 3  # passes over the canvas's examples
    batch_size: int = 32  # examples per optimizer step
    # Canvases whose context is a candidate set (the spec's ``candidates``: search, collection)
    # train with the softmax of every target code restricted to the codes that lead to one of the
    # example's candidates (the target always among them): the task they are served on, ranking
    # inside the context's titles, which ranks better there than training over the whole
    # vocabulary. False: the softmax over every title.
    train_in_candidates: bool = True
    # Learning rate of the full fine-tuning baseline (every weight trained on the same examples).
    full_finetune_lr: float = 3e-4

    def __post_init__(self) -> None:
        if not self.lora_lr > 0:
            raise ValueError(f"lora_lr must be > 0, got {self.lora_lr}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.full_finetune_lr > 0):
            raise ValueError(f"lr and full_finetune_lr must be > 0, got {self.lr}, {self.full_finetune_lr}")


@dataclass(frozen=True)
class CanvasExamples:
    """The canvas's examples (``prompt_tuning.canvases``) and how a text context is encoded."""

    # Training examples drawn (seeded) from all the canvas's examples; None = all of them.
    max_train_examples: int | None = 4000
    # Held-out examples judged; None = all of them.
    max_eval_examples: int | None = 1000
    # Share of query-title pairs (search) or titles (word queries) held out for evaluation.
    eval_fraction: float = 0.2
    # How a text (search query, collection theme) enters the prompt: "anchors" = the IDs of the
    # `num_anchors` titles that best match it (titles containing the text first, then by sentence-
    # embedding similarity); "quantized" = its sentence embedding encoded by the ID quantizer into
    # code tokens (a point in the same code space as the titles).
    query_mode: str = "anchors"
    num_anchors: int = 3
    # A collection theme is a category with at least this many titles (the rarest such category of
    # the target title, so themes are as specific as the catalog allows).
    min_theme_titles: int = 20

    def __post_init__(self) -> None:
        one_of(QUERY_MODES, query_mode=self.query_mode)
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.num_anchors < 1 or self.min_theme_titles < 1:
            raise ValueError("num_anchors and min_theme_titles must be >= 1")


@dataclass(frozen=True)
class PromptTuningStageConfig:
    """How one canvas's adapter is sized, initialised and trained."""

    # Canvas the adapter serves: a registered name (prompt_tuning.canvases.canvas_names()).
    canvas: str = "home"
    seed: int = 0  # seeds initialisation, shuffling and the examples drawn
    adapter: AdapterOptions = field(default_factory=AdapterOptions)
    training: Training = field(default_factory=Training)
    canvas_data: CanvasExamples = field(default_factory=CanvasExamples)

    def __post_init__(self) -> None:
        from prompt_tuning.canvases.registry import get_canvas  # the canvases import this module

        get_canvas(self.canvas)  # an unknown canvas is a ValueError naming the registered ones
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def adapter_method(self) -> str:
        """The method this config trains: ``adapter.method``, or the canvas's own when that is None
        ("none": the canvas is served without an adapter and none is trained)."""
        from prompt_tuning.canvases.registry import get_canvas  # the canvases import this module

        return self.adapter.method or getattr(get_canvas(self.canvas), "adapter", "soft_prompt")

    @classmethod
    def create(cls, **values: Any) -> PromptTuningStageConfig:
        """Build from keyword arguments: a field's name alone or its dotted path."""
        return build_config(cls, values)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PromptTuningStageConfig:
        """An adapter's recorded config, grouped or flat (adapters written before the grouping)."""
        groups = {f.name: f.default_factory for f in fields(cls) if f.default_factory is not MISSING}
        leaves = {g.name for kind in groups.values() for g in fields(kind)} | {"canvas", "seed"}
        flat: dict[str, Any] = {}
        unknown = []
        for key, value in obj.items():
            if key in groups and isinstance(value, dict):
                flat.update(value)
                unknown += [k for k in value if k not in {g.name for g in fields(groups[key])}]
            elif key in leaves:
                flat[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(f"unknown prompt-tuning config keys: {sorted(unknown)}")
        # an adapter config without these fields (an older adapter) trained over the whole
        # vocabulary and is a soft prompt
        return build_config(cls, {"train_in_candidates": False, "method": "soft_prompt", **flat})
