"""The beam rule every decoder caller follows, and ``JudgeConfig``, the one declaration of how top-K
lists are made and judged (K, the beam, members, batch): validation during training, the test
split of the quickstart and the refresh, and the new-titles judge all read it.

No torch: configs (``gen_fm.config``, the pipelines') read it without pulling torch in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.overrides import build_config

# The narrowest default beam: a beam of just K titles loses good ones to near-ties at a short K.
MIN_BEAMS = 10


def beam_width(k: int, num_beams: int | None = None) -> int:
    """The beam width for lists of ``k`` titles: ``num_beams`` when set, else ``max(k, MIN_BEAMS)``
    (never narrower than K, so K titles can come back)."""
    return num_beams if num_beams is not None else max(k, MIN_BEAMS)


@dataclass(frozen=True)
class JudgeConfig:
    """How top-K lists are judged: the lists' length, the beam that makes them, and how many members
    in what batches. Nested as ``judge`` in ``gen_fm.config.Validation`` (the validation sample),
    ``sidrec.refresh_config.RefreshConfig`` and ``sidrec.quickstart.QuickstartConfig`` (the test split):
    ``--set judge.k=20``, ``--set pretrain.validation.judge.k=20``."""

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
