"""Fixtures of the serving tests: one tiny model folder, one tiny catalog and one tiny exported
(soft-prompt) folder per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.tiny_model import write_tiny_catalog, write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("serving_model"))


@pytest.fixture(scope="session")
def tiny_catalog_dir(tmp_path_factory) -> Path:
    # named like the dataset in the tiny model's manifest, so a bare data_dir finds it
    return write_tiny_catalog(tmp_path_factory.mktemp("serving_data") / "unit")


@pytest.fixture(scope="session")
def tiny_attributes_table(tiny_model_dir, tiny_catalog_dir, tmp_path_factory):
    """The tiny catalog's attributes, loaded with ``core.data`` into a private cache folder."""
    from semantic_ids.ids import SemanticIDs
    from serving.rules import load_attributes

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIDREC_CACHE_DIR", str(tmp_path_factory.mktemp("serving_cache")))
        return load_attributes(SemanticIDs.load(tiny_model_dir / "semantic_ids"), str(tiny_catalog_dir))


@pytest.fixture(scope="session")
def tiny_exported_dir(tmp_path_factory) -> Path:
    """``tiny_adapters.write_exported_model``: soft prompts for home, search and t2t, a text-capable
    ID artifact. Its data cache goes to a private folder, like the attribute table's."""
    from tests.serving.tiny_adapters import write_exported_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIDREC_CACHE_DIR", str(tmp_path_factory.mktemp("adapters_cache")))
        return write_exported_model(tmp_path_factory.mktemp("serving_adapters"))
