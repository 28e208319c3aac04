"""Fixtures of the serving tests: one tiny model folder per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.tiny_model import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("serving_model"))
