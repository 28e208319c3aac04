"""Every stage config stays small: at most 12 top-level fields, a concern's settings in a nested
dataclass of their own, and a nested concern's settings never declared again beside it."""

from __future__ import annotations

import dataclasses

import pytest

from eval.config import EvalConfig
from gen_fm.beams import JudgeConfig
from gen_fm.config import PretrainConfig, Validation
from prompt_tuning.config import PromptTuningStageConfig
from semantic_ids.config import SemanticIDConfig
from serving.config import ServingConfig
from sidrec.quickstart import QuickstartConfig
from sidrec.refresh_config import RefreshConfig

STAGE_CONFIGS = [
    PretrainConfig,
    ServingConfig,
    SemanticIDConfig,
    PromptTuningStageConfig,
    RefreshConfig,
    QuickstartConfig,
    EvalConfig,
]


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda c: c.__name__)
def test_a_stage_config_has_at_most_12_top_level_fields(config):
    names = [f.name for f in dataclasses.fields(config)]
    assert len(names) <= 12, f"{config.__name__} has {len(names)} top-level fields: {names}"


@pytest.mark.parametrize("config", [RefreshConfig, QuickstartConfig, Validation], ids=lambda c: c.__name__)
def test_the_judges_settings_live_only_in_judge(config):
    top = {f.name for f in dataclasses.fields(config)}
    assert top & {f.name for f in dataclasses.fields(JudgeConfig)} == set()
    assert isinstance(config().judge, JudgeConfig)


def test_the_judge_config_checks_its_fields():
    assert JudgeConfig(k=20).ks == (5, 20) and JudgeConfig(k=20).beams == 20
    assert JudgeConfig(k=3).ks == (3,) and JudgeConfig(k=3).beams == 10  # gen_fm.beams.MIN_BEAMS
    assert JudgeConfig(k=5, num_beams=7).beams == 7
    for bad in ({"k": 0}, {"eval_batch_size": 0}, {"eval_users": 0}, {"num_beams": 0}, {"k": True}):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            JudgeConfig(**bad)
    with pytest.raises(ValueError, match="a beam narrower than K cannot return K titles"):
        JudgeConfig(k=10, num_beams=5)
    with pytest.raises(TypeError, match="judge must be a JudgeConfig"):
        JudgeConfig.of(10)
