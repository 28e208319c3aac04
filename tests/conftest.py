"""Shared fixtures: real data found through $SIDREC_DATA_DIR, and an isolated cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _data_root() -> Path | None:
    env = os.environ.get("SIDREC_DATA_DIR")
    if env:
        return Path(env)
    # A checkout next to the project's shared/ folder (the layout CI uses).
    guess = Path(__file__).resolve().parents[2] / "shared" / "data"
    return guess if guess.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = _data_root()
    if root is None or not root.is_dir():
        pytest.skip(
            "real data not found: set SIDREC_DATA_DIR to the folder holding "
            "ml-latest-small/ and amazon-beauty/"
        )
    return root


@pytest.fixture(scope="session")
def ml_slice_args(data_dir) -> list[str]:
    """The command-line flags of the first 20 MovieLens members (``sidrec ... --data --dataset --max-users``)."""
    return ["--data", str(data_dir), "--dataset", "ml-latest-small", "--max-users", "20"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory) -> None:
    """Tests write caches under a temp dir, but share the sentence-encoder cache across runs."""
    if "SIDREC_CACHE_DIR" not in os.environ:
        os.environ["SIDREC_CACHE_DIR"] = str(tmp_path_factory.mktemp("sidrec-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ml_small(data_dir):
    """The first 40 MovieLens members: a small, real slice."""
    from core.data import load_data

    return load_data(data_dir=str(data_dir), dataset="ml-latest-small", max_users=40)


@pytest.fixture(scope="session")
def beauty_small(data_dir):
    from core.data import load_data

    return load_data(data_dir=str(data_dir), dataset="amazon-beauty", max_users=60)
