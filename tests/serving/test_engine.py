"""The vLLM backend on a real engine (no mocks): valid, permitted, and equal to the transformers reference.

One engine for the whole module (start-up is most of the cost); ``-m "not vllm"`` deselects it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[serving]')")

from gen_fm.decode import Recommendations, recommend  # noqa: E402
from semantic_ids.trie import Restriction  # noqa: E402
from serving.recommender import RecommendationRequest, Recommender  # noqa: E402
from tests.serving.tiny_model import MAX_HISTORY, NUM_TITLES  # noqa: E402

pytestmark = pytest.mark.vllm

K = 5


@pytest.fixture(scope="module")
def recs(tiny_model_dir):
    """(vLLM recommender, transformers recommender) over the same folder and config."""
    common = dict(num_beams=K, max_k=10, max_batch=16)
    hf = Recommender.from_pretrained(tiny_model_dir, backend="transformers", **common)
    vl = Recommender.from_pretrained(
        tiny_model_dir, backend="vllm", enforce_eager=True, kv_cache_gib=0.25, **common
    )
    yield vl, hf
    vl.close()


def requests(seed: int = 1) -> list[RecommendationRequest]:
    """Histories of 0..9 titles (longer than max_history too), every canvas, with and without members,
    exclusions and an allow-list."""
    rng = np.random.default_rng(seed)
    titles = [f"tt{i:03d}" for i in range(NUM_TITLES)]
    out = []
    for i, n in enumerate([0, 1, 3, 5, MAX_HISTORY + 3, 2, 4, 6]):
        hist = [titles[j] for j in rng.choice(NUM_TITLES, n, replace=False)]
        out.append(
            RecommendationRequest(
                history=hist,
                canvas=["home", "search", "t2t", "collection"][i % 4],
                k=K,
                user_id=f"member{i}" if i % 2 else None,
                exclude=[titles[j] for j in rng.choice(NUM_TITLES, 4, replace=False)]
                if i in (2, 5)
                else None,
                allow=[titles[j] for j in rng.choice(NUM_TITLES, 15, replace=False)] if i == 6 else None,
                exclude_history=i != 7,
            )
        )
    return out


def prompts_and_views(
    rec: Recommender, reqs: list[RecommendationRequest]
) -> tuple[list[list[int]], list[Restriction | None], list[list[int]]]:
    """What the API sends a backend: prompt ids, restriction views, and the excluded rows per prompt."""
    prompts, views, excluded = [], [], []
    for r in reqs:
        hist = [rec.ids.index_of(t) for t in r.history]
        prompts.append(rec.encoder.encode(hist[-MAX_HISTORY:], canvas=r.canvas, user_id=r.user_id))
        excl = {rec.ids.index_of(t) for t in (r.exclude or [])} | (set(hist) if r.exclude_history else set())
        allow = None if r.allow is None else [rec.ids.index_of(t) for t in r.allow]
        views.append(
            rec.trie.restrict(exclude_rows=sorted(excl), allow_rows=allow)
            if excl or allow is not None
            else None
        )
        permitted = set(range(NUM_TITLES)) if allow is None else set(allow)
        excluded.append(sorted(set(range(NUM_TITLES)) - (permitted - excl)))
    return prompts, views, excluded


def assert_same_top_k(got: Recommendations, want: Recommendations) -> None:
    assert got.rows == want.rows, (got.rows, want.rows)
    assert got.sids == want.sids
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-3, rtol=0)


@pytest.mark.parametrize("beams", [5, 10])
def test_top_k_equals_transformers_reference(recs, beams: int) -> None:
    vl, hf = recs
    prompts, views, excluded = prompts_and_views(vl, requests())
    got = vl.backend.search(prompts, K, beams, views)
    want = recommend(hf.backend.model, prompts, hf.trie, k=K, num_beams=beams, exclude=excluded)
    for g, w in zip(got, want, strict=True):
        assert len(w.rows) == K
        # the comparison means something only if the reference has no near-ties to reorder
        assert min(-np.diff(w.scores)) > 1e-4, w.scores
        assert_same_top_k(g, w)
    steps = vl.backend.last_steps
    assert [s.depth for s in steps] == list(range(vl.trie.sid_length))
    assert steps[0].live_beams == len(prompts)  # every request starts from the root
    # beams with a single allowed child are scored without the engine
    assert sum(s.engine_requests for s in steps) < sum(s.live_beams for s in steps)


def test_api_results_match_across_backends(recs) -> None:
    vl, hf = recs
    reqs = requests(seed=2)
    for a, b in zip(vl.recommend_batch(reqs), hf.recommend_batch(reqs), strict=True):
        assert [r.item_id for r in a] == [r.item_id for r in b]
        assert [r.semantic_id for r in a] == [r.semantic_id for r in b]
        np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=1e-3, rtol=0)
        assert (a.cold_start, a.history_used, a.num_permitted, a.reason) == (
            b.cold_start,
            b.history_used,
            b.num_permitted,
            b.reason,
        )


def test_results_are_valid_and_permitted(recs) -> None:
    vl, _ = recs
    reqs = requests(seed=3)
    for req, res in zip(reqs, vl.recommend_batch(reqs), strict=True):
        ids = [r.item_id for r in res]
        assert len(ids) == len(set(ids)) == K
        for r in res:
            assert r.item_id in vl.ids
            assert vl.ids.layout.parse_sid_string(r.semantic_id) == vl.ids.sid(r.item_id)
            assert r.title == vl.ids.title(r.item_id) and r.score <= 0
        assert [r.score for r in res] == sorted((r.score for r in res), reverse=True)
        assert not set(ids) & set(req.exclude or [])
        if req.exclude_history:
            assert not set(ids) & set(req.history)
        if req.allow is not None:
            assert set(ids) <= set(req.allow)


def test_small_allow_set_returns_fewer_with_a_reason(recs) -> None:
    vl, hf = recs
    allow = ["tt010", "tt020", "tt030", "tt040"]
    history = ["tt040", "tt001"]
    res = vl.recommend(history, k=K, allow=allow)  # tt040 is in the history, so excluded
    assert sorted(r.item_id for r in res) == ["tt010", "tt020", "tt030"]
    assert res.num_permitted == 3 and "only 3" in res.reason
    ref = hf.recommend(history, k=K, allow=allow)
    assert [r.item_id for r in res] == [r.item_id for r in ref]
    np.testing.assert_allclose([r.score for r in res], [r.score for r in ref], atol=1e-3, rtol=0)
    # scores are renormalised over the permitted titles: their probabilities sum to 1
    assert abs(np.logaddexp.reduce([r.score for r in res])) < 1e-4
    empty = vl.recommend(history, k=K, allow=["tt040"])
    assert len(empty) == 0 and empty.num_permitted == 0 and "no title" in empty.reason


def test_batch_composition_does_not_change_results(recs) -> None:
    vl, _ = recs
    reqs = requests(seed=4)
    together = vl.recommend_batch(reqs)
    alone = [vl.recommend_batch([r])[0] for r in reqs[:3]]
    for a, b in zip(alone, together):
        assert [r.item_id for r in a] == [r.item_id for r in b]
        np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=1e-5, rtol=0)


def test_a_title_token_folder_gives_the_same_lists_on_both_backends(tmp_path_factory) -> None:
    """A model reading histories as title tokens (composed rows baked into a plain Llama): vLLM
    loads the folder as it is and serves what transformers serves."""
    from tests.serving.tiny_model import write_tiny_model

    folder = write_tiny_model(tmp_path_factory.mktemp("title_model"), seed=3, history_tokens="titles")
    common = dict(num_beams=K, max_k=10, max_batch=16)
    hf = Recommender.from_pretrained(folder, backend="transformers", **common)
    assert hf.encoder.tokens_per_title == 1
    vl = Recommender.from_pretrained(folder, backend="vllm", enforce_eager=True, kv_cache_gib=0.25, **common)
    try:
        reqs = [r for r in requests(seed=4) if r.canvas in ("home", "t2t")]
        for a, b in zip(vl.recommend_batch(reqs), hf.recommend_batch(reqs), strict=True):
            assert [r.item_id for r in a] == [r.item_id for r in b]
            np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=1e-3, rtol=0)
        # the title head: the same top titles and log-probs on both engines, under restrictions
        prompts = [p.prompt for p in map(hf.prepare, reqs)]
        views = [p.view for p in map(hf.prepare, reqs)]
        for a, b in zip(
            vl.backend.titles(prompts, K, views), hf.backend.titles(prompts, K, views), strict=True
        ):
            assert a.rows == b.rows and len(a.rows) == K
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-3, rtol=0)
    finally:
        vl.close()
    # the home row fused with the title head: the same lists on both backends
    common["title_weight"] = 2.0
    hf = Recommender.from_pretrained(folder, backend="transformers", **common)
    vl = Recommender.from_pretrained(folder, backend="vllm", enforce_eager=True, kv_cache_gib=0.25, **common)
    try:
        home = [r for r in requests(seed=4) if r.canvas == "home"]
        for a, b in zip(vl.recommend_batch(home), hf.recommend_batch(home), strict=True):
            assert [r.item_id for r in a] == [r.item_id for r in b]
    finally:
        vl.close()
