"""A canvas that brings a context field of its own, defined in this file alone, served end to end.

"mood-row" (collection token, no adapter) takes a ``mood`` field no built-in canvas has: it is
encoded as text like a theme and restricts the answer to the mood's titles. Registered before the
engine and the app are built, it is served by ``Recommender`` (``mood=`` keyword) and over HTTP,
where the request bodies and their OpenAPI schema carry ``mood``; an unknown field is a 422 that
lists the context fields, a misplaced one a 400 naming its canvas. The request's own fields are the
ones ``CanvasSpec`` refuses as context fields (``REQUEST_FIELDS``).
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from prompt_tuning.canvases import (
    REQUEST_FIELDS,
    CanvasContext,
    CanvasSpec,
    Examples,
    canvas_names,
    register,
    unregister,
)
from serving.api import CompletionRequest, RecommendationsRequest, request_models
from serving.prompts import RequestError
from serving.recommender import RecommendationRequest, Recommender
from serving.server import ServerSettings, create_app
from tests.serving.servers import assert_bad_requests, served_app

KEY = "context-key"
COMMON = dict(num_beams=5, max_k=10, max_batch=16)
HISTORY = ["m01", "m12", "m26"]
GENRE = {f"m{i:02d}": ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")[i % 6] for i in range(40)}


def _never(src) -> Examples:
    raise AssertionError("not trained here")


MOOD_ROW = CanvasSpec(
    name="mood-row",
    token="collection",
    build_examples=_never,
    context=CanvasContext("mood", "text", "how the member feels, in words"),
    candidates=lambda index, mood: index.for_theme(mood),
)


@pytest.fixture(scope="module")
def rec(tiny_exported_dir) -> Recommender:
    register(MOOD_ROW)
    r = Recommender.from_pretrained(tiny_exported_dir, backend="transformers", **COMMON)
    try:
        yield r
    finally:
        r.close()
        for name in (MOOD_ROW.name, "weather-row"):
            if name in canvas_names():
                unregister(name)


@pytest.fixture(scope="module")
def http_clients(rec):
    """The app over ``rec`` on a free loopback port; (authenticated httpx client, openai client)."""
    with served_app(create_app(rec, ServerSettings(api_key=KEY)), KEY) as (_, http, client):
        yield http, client


def ids_of(res) -> list[str]:
    return [r.item_id for r in res]


def test_the_python_api_takes_the_new_field_by_name(rec) -> None:
    res = rec.recommend(HISTORY, canvas="mood-row", mood="Horror", k=4)
    assert len(res) == 4 and all(GENRE[i] == "Horror" for i in ids_of(res))
    assert (res.context, res.soft_prompt) == ("mood", False)
    assert res.candidates.startswith("catalog theme 'Horror'")
    # encoded like the collection canvas's theme: same canvas token, same text encoding
    mood = rec.prepare(RecommendationRequest(HISTORY, canvas="mood-row", mood="Horror"))
    theme = rec.prepare(RecommendationRequest(HISTORY, canvas="collection", theme="Horror"))
    assert mood.prompt == theme.prompt
    as_mapping = rec.recommend_batch([{"history": HISTORY, "canvas": "mood-row", "k": 4, "mood": "Horror"}])
    assert ids_of(as_mapping[0]) == ids_of(res)
    listed = RecommendationRequest(HISTORY, canvas="mood-row", context={"mood": "Horror"})
    assert listed == RecommendationRequest(HISTORY, canvas="mood-row", mood="Horror")
    assert listed.context == {"mood": "Horror"}


@pytest.mark.parametrize(
    "kwargs, param, words",
    [
        (
            dict(canvas="mood-row", moood="calm"),
            "moood",
            "'moood' is the context field of no registered canvas; the context fields are: "
            "query (search); source (t2t); theme (collection); mood (mood-row)",
        ),
        (dict(canvas="mood-row", moood=None), "moood", "'moood' is the context field of no registered"),
        (dict(canvas="home", mood="calm"), "mood", "mood applies to the mood-row canvas only, not home"),
        (dict(canvas="mood-row", theme="Horror"), "theme", "theme applies to the collection canvas only"),
        (dict(canvas="mood-row", mood=" "), "mood", "mood must be a non-empty string"),
    ],
)
def test_unknown_and_misplaced_fields_are_value_errors_naming_them(rec, kwargs, param, words) -> None:
    with pytest.raises(RequestError) as e:
        rec.recommend(HISTORY, **kwargs)
    assert words in str(e.value) and e.value.param == param
    assert isinstance(e.value, ValueError)


def test_a_field_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match=r"context field\(s\) \['mood'\] given twice"):
        RecommendationRequest(HISTORY, canvas="mood-row", mood="calm", context={"mood": "tense"})


def test_the_request_fields_canvases_may_not_take_are_the_requests_own() -> None:
    own = {f.name for f in dataclasses.fields(RecommendationRequest)}
    named = inspect.signature(Recommender.recommend).parameters.values()
    own |= {p.name for p in named if p.kind is not p.VAR_KEYWORD}  # **options: the request's fields
    own |= set(CompletionRequest.model_fields) | set(RecommendationsRequest.model_fields)
    assert own <= REQUEST_FIELDS, sorted(own - REQUEST_FIELDS)


def test_the_bodies_are_built_from_the_registry(rec) -> None:
    """Every registered canvas's field, strict and bounded; a name pydantic itself uses is fine."""
    json_row = CanvasSpec(
        name="json-row", token="home", build_examples=_never, context=CanvasContext("json", "title")
    )
    register(json_row)
    try:
        bodies = request_models()
    finally:
        unregister(json_row.name)
    for model in bodies:
        assert list(model.context_attributes) == ["query", "source", "theme", "mood", "json"]
    body = bodies.recommendations.model_validate({"history": [], "canvas": "json-row", "json": "m01"})
    assert body.contexts() == {"json": "m01"} and callable(body.model_dump_json)
    assert "mood" not in RecommendationsRequest.model_fields  # the base is left as it was


