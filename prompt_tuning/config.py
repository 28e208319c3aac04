"""The one config of the soft-prompt stage: one PEFT prompt-tuning adapter per canvas.

The model's sizes, layout and history length are not declared here: they come from the foundation
model folder the adapter is trained on (its manifest hash is recorded in the adapter's manifest).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gen_fm.tokenizer import CANVASES

INITS = ("random", "canvas_token")


@dataclass(frozen=True)
class PromptTuningStageConfig:
    """How one canvas's soft prompt is sized, initialised and trained."""

    # Canvas the soft prompt serves (one of gen_fm.tokenizer.CANVASES).
    canvas: str = "home"
    # Virtual tokens prepended before <bos>; must fit in the model's position_headroom.
    num_virtual_tokens: int = 8
    lr: float = 3e-2  # AdamW learning rate of the soft prompt (prompt tuning wants large steps)
    epochs: int = 3  # passes over the canvas's examples
    batch_size: int = 32  # examples per optimizer step
    seed: int = 0  # seeds initialisation and shuffling
    # "random": N(0, std of the model's embedding rows); "canvas_token": every virtual token starts
    # as the embedding of <canvas_{canvas}>, so the untrained adapter is close to the base prompt.
    init: str = "canvas_token"

    def __post_init__(self) -> None:
        if self.canvas not in CANVASES:
            raise ValueError(f"unknown canvas {self.canvas!r}; choose one of {CANVASES}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        for name in ("num_virtual_tokens", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "PromptTuningStageConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise ValueError(f"unknown prompt-tuning config keys: {sorted(unknown)}")
        return cls(**obj)
