"""The evaluation stage's config, ``EvalConfig``: which split, which cut-offs, how scoring is batched.
(How top-K lists are made and judged, the K, beam and members, is ``gen_fm.beams.JudgeConfig``.)

Kept small on purpose: settings that only the generative model's evaluation needs (beam width,
constrained decoding, ...) are added here as fields with defaults, so existing presets stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.checks import one_of
from core.metrics import validate_ks

SPLITS = ("valid", "test", "train")


@dataclass(frozen=True)
class EvalConfig:
    # Cut-offs for Recall@K and NDCG@K; the benchmark reports 5 and 10.
    ks: tuple[int, ...] = (5, 10)
    # Which leave-one-out target is judged: "test" (last event), "valid" (the one before it) or
    # "train" (the newest training event: a transition the model saw, for diagnosis).
    split: str = "test"
    # Seed for anything random in evaluation (sampling members for a quick look); the full
    # evaluation itself is deterministic and does not depend on it.
    seed: int = 0
    # Members scored per forward pass / per top-k call; changes speed and memory, not results.
    batch_size: int = 256
    # torch device for scoring, e.g. "cpu" or "cuda".
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", validate_ks(self.ks))
        one_of(SPLITS, split=self.split)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a torch device string, got {self.device!r}")

    @property
    def max_k(self) -> int:
        """Length of the ranked list a model must return to score every cut-off."""
        return self.ks[-1]
