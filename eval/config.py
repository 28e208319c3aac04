"""The evaluation stage's configs: ``EvalConfig`` (which split, which cut-offs, how scoring is
batched) and ``JudgeConfig`` (how a pipeline judges its model's top-K lists on the test split).

Kept small on purpose: settings that only the generative model's evaluation needs (beam width,
constrained decoding, ...) are added here as fields with defaults, so existing presets stay valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.metrics import validate_ks
from core.overrides import build_config
from gen_fm.beams import beam_width

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
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
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


@dataclass(frozen=True)
class JudgeConfig:
    """How a ranking is judged on the test split: the lists' length, the beam that makes them, and
    how many members in what batches. Nested as ``judge`` in ``sidrec.refresh.RefreshConfig`` and
    ``sidrec.quickstart.QuickstartConfig``: ``--set judge.k=20`` (``--set k=20`` where unique)."""

    k: int = 10  # Recall@K / NDCG@K (and @5 when K > 5); the recommended lists' length
    num_beams: int | None = None  # None = gen_fm.beams.beam_width(k)
    eval_users: int | None = None  # judge at most this many members (quick runs); None = all
    eval_batch_size: int = 64  # prompts per beam-search batch

    def __post_init__(self) -> None:
        for name, optional in (
            ("k", False),
            ("num_beams", True),
            ("eval_users", True),
            ("eval_batch_size", False),
        ):
            value = getattr(self, name)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1{' or None' if optional else ''}, got {value!r}")
        if self.num_beams is not None and self.num_beams < self.k:
            raise ValueError(
                f"num_beams {self.num_beams} < k {self.k}: a beam narrower than K cannot return K titles"
            )

    @classmethod
    def of(cls, value: JudgeConfig | Mapping[str, Any]) -> JudgeConfig:
        """A config that nests this one takes it as is or as a dict of its fields (read as ``--set``
        reads them: unknown keys are refused, naming the valid ones)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return build_config(cls, value, "judge")
        raise TypeError(f"judge must be a JudgeConfig or a dict of its fields, got {value!r}")

    @property
    def beams(self) -> int:
        """The beam width searched: ``num_beams``, or the one beam rule's width for ``k``."""
        return beam_width(self.k, self.num_beams)

    @property
    def ks(self) -> tuple[int, ...]:
        """The cut-offs reported: K, and 5 when K > 5."""
        return tuple(sorted({min(5, self.k), self.k}))
