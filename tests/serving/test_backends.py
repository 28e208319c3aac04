"""The backend registry: a backend defined and registered in this file alone is served by name."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np
import pytest

from gen_fm.decode import Recommendations
from gen_fm.model import GenFM
from semantic_ids.trie import PrefixTrie, Restriction
from serving.backends import Backend
from serving.backends.registry import backend_names, get_backend, register_backend, unregister_backend
from serving.backends.transformers import TransformersBackend
from serving.backends.vllm import VLLMBeamSearch
from serving.config import ServingConfig
from serving.lifecycle import EngineUnavailable
from serving.recommender import Recommender
from tests.serving.tiny_model import NUM_TITLES

if TYPE_CHECKING:
    from serving.backends import Loras, Prompts, TitleTokens, Views

TITLES = [f"tt{i:03d}" for i in range(NUM_TITLES)]


class UniformBackend:
    """The model that finds every permitted title equally likely: each one's log-probability among
    the permitted titles is -log(#permitted), so the ranking is the contract's tie-break alone
    (item row). A whole ``Backend``, built from what every backend is given."""

    def __init__(
        self, folder: GenFM, trie: PrefixTrie, config: ServingConfig, loras: Loras, title_tokens: TitleTokens
    ) -> None:
        self.trie = trie
        self.canvases = set(loras)
        self.title_tokens = title_tokens
        self.closed = False

    def search(
        self, prompts: Prompts, k: int, num_beams: int, views: Views, lora: str | None = None
    ) -> list[Recommendations]:
        if not 1 <= k <= num_beams:
            raise ValueError(f"need 1 <= k <= num_beams, got k={k}, num_beams={num_beams}")
        return [self._ranked(v, k) for v in self._views(prompts, views, lora)]

    def titles(
        self, prompts: Prompts, n: int, views: Views, lora: str | None = None
    ) -> list[Recommendations]:
        if self.title_tokens is None:
            raise ValueError("the title head needs a model trained with history_tokens 'titles'")
        return [self._ranked(v, n) for v in self._views(prompts, views, lora)]

    def failure(self) -> str | None:
        return "the uniform backend was closed" if self.closed else None

    def close(self) -> None:
        self.closed = True

    def _views(self, prompts, views, lora) -> list[Restriction | None]:
        if views is not None and len(views) != len(prompts):
            raise ValueError(f"{len(views)} restrictions for {len(prompts)} prompts")
        if lora is not None and lora not in self.canvases:
            raise ValueError(f"no LoRA for canvas {lora!r}")
        return list(views) if views is not None else [None] * len(prompts)

    def _ranked(self, view: Restriction | None, n: int) -> Recommendations:
        rows = np.arange(self.trie.num_items)
        permitted = rows if view is None else rows[view.permits(rows)]
        top = permitted[:n].tolist()
        score = -math.log(len(permitted)) if len(permitted) else 0.0
        sids = [tuple(int(c) for c in self.trie.codes[r]) for r in top]
        return Recommendations(rows=top, sids=sids, scores=[score] * len(top), num_invalid=0)


@pytest.fixture
def uniform():
    register_backend("uniform", UniformBackend)
    yield "uniform"
    unregister_backend("uniform")


def test_a_backend_registered_in_a_test_file_serves_requests(tiny_model_dir, uniform) -> None:
    rec = Recommender.from_pretrained(tiny_model_dir, backend=uniform, num_beams=5, max_k=10, fusion_weight=0)
    assert isinstance(rec.backend, UniformBackend)
    res = rec.recommend(TITLES[:3], k=5, exclude=[TITLES[4]])  # the history is excluded too
    assert [r.item_id for r in res] == [TITLES[i] for i in (3, 5, 6, 7, 8)]
    assert [r.score for r in res] == pytest.approx([-math.log(NUM_TITLES - 4)] * 5)
    assert res.reason is None and res[0].semantic_id == rec.ids.layout.sid_string(rec.ids.sid(TITLES[3]))
    few = rec.recommend([], k=5, allow=[TITLES[9], TITLES[2]])
    assert [r.item_id for r in few] == [TITLES[2], TITLES[9]] and "only 2 title(s)" in few.reason
    rec.close()
    with pytest.raises(EngineUnavailable, match="uniform engine unavailable: the uniform backend was closed"):
        rec.recommend(TITLES[:3])


def test_backend_names_come_from_the_registry(uniform) -> None:
    assert backend_names() == ("vllm", "transformers", "uniform")
    assert ServingConfig.create("m", backend="uniform").engine.backend == "uniform"
    assert get_backend("uniform") is UniformBackend
    with pytest.raises(ValueError, match="already registered"):
        register_backend("uniform", UniformBackend)
    register_backend("uniform", UniformBackend, replace=True)  # a plugin reloading itself


def test_unknown_backends_are_refused_naming_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"registered one, \['vllm', 'transformers'\], got 'uniform'"):
        ServingConfig.create("m", backend="uniform")
    with pytest.raises(ValueError, match=r"unknown backend 'tf'; registered: \['vllm', 'transformers'\]"):
        get_backend("tf")
    with pytest.raises(ValueError, match="module:attr"):
        register_backend("broken", "serving.backends.vllm.VLLMBeamSearch")
    with pytest.raises(TypeError, match="a factory"):
        register_backend("broken", 42)
    assert backend_names() == ("vllm", "transformers")


def test_a_factory_that_builds_no_backend_is_refused(tiny_model_dir) -> None:
    register_backend("nothing", lambda folder, trie, config, loras, title_tokens: object())
    try:
        with pytest.raises(TypeError, match="backend 'nothing': its factory returned object, which lacks"):
            Recommender.from_pretrained(tiny_model_dir, backend="nothing")
    finally:
        unregister_backend("nothing")


def test_the_built_in_backends_are_backends() -> None:
    assert get_backend("transformers") is TransformersBackend and get_backend("vllm") is VLLMBeamSearch
    assert issubclass(TransformersBackend, Backend) and issubclass(VLLMBeamSearch, Backend)
    assert issubclass(UniformBackend, Backend)


def test_reading_the_names_imports_neither_torch_nor_vllm() -> None:
    """``sidrec``'s argument choices read the registry; ``sidrec --help`` must not import torch."""
    code = (
        "import sys, serving.config, serving.backends.registry as b; b.backend_names(); "
        "print(sorted(m for m in ('torch', 'vllm', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
