"""The Python API on the transformers backend: input validation, history handling, restrictions, config."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from serving.backends.transformers import excluded_rows
from serving.config import ServingConfig
from serving.recommender import RecommendationRequest, Recommender
from tests.serving.tiny_model import MAX_HISTORY, NUM_TITLES

TITLES = [f"tt{i:03d}" for i in range(NUM_TITLES)]


@pytest.fixture(scope="module")
def rec(tiny_model_dir) -> Recommender:
    return Recommender.from_pretrained(tiny_model_dir, backend="transformers", num_beams=10, max_k=20)


def ids_of(res) -> list[str]:
    return [r.item_id for r in res]


def test_result_is_a_ranked_sequence_of_valid_titles(rec) -> None:
    res = rec.recommend(TITLES[:3], k=7)
    assert len(res) == 7 and res.reason is None and not res.cold_start
    assert res[0] is res.items[0] and list(res) == list(res.items)
    assert [r.score for r in res] == sorted((r.score for r in res), reverse=True)
    for r in res:
        assert rec.ids.layout.parse_sid_string(r.semantic_id) == rec.ids.sid(r.item_id)
        assert r.title == rec.ids.title(r.item_id)
    assert not set(ids_of(res)) & set(TITLES[:3])  # exclude_history defaults to True


def test_unknown_titles_are_named(rec) -> None:
    with pytest.raises(ValueError, match=r"unknown title id\(s\) in history: 'nope', 'gone'"):
        rec.recommend([TITLES[0], "nope", "gone"])
    with pytest.raises(ValueError, match="in exclude: 'x1'"):
        rec.recommend(TITLES[:2], exclude=["x1"])
    with pytest.raises(ValueError, match="in allow: 'x2'"):
        rec.recommend(TITLES[:2], allow=[TITLES[5], "x2"])
    with pytest.raises(ValueError, match="list of title ids"):
        rec.recommend(TITLES[0])  # a bare string would otherwise be read character by character
    with pytest.raises(ValueError, match="^request 1: .*'bad'"):  # batches say which request
        rec.recommend_batch([{"history": TITLES[:2]}, {"history": ["bad"]}])


@pytest.mark.parametrize("k", [0, 21, 2.5, True])
def test_k_must_be_an_integer_within_max_k(rec, k) -> None:
    with pytest.raises(ValueError, match="k must be an integer in 1..20"):
        rec.recommend(TITLES[:2], k=k)


def test_unknown_canvas(rec) -> None:
    with pytest.raises(ValueError, match="unknown canvas 'homepage'"):
        rec.recommend(TITLES[:2], canvas="homepage")


def test_empty_history_is_a_flagged_cold_start(rec) -> None:
    res = rec.recommend([], k=5)
    assert res.cold_start and res.history_used == 0 and len(res) == 5
    assert res.num_permitted == NUM_TITLES  # nothing to exclude


def test_long_history_keeps_the_most_recent_titles(rec) -> None:
    history = TITLES[10 : 10 + MAX_HISTORY + 4]  # 4 too many
    res = rec.recommend(history, k=8, exclude_history=False)
    assert (res.history_used, res.history_dropped) == (MAX_HISTORY, 4)
    recent = rec.recommend(history[-MAX_HISTORY:], k=8, exclude_history=False)
    oldest = rec.recommend(history[:MAX_HISTORY], k=8, exclude_history=False)
    assert ids_of(res) == ids_of(recent) and res.history_dropped == 4
    assert ids_of(res) != ids_of(oldest)  # the prompt really changed with which end was kept
    # the dropped titles are still excluded: the member has seen them
    excluded = rec.recommend(history, k=8)
    assert excluded.num_permitted == NUM_TITLES - len(history)
    assert not set(ids_of(excluded)) & set(history)


def test_exclude_history_switch(rec) -> None:
    history = TITLES[:4] + TITLES[:2]  # re-watches count once
    on = rec.recommend(history, k=5)
    off = rec.recommend(history, k=5, exclude_history=False)
    assert on.num_permitted == NUM_TITLES - 4 and off.num_permitted == NUM_TITLES


def test_exclude_and_allow(rec) -> None:
    base = rec.recommend(TITLES[:2], k=5)
    res = rec.recommend(TITLES[:2], k=5, exclude=ids_of(base)[:2])
    assert not set(ids_of(res)) & set(ids_of(base)[:2])
    # scores are renormalised over the permitted titles: excluding some can only raise the others'
    old = {r.item_id: r.score for r in base}
    assert all(r.score >= old[r.item_id] - 1e-6 for r in res if r.item_id in old)
    assert any(r.score > old[r.item_id] + 1e-3 for r in res if r.item_id in old)
    allow = TITLES[20:30]
    res = rec.recommend(TITLES[:2], k=5, allow=allow, exclude=[TITLES[20]])
    assert set(ids_of(res)) <= set(allow) - {TITLES[20]} and len(res) == 5


def test_small_allow_set_gives_fewer_titles_and_says_why(rec) -> None:
    res = rec.recommend([TITLES[3]], k=5, allow=[TITLES[3], TITLES[7], TITLES[9]])
    assert sorted(ids_of(res)) == [TITLES[7], TITLES[9]]
    assert res.num_permitted == 2 and res.reason.startswith("only 2 title(s) permitted")
    assert "minus the history" in res.reason
    none = rec.recommend([TITLES[3]], k=5, allow=[TITLES[3]])
    assert len(none) == 0 and none.reason.startswith("no title is permitted")


def test_batch_equals_single_requests(rec) -> None:
    reqs = [
        RecommendationRequest(TITLES[:3], k=4),
        RecommendationRequest([TITLES[9]], k=15, canvas="t2t"),
        RecommendationRequest([], k=2, user_id="m1"),
        RecommendationRequest(TITLES[5:9], k=10),
    ]
    batch = rec.recommend_batch(reqs)
    assert [len(b) for b in batch] == [4, 15, 2, 10]
    for r, b in zip(reqs, batch):
        single = rec.recommend(r.history, canvas=r.canvas, k=r.k, user_id=r.user_id)
        assert ids_of(single) == ids_of(b)
        np.testing.assert_allclose([x.score for x in single], [x.score for x in b], atol=1e-5)


def test_excluded_rows_is_the_complement_of_an_allow_list(rec) -> None:
    view = rec.trie.restrict(allow_rows=[1, 5, 7], exclude_rows=[5])
    assert excluded_rows(view, NUM_TITLES) == sorted(set(range(NUM_TITLES)) - {1, 7})
    assert excluded_rows(rec.trie.restrict(exclude_rows=[3, 2]), NUM_TITLES) == [2, 3]
    assert excluded_rows(None, NUM_TITLES) == []


def test_config_validation(tiny_model_dir) -> None:
    with pytest.raises(TypeError, match="unknown ServingConfig field\\(s\\): beam; known: "):
        Recommender.from_pretrained(tiny_model_dir, backend="transformers", beam=5)
    with pytest.raises(ValueError, match="backend"):
        ServingConfig.create("m", backend="tgi")
    with pytest.raises(ValueError, match="block_size"):
        ServingConfig.create("m", block_size=24)
    with pytest.raises(ValueError, match="vllm_kwargs may not set \\['logprobs_mode'\\]"):
        ServingConfig.create("m", vllm_kwargs={"logprobs_mode": "raw_logprobs"})
    with pytest.raises(ValueError, match="num_beams"):
        ServingConfig.create("m", num_beams=0)
    with pytest.raises(ValueError, match="dtype"):
        ServingConfig.create("m", dtype="fp8")
    with pytest.raises(ValueError, match="kv_cache_gib"):
        ServingConfig.create("m", kv_cache_gib=0)
    c = ServingConfig.create("m", num_beams=10, max_k=30)
    assert c.max_beams == 90 and c.beams_for(5) == 10 and c.beams_for(25) == 25
    assert c.beams_for(5, diverse=True) == 15 and c.beams_for(2, diverse=True) == 10
    with pytest.raises(ValueError, match="exceeds the 6 titles"):
        Recommender.from_pretrained(tiny_model_dir, backend="transformers", max_history=MAX_HISTORY + 1)
    short = Recommender.from_pretrained(tiny_model_dir, backend="transformers", max_history=2)
    assert short.recommend(TITLES[:5], k=3).history_used == 2


def test_a_closed_engine_is_a_clear_error_not_a_hang(tiny_model_dir) -> None:
    from serving.lifecycle import EngineUnavailable

    rec = Recommender.from_pretrained(tiny_model_dir, backend="transformers", num_beams=5, max_k=10)
    assert rec.failure() is None and len(rec.recommend(["tt001"], k=3)) == 3
    rec.close()
    assert rec.failure() == "the engine was closed"
    with pytest.raises(EngineUnavailable, match="transformers engine unavailable: the engine was closed"):
        rec.recommend(["tt001"], k=3)


def test_a_title_token_models_home_row_fuses_its_beam_with_its_title_head(tmp_path) -> None:
    """``title_weight``: 0 serves the beam alone; a weight where the head's first title leads
    serves the head's first title first; rules and exclusions hold for the head too; a code-token
    model has no head, so the weight is ignored there."""
    from gen_fm.decode import recommend_titles
    from tests.serving.tiny_model import write_tiny_model

    folder = write_tiny_model(tmp_path / "titles", seed=3, history_tokens="titles")
    beam = Recommender.from_pretrained(folder, backend="transformers", num_beams=10, title_weight=0.0)
    head = Recommender.from_pretrained(folder, backend="transformers", num_beams=10, title_weight=64.0)
    history = TITLES[:4]
    p = head.prepare(RecommendationRequest(history, k=5, exclude=TITLES[4:6]))
    (top,) = recommend_titles(head.backend.model, [p.prompt], head.trie, head.title_tokens, 10, [p.view])
    served = ids_of(head.recommend(history, k=5, exclude=TITLES[4:6]))
    assert served[0] == TITLES[top.rows[0]]
    assert not set(served) & set(TITLES[:6])  # history and exclusions stay out
    plain = ids_of(beam.recommend(history, k=5, exclude=TITLES[4:6]))
    assert plain != served and beam.title_weight == 0.0 and head.title_weight == 64.0
    with pytest.raises(ValueError, match="title_weight"):
        ServingConfig.create("m", title_weight=-1.0)
    codes = Recommender.from_pretrained(
        write_tiny_model(tmp_path / "codes"), backend="transformers", num_beams=10, title_weight=2.0
    )
    assert codes.title_tokens is None and codes.title_weight == 0.0


def test_serving_config_groups_its_settings_by_concern() -> None:
    """A name alone or its dotted path reaches a field; every CandidateConfig setting is settable
    (declared once, in CandidateConfig); left out, fusion_k/fusion_weight are the folder's."""
    import dataclasses

    from prompt_tuning.candidate_config import CandidateConfig

    assert len(dataclasses.fields(ServingConfig)) <= 12
    c = ServingConfig.create("m", num_beams=7, **{"engine.dtype": "bfloat16"}, theme_fill=5, rrf_k=3)
    assert (c.decoding.num_beams, c.engine.dtype) == (7, "bfloat16")
    assert c.candidates == {"theme_fill": 5, "rrf_k": 3}
    assert c.candidate_config() == CandidateConfig(theme_fill=5, rrf_k=3)
    folder = {"fusion_k": 9, "fusion_weight": 0.5, "title_weight": 1.0}
    assert c.candidate_config(folder) == CandidateConfig(theme_fill=5, rrf_k=3, fusion_k=9, fusion_weight=0.5)
    mine = ServingConfig.create("m", candidates={"fusion_weight": 0.0})
    assert mine.candidate_config(folder).fusion_weight == 0.0 and mine.candidate_config(folder).fusion_k == 9
    with pytest.raises(ValueError, match="theme_fill"):
        ServingConfig.create("m", theme_fill=0)
    with pytest.raises(TypeError, match="unknown ServingConfig.candidates field"):
        ServingConfig.create("m", candidates={"nope": 1})


