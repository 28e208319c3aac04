"""The HTTP server, started on 127.0.0.1 in-process and queried with the openai client and httpx.

Every test runs on both backends: transformers (fast, no vLLM) and vLLM (marked ``vllm``, skipped
when vLLM is not installed). One server per backend for the whole module; expected lists come from a
transformers ``Recommender`` called directly, so the HTTP layer is checked against the Python API.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from serving.recommender import RecommendationRequest, Recommender
from serving.server import ServerSettings, create_app
from serving.worker import EngineWorker, Metrics
from tests.serving.servers import BACKENDS, SMALL_VLLM, served_app
from tests.serving.tiny_model import MAX_HISTORY, NUM_TITLES, UNCATALOGUED, tiny_attributes

KEY = "test-key"
MAX_BODY = 4096
TITLES = [f"tt{i:03d}" for i in range(NUM_TITLES)]
COMMON = dict(num_beams=5, max_k=10, max_batch=16)


@dataclass
class Served:
    base: str
    backend: str
    http: httpx.Client  # authenticated
    client: openai.OpenAI


@pytest.fixture(scope="module")
def ref(tiny_model_dir, tiny_attributes_table) -> Recommender:
    """The Python API on the reference backend: what every HTTP answer must equal."""
    return Recommender.from_pretrained(
        tiny_model_dir, backend="transformers", attributes=tiny_attributes_table, **COMMON
    )


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, tiny_model_dir, tiny_attributes_table):
    extra = SMALL_VLLM if request.param == "vllm" else {}
    rec = Recommender.from_pretrained(
        tiny_model_dir, backend=request.param, attributes=tiny_attributes_table, **COMMON, **extra
    )
    app = create_app(rec, ServerSettings(api_key=KEY, max_body_bytes=MAX_BODY, max_prompts=4))
    try:
        with served_app(app, KEY) as (base, http, client):
            yield Served(base, request.param, http, client)
    finally:
        rec.close()


def texts(completion) -> list[str]:
    return [c.text for c in completion.choices]


def assert_same(got_ids: list[str], got_scores: list[float], want) -> None:
    assert got_ids == [r.item_id for r in want]
    np.testing.assert_allclose(got_scores, [r.score for r in want], atol=1e-3, rtol=0)


def test_models_are_the_canvas_adapters(served) -> None:
    assert [m.id for m in served.client.models.list()] == [
        "sidrec-home",
        "sidrec-search",
        "sidrec-t2t",
        "sidrec-collection",
    ]


def test_completion_with_the_openai_client_equals_the_python_api(served, ref) -> None:
    history = TITLES[1:4]
    out = served.client.completions.create(
        model="sidrec-home", prompt=" ".join(history), n=5, extra_body={"user_id": "m7"}
    )
    want = ref.recommend(history, canvas="home", k=5, user_id="m7")
    assert_same(texts(out), [c.score for c in out.choices], want)
    for i, c in enumerate(out.choices):
        assert c.index == i and c.prompt_index == 0 and c.finish_reason == "stop"
        assert c.title == ref.ids.title(c.text)
        assert ref.ids.layout.parse_sid_string(c.semantic_id) == ref.ids.sid(c.text)
    assert not set(texts(out)) & set(history)
    L = ref.ids.sid_length
    # bos + member token + canvas token + 3 titles of L tokens; 5 titles of L tokens come back
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (3 + 3 * L, 5 * L)
    assert out.model == "sidrec-home" and out.sidrec[0]["cold_start"] is False


def test_prompt_spellings_and_batches(served, ref) -> None:
    history = [TITLES[5], TITLES[9]]
    tokens = "".join(ref.ids.layout.sid_string(ref.ids.sid(t)) for t in history)
    spellings = [f"{history[0]} {history[1]}", f"{history[0]},{history[1]}", json.dumps(history), tokens]
    answers = [texts(served.client.completions.create(model="sidrec-t2t", prompt=p, n=4)) for p in spellings]
    assert answers[0] == [r.item_id for r in ref.recommend(history, canvas="t2t", k=4)]
    assert all(a == answers[0] for a in answers)
    batch = served.client.completions.create(model="sidrec-t2t", prompt=[spellings[0], TITLES[20]], n=4)
    assert [c.prompt_index for c in batch.choices] == [0] * 4 + [1] * 4
    assert [c.index for c in batch.choices] == list(range(8))
    assert texts(batch)[:4] == answers[0]
    assert texts(batch)[4:] == [r.item_id for r in ref.recommend([TITLES[20]], canvas="t2t", k=4)]


def test_switching_the_canvas_adapter_changes_the_list(served, ref) -> None:
    history = " ".join(TITLES[30:34])
    got = {
        m: texts(served.client.completions.create(model=f"sidrec-{m}", prompt=history, n=6))
        for m in ("home", "search", "collection")
    }
    for canvas, ids in got.items():
        assert ids == [r.item_id for r in ref.recommend(TITLES[30:34], canvas=canvas, k=6)]
    assert got["home"] != got["search"] and got["home"] != got["collection"]


def test_rules_are_respected_over_http(served, ref) -> None:
    rules = {
        "exclude_attributes": {"categories": ["Comedy"]},
        "max_year": 2000,
        "exclude_titles": [TITLES[7]],
        "diversity": {"max_per_group": 2},
    }
    out = served.client.completions.create(
        model="sidrec-home", prompt="tt001 tt002", n=6, extra_body={"rules": rules}
    )
    assert_same(texts(out), [c.score for c in out.choices], ref.recommend(TITLES[1:3], k=6, rules=rules))
    assert len(out.choices) == 6 and out.sidrec[0]["reason"] is None
    for t in texts(out):
        genres, year = ([], None) if t == UNCATALOGUED else tiny_attributes(TITLES.index(t))
        assert "Comedy" not in genres and year is not None and year <= 2000 and t != TITLES[7]
    assert max(np.bincount([ref.ids.sid(t)[0] for t in texts(out)])) <= 2
    assert out.sidrec[0]["rules_applied"] == ["exclude_titles", "exclude_attributes", "max_year", "diversity"]
    # too few titles left: fewer, with the reason
    few = served.http.post(
        "/v1/recommendations",
        json={
            "history": [],
            "k": 10,
            "rules": {"require_attributes": {"categories": ["Horror"]}, "min_year": 2000},
        },
    )
    assert few.status_code == 200 and 0 < len(few.json()["items"]) < 10
    assert few.json()["reason"].startswith(f"only {len(few.json()['items'])} title(s) permitted")


def test_plain_json_endpoint(served, ref) -> None:
    body = {
        "history": TITLES[40:43],
        "canvas": "search",
        "k": 7,
        "user_id": "m1",
        "rules": {"allow_titles": TITLES[:30]},
    }
    res = served.http.post("/v1/recommendations", json=body)
    assert res.status_code == 200, res.text
    data = res.json()
    want = ref.recommend(TITLES[40:43], canvas="search", k=7, user_id="m1", rules=body["rules"])
    assert_same([i["item_id"] for i in data["items"]], [i["score"] for i in data["items"]], want)
    assert [i["rank"] for i in data["items"]] == list(range(1, 8))
    assert set(i["item_id"] for i in data["items"]) <= set(TITLES[:30])
    assert (data["model"], data["canvas"], data["k"], data["num_permitted"]) == (
        "sidrec-search",
        "search",
        7,
        30,
    )


def test_api_key_is_required_on_v1(served) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(f"{served.base}/v1/recommendations", json={"history": []}, headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert httpx.get(f"{served.base}/v1/models").status_code == 401
    bad = openai.OpenAI(base_url=f"{served.base}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="sidrec-home", prompt="tt001", n=2)
    assert httpx.get(f"{served.base}/health").status_code == 200  # probes need no key


BAD = [  # (endpoint, body, status, words the message must contain)
    ("/v1/recommendations", {"history": ["tt001", "nope"]}, 400, "unknown title id(s) in history: 'nope'"),
    ("/v1/completions", {"model": "sidrec-home", "prompt": "tt001 ghost"}, 400, "'ghost'"),
    ("/v1/completions", {"model": "sidrec-home", "prompt": "<a_0><b_0>"}, 400, "whole number"),
    ("/v1/completions", {"model": "sidrec-home", "prompt": "<bos><a_0>"}, 400, "not a semantic-ID code"),
    ("/v1/completions", {"model": "sidrec-home", "prompt": "[tt001"}, 400, "not a JSON list"),
    ("/v1/completions", {"model": "sidrec-home", "prompt": "tt001", "stream": True}, 400, "stream"),
    ("/v1/completions", {"model": "sidrec-home", "prompt": ["tt001"] * 5}, 400, "1..4 histories"),
    (
        "/v1/recommendations",
        {"history": [], "rules": {"exclude_genre": ["x"]}},
        422,
        "rules: unknown rule(s)",
    ),
    (
        "/v1/recommendations",
        {"history": [], "rules": {"max_year": "1990"}},
        422,
        "max_year must be an integer",
    ),
    ("/v1/recommendations", {"history": [], "rules": "no horror"}, 422, "rules"),
    ("/v1/recommendations", {"history": [], "fresh_share": 2}, 422, "fresh_share"),
    (
        "/v1/recommendations",
        {"history": [], "rules": {"exclude_attributes": {"genre": ["Horror"]}}},
        400,
        "unknown attribute 'genre'",
    ),
    (
        "/v1/recommendations",
        {"history": [], "rules": {"exclude_attributes": {"categories": ["Horor"]}}},
        400,
        "no title has categories = 'Horor'",
    ),
    ("/v1/completions", {"model": "gpt-4", "prompt": "tt001"}, 404, "the model 'gpt-4' does not exist"),
    ("/v1/recommendations", {"history": [], "canvas": "homepage"}, 404, "unknown canvas 'homepage'"),
    ("/v1/recommendations", {"history": [], "k": 1000}, 400, "k must be an integer in 1..10"),
    ("/v1/completions", {"model": "sidrec-home", "prompt": "tt001", "n": 0}, 400, "k must be an integer"),
    ("/v1/recommendations", {"history": [], "k": "5"}, 422, "k: Input should be a valid integer"),
    ("/v1/recommendations", {"history": "tt001"}, 422, "history: Input should be a valid list"),
    ("/v1/completions", {"model": "sidrec-home", "prompt": 17}, 422, "prompt"),
    ("/v1/completions", {"model": "sidrec-home", "prompt": "tt001", "temperature": 0.7}, 422, "temperature"),
    ("/v1/recommendations", {"history": TITLES * 10}, 413, "exceeds the 4096-byte limit"),
]


def test_bad_input_gets_a_4xx_naming_the_problem_and_the_server_stays_up(served) -> None:
    for path, body, status, words in BAD:
        r = served.http.post(path, json=body)
        assert r.status_code == status, (path, body, r.text)
        assert words in r.json()["error"]["message"], (body, r.json())
        assert r.json()["error"]["code"] == status
    r = served.http.post(
        "/v1/recommendations", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        served.client.completions.create(model="sidrec-nope", prompt="tt001", n=2)
    with pytest.raises(openai.BadRequestError, match="k must be an integer in 1..10"):
        served.client.completions.create(model="sidrec-home", prompt="tt001", n=50)
    assert served.http.get("/health").json()["status"] == "ok"
    ok = served.http.post("/v1/recommendations", json={"history": TITLES[:2], "k": 3})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3
    same = served.http.post("/v1/recommendations", json={"history": TITLES[:2], "k": 3, "fresh_share": 0.5})
    assert same.json()["items"] == ok.json()["items"]  # a folder without added titles has none fresh
    metrics = served.http.get("/metrics").text
    assert 'sidrec_http_errors_total{code="413",endpoint="/v1/recommendations"}' in metrics
    assert 'sidrec_http_request_duration_seconds_count{endpoint="/v1/completions"}' in metrics


def test_empty_and_too_long_histories_are_answered_and_flagged(served, ref) -> None:
    cold = served.http.post("/v1/recommendations", json={"history": [], "k": 5}).json()
    assert cold["cold_start"] and len(cold["items"]) == 5 and "cold start" in cold["warnings"][0]
    history = TITLES[10 : 10 + MAX_HISTORY + 3]
    out = served.client.completions.create(model="sidrec-home", prompt=" ".join(history), n=5)
    info = out.sidrec[0]
    assert (info["history_used"], info["history_dropped"]) == (MAX_HISTORY, 3)
    assert f"most recent {MAX_HISTORY} (3 older left out, still excluded)" in info["warnings"][0]
    assert texts(out) == [r.item_id for r in ref.recommend(history, k=5)]


def test_concurrent_requests_all_get_their_own_answer(served, ref) -> None:
    histories = [TITLES[i : i + 3] for i in range(0, 36, 3)]  # 12 requests in flight at once

    def ask(h: list[str]) -> list[str]:
        r = served.http.post("/v1/recommendations", json={"history": h, "k": 4})
        assert r.status_code == 200, r.text
        return [i["item_id"] for i in r.json()["items"]]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(ask, histories))
    assert got == [[r.item_id for r in ref.recommend(h, k=4)] for h in histories]


def test_engine_worker_batches_queued_requests_and_isolates_bad_ones(ref) -> None:
    """Jobs queued before the thread starts are taken in one engine call; a bad job fails alone."""
    metrics = Metrics()
    worker = EngineWorker(ref, max_queue=8, metrics=metrics)
    jobs = [[RecommendationRequest(TITLES[i : i + 2], k=3)] for i in (0, 10)] + [
        [RecommendationRequest(["missing"], k=3)],
        [RecommendationRequest([TITLES[20]], k=3), RecommendationRequest([], canvas="search", k=2)],
    ]
    futures = [worker.submit(j) for j in jobs]
    worker.start()
    try:
        results = [f.exception(timeout=60) or f.result() for f in futures]
    finally:
        worker.stop()
    assert isinstance(results[2], ValueError) and "'missing'" in str(results[2])
    for job, res in zip(jobs[:2] + jobs[3:], results[:2] + results[3:]):
        assert [[x.item_id for x in r] for r in res] == [
            [x.item_id for x in ref.recommend_batch([q])[0]] for q in job
        ]
    batches = metrics.registry.get_sample_value("sidrec_engine_batch_requests_count")
    assert batches == 1 and metrics.registry.get_sample_value("sidrec_engine_batch_requests_sum") == 4


def test_serve_runs_a_server_process_with_catalog_rules(tiny_model_dir, tiny_catalog_dir, tmp_path) -> None:
    """``serve`` as ``sidrec serve`` calls it: key from $SIDREC_API_KEY, attributes from --data."""
    with socket.socket() as probe:  # a free loopback port (released just before the server binds it)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        f"from serving.server import serve\n"
        f"serve({str(tiny_model_dir)!r}, host='127.0.0.1', port={port}, backend='transformers', "
        f"data_dir={str(tiny_catalog_dir.parent)!r}, dataset={tiny_catalog_dir.name!r}, "
        f"log_level='warning', num_beams=5, max_k=10)\n"
    )
    env = dict(
        os.environ,
        SIDREC_API_KEY=KEY,
        SIDREC_CACHE_DIR=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # at most ~120 s for imports and model loading on a busy machine
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {(tmp_path / 'server.log').read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail("server did not become healthy")
        health = httpx.get(f"{base}/health").json()
        assert health["backend"] == "transformers" and health["attributes"] == ["categories", "year"]
        assert httpx.get(f"{base}/v1/models").status_code == 401
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)
        out = client.completions.create(
            model="sidrec-home",
            prompt="tt001",
            n=5,
            extra_body={"rules": {"exclude_attributes": {"categories": ["Drama"]}}},
        )
        assert len(out.choices) == 5
        assert all(
            c.text == UNCATALOGUED or "Drama" not in tiny_attributes(TITLES.index(c.text))[0]
            for c in out.choices
        )
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_serve_reads_set_keys_by_path_or_name_and_refuses_unknown_ones(tiny_model_dir) -> None:
    """``sidrec serve --set``: a dotted path or a unique name reaches a ServingConfig field; an
    unknown key fails before the server starts, listing the keys."""
    from core.overrides import parse_overrides
    from serving.config import ServingConfig
    from serving.server import serve

    extra = parse_overrides(None, ["decoding.num_beams=12", "theme_fill=5", "candidates.fusion_weight=0"])
    c = ServingConfig.create(str(tiny_model_dir), backend="transformers", **extra)
    assert c.decoding.num_beams == 12 and c.candidates == {"theme_fill": 5, "fusion_weight": 0}
    with pytest.raises(ValueError, match="unknown ServingConfig field.*known: model_dir, engine"):
        serve(str(tiny_model_dir), backend="transformers", **parse_overrides(None, ["beam=3"]))