def test_the_server_serves_the_new_field(rec, http_clients) -> None:
    http, client = http_clients
    want = ids_of(rec.recommend(HISTORY, canvas="mood-row", mood="Horror", k=4, user_id="u1"))
    body = {"history": HISTORY, "canvas": "mood-row", "mood": "Horror", "k": 4, "user_id": "u1"}
    res = http.post("/v1/recommendations", json=body)
    assert res.status_code == 200, res.text
    got = res.json()
    assert [i["item_id"] for i in got["items"]] == want and got["model"] == "sidrec-mood-row"
    assert got["context"] == "mood" and got["candidates"].startswith("catalog theme 'Horror'")
    out = client.completions.create(
        model="sidrec-mood-row", prompt=" ".join(HISTORY), n=4, user="u1", extra_body={"mood": "Horror"}
    )
    assert [c.text for c in out.choices] == want and out.sidrec[0]["context"] == "mood"
    card = {m.id: m for m in client.models.list()}["sidrec-mood-row"]
    assert (card.context, card.context_required, card.soft_prompt) == ("mood", False, False)
    # the OpenAPI schema shows the field, described by its canvas, on both bodies
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    for name in ("CompletionRequest", "RecommendationsRequest"):
        props = schemas[name]["properties"]
        assert props["mood"]["description"] == "mood-row canvas: how the member feels, in words"
        assert props["query"]["description"] == "search canvas: the query text"
        assert {"type": "string", "maxLength": 1000} in props["mood"]["anyOf"]
        assert not any(p.startswith("ctx_") for p in props)


BAD = [  # (endpoint, body, status, param, words the message must contain)
    (
        "/v1/recommendations",
        {"history": HISTORY, "canvas": "mood-row", "moood": "calm"},
        422,
        "moood",
        "moood: Extra inputs are not permitted (the canvases' context fields: "
        "['query', 'source', 'theme', 'mood'])",
    ),
    (
        "/v1/completions",
        {"model": "sidrec-mood-row", "prompt": "m01", "ctx_mood": "calm"},
        422,
        "ctx_mood",
        "Extra inputs are not permitted",
    ),
    (
        "/v1/completions",
        {"model": "sidrec-home", "prompt": "m01", "mood": "calm"},
        400,
        "mood",
        "mood applies to the mood-row canvas only, not home",
    ),
    (
        "/v1/recommendations",
        {"history": [], "canvas": "mood-row", "mood": 3},
        422,
        "mood",
        "mood: Input should be a valid string",
    ),
    (
        "/v1/recommendations",
        {"history": [], "canvas": "mood-row", "mood": "x" * 1001},
        422,
        "mood",
        "mood: String should have at most 1000 characters",
    ),
]


def test_unknown_and_misplaced_fields_get_a_4xx_naming_them(http_clients) -> None:
    assert_bad_requests(http_clients[0], BAD)


def test_a_field_registered_after_the_server_started_says_so(http_clients) -> None:
    """The bodies are built with the app: a canvas registered later with a new field needs a restart
    (one with a known field is served at once: tests/serving/test_canvas_registry.py)."""
    http, _ = http_clients
    register(
        CanvasSpec(
            name="weather-row",
            token="collection",
            build_examples=_never,
            context=CanvasContext("weather", "text"),
        )
    )
    try:
        r = http.post("/v1/recommendations", json={"history": [], "canvas": "weather-row", "weather": "rain"})
    finally:
        unregister("weather-row")
    assert r.status_code == 422 and r.json()["error"]["param"] == "weather"
    assert "canvas(es) ['weather-row'], registered after this server started" in r.json()["error"]["message"]