def test_a_flat_serving_config_reads_back() -> None:
    """The flat form ``dataclasses.asdict`` wrote before the grouping (bench reports) reads back as
    the same config; something else fails naming what to do."""
    flat = {
        "model_dir": "m", "backend": "transformers", "num_beams": 12, "max_k": 40, "diversity_widen": 3,
        "max_history": None, "max_batch": 8, "dtype": "float32", "device": "cpu", "enforce_eager": False,
        "kv_cache_gib": 1.0, "gpu_memory_utilization": 0.9, "block_size": 32, "data_dir": None,
        "dataset": None, "candidate_sets": True, "search_candidates": 30, "theme_candidates": 50,
        "source_candidates": 100, "fusion_k": None, "fusion_weight": 0.25, "title_weight": None,
        "fresh_share": 0.2, "fresh_source": "content", "vllm_kwargs": {},
    }  # fmt: skip
    c = ServingConfig.from_dict(flat)
    assert c == ServingConfig.create(
        "m", backend="transformers", num_beams=12, max_k=40, max_batch=8, fresh_share=0.2,
        candidates={"search_candidates": 30, "theme_candidates": 50, "source_candidates": 100, "fusion_weight": 0.25},
    )  # fmt: skip
    assert "fusion_k" not in c.candidates  # None was "the folder's choice": left out
    assert ServingConfig.from_dict(dataclasses.asdict(c)) == c
    with pytest.raises(ValueError, match="write it again with ServingConfig.create"):
        ServingConfig.from_dict({**flat, "beam": 3})
    with pytest.raises(ValueError, match="needs model_dir"):
        ServingConfig.from_dict({"k": 10})


def test_the_committed_serving_benchmark_configs_read_back() -> None:
    """``results/serving/*.json`` hold flat ServingConfigs (``dataclasses.asdict`` before the
    grouping, plus the bench's ``torch_threads``); they read back grouped, with the same values."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "results" / "serving" / "amazon-beauty-small-cpu.json"
    if not path.is_file():
        pytest.skip("no committed serving benchmark")
    for flat in json.loads(path.read_text())["config"].values():
        flat = {k: v for k, v in flat.items() if k != "torch_threads"}
        c = ServingConfig.from_dict(flat)
        assert (c.engine.backend, c.decoding.num_beams, c.engine.enforce_eager) == (
            flat["backend"], flat["num_beams"], flat["enforce_eager"]
        )  # fmt: skip
