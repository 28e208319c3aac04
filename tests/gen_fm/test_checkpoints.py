"""Checkpoint bookkeeping: which folders count as checkpoints, and when a run may resume one."""

from __future__ import annotations

import pytest

from gen_fm.checkpoints import STATE_FILE, check_resumable, list_checkpoints
from gen_fm.config import PretrainConfig
from core.artifacts import jsonable


def _meta(**config) -> dict:
    return {
        "config": jsonable(PretrainConfig.from_dict(config)),
        "semantic_ids": "abc",
        "data_fingerprint": "fp",
        "sequence_config": {"max_history": 20},
        "world_size": 1,
    }


def test_only_complete_step_folders_are_checkpoints(tmp_path):
    for name, complete in (
        ("step-00000002", True),
        ("step-00000010", True),
        ("step-00000011", False),
        (".step-00000012.tmp", True),
        ("best", True),
    ):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / STATE_FILE).write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000010"]


def test_resume_allows_run_length_changes_only():
    saved = _meta(epochs=5)
    check_resumable(saved, _meta(epochs=5, max_steps=3, eval_batch_size=8))  # no effect on weights
    with pytest.raises(ValueError, match=r"\['optim.lr'\]"):
        check_resumable(saved, _meta(epochs=5, lr=0.5))
    with pytest.raises(ValueError, match="canvas_mix"):
        check_resumable(saved, _meta(epochs=5, canvas_mix=("t2t",)))
    with pytest.raises(ValueError, match="data_fingerprint"):
        check_resumable(saved, {**_meta(epochs=5), "data_fingerprint": "other"})


def test_a_field_added_since_the_checkpoint_counts_as_its_default():
    saved = _meta()
    del saved["config"]["augment"]["canvas_mix"]  # written before the field existed
    check_resumable(saved, _meta())


def test_a_checkpoint_written_before_the_config_was_nested_resumes():
    """Its trainer_state.json holds the config flat, each field by its own name."""
    saved = _meta(epochs=5, lr=0.002)
    saved["config"] = PretrainConfig.from_dict(saved["config"]).by_name()
    assert "lr" in saved["config"] and "optim" not in saved["config"]
    check_resumable(saved, _meta(epochs=5, lr=0.002, max_steps=7))
    with pytest.raises(ValueError, match="optim.epochs"):
        check_resumable(saved, _meta(epochs=6, lr=0.002))
