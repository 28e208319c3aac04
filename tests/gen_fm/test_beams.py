"""The one beam rule (``gen_fm.beams``) and the callers that read it."""

from __future__ import annotations

from gen_fm.beams import MIN_BEAMS, beam_width
from gen_fm.config import PretrainConfig
from core.overrides import override


def test_the_beam_rule_is_never_narrower_than_k_and_an_explicit_width_wins() -> None:
    assert MIN_BEAMS == 10
    assert [beam_width(k) for k in (1, 5, 10, 20, 50)] == [10, 10, 10, 20, 50]
    assert beam_width(5, 7) == 7 and beam_width(20, 40) == 40


def test_validation_reads_the_one_rule() -> None:
    assert override(PretrainConfig(), {"k": 30}).validation.judge.beams == beam_width(30) == 30
    assert override(PretrainConfig(), {"eval_k": 30}).validation.judge.k == 30  # its old name
    assert PretrainConfig().validation.judge.beams == beam_width(PretrainConfig().validation.judge.k)
    assert override(PretrainConfig(), {"num_beams": 40}).validation.judge.beams == 40
