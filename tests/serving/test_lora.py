"""A canvas served by its LoRA (``PromptTuningStageConfig.method="lora"``), beside soft prompts.

The tiny folder (``tiny_adapters.write_exported_model(lora=True)``) holds home, search and t2t soft
prompts and a collection LoRA trained on a toy objective (it always wants ``LORA_TARGET``). The
export keeps the LoRA in PEFT's format under ``loras/collection``; the transformers backend decodes
with it merged, vLLM applies it per request; both must give the same list, and the other canvases
must not see it.
"""

from __future__ import annotations


import numpy as np
import pytest

from core.artifacts import read_json
from prompt_tuning.adapter import read_adapter
from serving.recommender import Recommender
from tests.serving.servers import SMALL_VLLM, needs_vllm
from tests.serving.test_adapters import COMMON, HISTORY, ids_of, serving
from tests.serving.tiny_adapters import GENRES, LORA_RANK, LORA_TARGET, TARGETS


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    from tests.serving.tiny_adapters import write_exported_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIDREC_CACHE_DIR", str(tmp_path_factory.mktemp("lora_cache")))
        return write_exported_model(tmp_path_factory.mktemp("serving_lora"), lora=True)


@pytest.fixture(scope="module")
def rec(lora_dir) -> Recommender:
    return Recommender.from_pretrained(lora_dir, backend="transformers", **COMMON)


def test_the_export_keeps_the_lora_in_peft_format(lora_dir) -> None:
    mapping = read_json(lora_dir / "adapters.json")
    assert mapping["collection"]["method"] == "lora" and "virtual_token_ids" not in mapping["collection"]
    assert mapping["collection"]["lora"] == "loras/collection"
    assert mapping["collection"]["lora_rank"] == LORA_RANK
    assert all(mapping[c]["method"] == "soft_prompt" for c in ("home", "search", "t2t"))
    assert (lora_dir / "loras/collection/adapter_config.json").is_file()
    info = read_adapter(lora_dir.parent / "adapter_collection")  # the adapter folder it came from
    assert info.method == "lora" and info.prompt is None
    assert info.manifest["trainable_parameters"] > 0 and info.manifest["num_virtual_tokens"] == 0


def _theme_of(rec, row: int) -> str:
    """The genre of the title at ID row `row` (tiny_adapters: title m<i> has GENRES[i % 6])."""
    return GENRES[int(rec.ids.item_ids[row][1:]) % len(GENRES)]


def test_the_lora_serves_its_canvas_only(rec) -> None:
    target = rec.ids.item_ids[LORA_TARGET]
    theme = _theme_of(rec, LORA_TARGET)
    res = rec.recommend(HISTORY, canvas="collection", theme=theme, k=5)
    assert res.soft_prompt and res.context == "theme" and res.candidates is not None
    assert ids_of(res)[0] == target  # the toy objective was learned, and served
    inside = set(rec.prompts.candidate_index().for_theme(theme).rows.tolist())
    assert {rec.ids.index_of(t) for t in ids_of(res)} <= inside  # ranked inside the theme
    # its prompt carries no virtual tokens: the LoRA changes the weights, not the input
    prompt = rec.prompts.build("collection", [], None, theme=theme).prompt
    assert not set(prompt) & {t for ids in rec.prompts.virtual.values() for t in ids}
    assert res.prompt_tokens == len(
        rec.prompts.build("collection", [rec.ids.index_of(t) for t in HISTORY], None, theme=theme).prompt
    )
    # the other canvases decode with the base weights: home's soft prompt still wants its own title
    home = rec.recommend(HISTORY, canvas="home", k=5)
    assert ids_of(home)[0] == rec.ids.item_ids[TARGETS["home"]] != target


def test_models_say_which_adapter_serves_each_canvas(rec) -> None:
    with serving(rec) as (http, client):
        cards = {m.id: m for m in client.models.list()}
        assert {i: (m.adapter, m.soft_prompt) for i, m in cards.items()} == {
            "sidrec-home": ("soft_prompt", True),
            "sidrec-search": ("soft_prompt", True),
            "sidrec-t2t": ("soft_prompt", True),
            "sidrec-collection": ("lora", False),
        }
        health = http.get("/health").json()
        assert health["loras"] == ["collection"] and "collection" not in health["soft_prompts"]
        out = client.completions.create(
            model="sidrec-collection", prompt=" ".join(HISTORY), n=5, extra_body={"theme": "Comedy"}
        )
        assert [c.text for c in out.choices] == ids_of(
            rec.recommend(HISTORY, canvas="collection", theme="Comedy", k=5)
        )


@needs_vllm
def test_vllm_applies_the_lora_per_request_like_transformers(lora_dir, rec) -> None:
    vl = Recommender.from_pretrained(lora_dir, backend="vllm", **SMALL_VLLM, **COMMON)
    try:
        reqs = [
            dict(history=HISTORY, canvas="collection", theme=_theme_of(rec, LORA_TARGET), k=5),
            dict(history=HISTORY, canvas="home", k=5),
            dict(history=["m03"], canvas="collection", theme="dragon", k=5),
            dict(history=HISTORY, canvas="search", query="ocean", k=5),
        ]
        for req, a, b in zip(reqs, vl.recommend_batch(reqs), rec.recommend_batch(reqs), strict=True):
            assert ids_of(a) == ids_of(b), req
            np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=2e-3, rtol=0)
    finally:
        vl.close()
