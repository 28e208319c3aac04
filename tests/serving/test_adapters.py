"""Per-canvas soft prompts served per request, on a tiny exported folder (``tiny_adapters``).

Python API: prompts are the virtual tokens then the canvas's prompt with its context, a canvas switch
changes the list, missing or misplaced contexts are named errors. HTTP (transformers backend): the
model list marks the soft prompts, completions take ``query``/``source``/``theme`` in the extra body,
bad values are 4xx naming the field. vLLM (one engine, marked ``vllm``): the same top-K as the
transformers backend with every canvas's soft prompt and context, over the API and over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import openai
import pytest

from prompt_tuning.canvases import get_canvas
from semantic_ids.layout import SEP
from serving.prompts import RequestError
from serving.recommender import RecommendationRequest, Recommender
from serving.server import ServerSettings, create_app
from tests.serving.servers import SMALL_VLLM, assert_bad_requests, needs_vllm, served_app
from tests.serving.tiny_adapters import NUM_VIRTUAL, TARGETS

KEY = "adapter-key"
COMMON = dict(num_beams=5, max_k=10, max_batch=16)
HISTORY = ["m01", "m12", "m26"]


@pytest.fixture(scope="module")
def rec(tiny_exported_dir) -> Recommender:
    return Recommender.from_pretrained(tiny_exported_dir, backend="transformers", **COMMON)


def ids_of(res) -> list[str]:
    return [r.item_id for r in res]


def rows(rec: Recommender, titles: list[str]) -> list[int]:
    return [rec.ids.index_of(t) for t in titles]


@contextmanager
def serving(rec: Recommender) -> Iterator[tuple[httpx.Client, openai.OpenAI]]:
    """The app over ``rec`` on a free loopback port; (authenticated httpx client, openai client)."""
    with served_app(create_app(rec, ServerSettings(api_key=KEY)), KEY) as (_, http, client):
        yield http, client


# ---------------------------------------------------------------------------- Python API
def test_prompts_are_the_soft_prompt_then_the_canvas_prompt(rec, tiny_exported_dir) -> None:
    from prompt_tuning.canvases import QueryEncoder

    virtual, enc = rec.prompts.virtual, rec.encoder
    assert sorted(virtual) == ["home", "search", "t2t"] and all(
        len(v) == NUM_VIRTUAL for v in virtual.values()
    )
    home = rec.prepare(RecommendationRequest(HISTORY, canvas="home", user_id="u1"))
    assert home.prompt == virtual["home"] + enc.encode(rows(rec, HISTORY), canvas="home", user_id="u1")
    # search: the query as the adapter was trained (lower-cased, anchors mode), through the training
    # path's own QueryEncoder (its disk-cached sentence encoder, not the server's in-memory one)
    context = QueryEncoder(tiny_exported_dir / "semantic_ids", "anchors", 3).encode(["paris"])[0]
    search = rec.prepare(RecommendationRequest(HISTORY, canvas="search", query="  Paris "))
    assert search.prompt == virtual["search"] + enc.encode(
        rows(rec, HISTORY), canvas="search", context=context
    )
    anchors = [rec.ids.item_for_sid(rec.ids.layout.ids_to_sid(context[i : i + 3])) for i in range(0, 9, 3)]
    assert all("Paris" in rec.ids.title(t) for t in anchors)  # lexical anchors come first
    # t2t: the member's history with the source as its newest title, under home's canvas token
    t2t = rec.prepare(RecommendationRequest(HISTORY, canvas="t2t", source="m05", user_id="u1"))
    assert t2t.prompt == virtual["t2t"] + enc.encode(rows(rec, HISTORY) + [5], canvas="home", user_id="u1")
    # inside the source's neighbourhood (nobody watched m05 in the tiny ratings: content alone)
    assert "source 'Midnight Ocean (1985)'" in t2t.candidates and "never watched" in t2t.candidates
    assert t2t.num_permitted == 40 - 1 - len(HISTORY)  # source_candidates (100) > the catalog
    # a source already in the history moves to its end; an anonymous request is the source alone
    again = rec.prepare(RecommendationRequest(HISTORY, canvas="t2t", source=HISTORY[0]))
    assert again.prompt == virtual["t2t"] + enc.encode(rows(rec, HISTORY[1:] + HISTORY[:1]), canvas="home")
    watched = rec.prepare(RecommendationRequest([], canvas="t2t", source="m02"))  # member u0's
    assert "4 most often paired with it, then 35 nearest" in watched.candidates
    alone = rec.prepare(RecommendationRequest([], canvas="t2t", source="m05"))
    assert alone.prompt == virtual["t2t"] + enc.encode([5], canvas="home")
    # collection has no soft prompt: the canvas token, the history and the theme
    coll = rec.prepare(RecommendationRequest(HISTORY, canvas="collection", theme="Comedy"))
    assert coll.prompt[-10] == SEP and coll.prompt[:-10] == enc.encode(
        rows(rec, HISTORY), canvas="collection"
    )


def test_canvas_switch_changes_the_list_and_says_which_adapter_served(rec, tiny_exported_dir) -> None:
    home = rec.recommend(HISTORY, canvas="home", k=6)
    # the search soft prompt's favourite (m17, a "Robot" title) ranks first inside the query's candidates
    search = rec.recommend(HISTORY, canvas="search", query="robot", k=6)
    t2t = rec.recommend(HISTORY, canvas="t2t", source="m05", k=6)
    coll = rec.recommend(HISTORY, canvas="collection", theme="Drama", k=6)
    titles = {c: rec.ids.item_ids[r] for c, r in TARGETS.items()}
    assert (ids_of(home)[0], ids_of(search)[0]) == (titles["home"], titles["search"])
    # t2t fuses the soft prompt's ranking with the source's neighbourhood order: its favourite stays
    assert titles["t2t"] in ids_of(t2t)
    assert len({tuple(ids_of(x)) for x in (home, search, t2t, coll)}) == 4
    assert [(x.canvas, x.soft_prompt, x.context) for x in (home, search, t2t, coll)] == [
        ("home", True, None),
        ("search", True, "query"),
        ("t2t", True, "source"),
        ("collection", False, "theme"),
    ]
    assert not home.warnings and not home.cold_start and "m05" not in ids_of(t2t)  # never the source
    assert not set(ids_of(t2t)) & set(HISTORY)  # the history still excludes
    # the same folder without its soft prompts: the home list is the base model's, and differs
    base = Recommender.from_pretrained(tiny_exported_dir.parent / "base", backend="transformers", **COMMON)
    plain = base.recommend(HISTORY, canvas="home", k=6)
    assert not plain.soft_prompt and ids_of(plain) != ids_of(home)
    # a query changes the search list beyond the soft prompt's favourite
    assert ids_of(rec.recommend([], canvas="search", query="castle", k=6)) != ids_of(
        rec.recommend([], canvas="search", query="jungle", k=6)
    )


def test_t2t_fuses_the_model_with_the_co_engagement_order(rec) -> None:
    from prompt_tuning.candidates import fuse_ranks

    p = rec.prepare(RecommendationRequest(["m09"], canvas="t2t", source="m02", k=5))
    order = p.fuse_order
    fusion_k, weight = rec.fusion_k, rec.fusion_weight  # the served constants (folder: no choice)
    co = [r for r in rec.prompts.candidate_index().co_engagement.of(rec.ids.index_of("m02")).tolist()]
    assert list(order[:4]) == co and len(co) == 4  # m02's co-engaged titles first (member u0's)
    assert (fusion_k, weight, p.want) == (5, 1.0, p.beams)  # the whole beam takes part
    model = rec._search([p], [0])[0]
    res = rec.run([p])[0]
    assert [rec.ids.index_of(t) for t in ids_of(res)] == fuse_ranks(list(model.rows), list(order), 5, 5, 1.0)
    assert [x.score for x in res] == sorted((x.score for x in res), reverse=True)
    assert "m02" not in ids_of(res) and "m09" not in ids_of(res)
    assert res.fused_with == "the candidate set's own order"
    # home fuses the whole-catalog beam with the newest history title's co-engaged titles
    home = rec.prepare(RecommendationRequest(["m09"], canvas="home", k=5))
    co9 = rec.prompts.candidate_index().co_engagement.of(rec.ids.index_of("m09")).tolist()
    assert co9 and list(home.fuse_order) == [r for r in co9 if r != rec.ids.index_of("m09")]
    assert home.want == home.beams and home.view.num_permitted == rec.trie.num_items - 1
    res = rec.run([home])[0]
    assert res.fused_with == f"the titles most often paired with {rec.ids.title('m09')!r}"
    assert [rec.ids.index_of(t) for t in ids_of(res)] == fuse_ranks(
        list(rec._search([home], [0])[0].rows), list(home.fuse_order), 5, 5, 1.0
    )
    # a longer history: the counts of its newest titles summed (``of_recent``), the history left out
    table = rec.prompts.candidate_index().co_engagement
    two = rec.prepare(RecommendationRequest(["m02", "m09"], canvas="home", k=5))
    rows = [rec.ids.index_of(t) for t in ("m02", "m09")]
    assert list(two.fuse_order) == table.of_recent(rows) and not set(rows) & set(two.fuse_order)
    assert rec.run([two])[0].fused_with.endswith(f"{rec.ids.title('m09')!r} and the 1 title(s) before it")
    keep = rec.prepare(RecommendationRequest(["m02", "m09"], canvas="home", k=5, exclude_history=False))
    assert list(keep.fuse_order) == table.of_recent(rows, exclude_history=False)
    coll = rec.prepare(RecommendationRequest(["m09"], canvas="collection", theme="Drama", k=5))
    assert coll.fuse_order is None and coll.want == 5 and rec.run([coll])[0].fused_with is None


def test_t2t_without_source_takes_the_last_title_and_says_so(rec) -> None:
    res = rec.recommend(HISTORY, canvas="t2t", k=5)
    assert ids_of(res) == ids_of(rec.recommend(HISTORY, canvas="t2t", source=HISTORY[-1], k=5))
    assert res.context == "source" and "last history title 'm26' is the source" in res.warnings[0]
    with pytest.raises(RequestError, match="t2t canvas needs a source title") as e:
        rec.recommend([], canvas="t2t")
    assert e.value.param == "source"


@pytest.mark.parametrize(
    "kwargs, param, words",
    [
        (dict(canvas="search"), "query", "the search canvas needs a query"),
        (dict(canvas="home", query="paris"), "query", "query applies to the search canvas only, not home"),
        (
            dict(canvas="search", theme="Drama", query="x"),
            "theme",
            "theme applies to the collection canvas only",
        ),
        (dict(canvas="search", query="   "), "query", "query must be a non-empty string"),
        (dict(canvas="search", query=5), "query", "query must be a non-empty string, got 5"),
        (dict(canvas="t2t", source="zz9"), "source", "unknown source title id 'zz9'"),
        (dict(canvas="collection", theme=""), "theme", "theme must be a non-empty string"),
    ],
)
def test_missing_and_misplaced_contexts_are_named(rec, kwargs, param, words) -> None:
    with pytest.raises(RequestError, match=words) as e:
        rec.recommend(HISTORY, k=3, **kwargs)
    assert e.value.param == param
    with pytest.raises(RequestError, match=f"^request 1: {words}") as e:  # batches keep the field
        rec.recommend_batch(
            [RecommendationRequest(HISTORY, k=3), RecommendationRequest(HISTORY, k=3, **kwargs)]
        )
    assert e.value.param == param


def test_contexts_restrict_the_titles_to_their_candidate_set(rec, tiny_exported_dir) -> None:
    genre = {
        f"m{i:02d}": ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")[i % 6] for i in range(40)
    }
    res = rec.recommend(HISTORY, canvas="collection", theme="comedy", k=5)
    assert len(res) == 5 and all(genre[t] == "Comedy" for t in ids_of(res))
    assert res.candidates == "catalog theme 'Comedy': 7 titles" and res.num_permitted == 6  # m01 watched
    # fewer candidates than k: the list is short and the reason names the context
    short = rec.recommend(HISTORY, canvas="collection", theme="Comedy", k=8)
    assert len(short) == 6 and "the collection context's candidates: catalog theme 'Comedy'" in short.reason
    paris = rec.recommend([], canvas="search", query="pari", k=5)  # a prefix finds the Paris titles
    titles = [r.title for r in paris]
    assert len(paris) == 5 and all("Paris" in t for t in titles), titles
    assert paris.candidates.startswith("query 'pari':")
    # what members wrote about titles travels in the exported folder and is searched too
    heist = rec.recommend([], canvas="search", query="Heist gone wrong", k=5)
    assert ids_of(heist) == ["m33"] and "in its title or tags" in heist.candidates  # every word: m33 alone
    assert set(ids_of(rec.recommend([], canvas="search", query="heist", k=5))) == {"m07", "m33"}
    golden = {f"m{i:02d}" for i in range(40) if "Golden" in rec.ids.title(f"m{i:02d}")}
    assert set(ids_of(rec.recommend([], canvas="search", query="gold", k=10))) == golden | {"m33"}
    assert rec.recommend(HISTORY, canvas="home", k=5).candidates is None
    # the switch off: contexts only add prompt tokens, every title is eligible again
    off = Recommender.from_pretrained(
        tiny_exported_dir, backend="transformers", candidate_sets=False, **COMMON
    )
    loose = off.recommend(HISTORY, canvas="collection", theme="Comedy", k=8)
    assert loose.candidates is None and loose.num_permitted == 37 and len(loose) == 8


def test_query_encoder_is_built_once(tiny_exported_dir, monkeypatch) -> None:
    import serving.prompts as prompts

    built = []

    class Counting(prompts.QueryEncoder):
        def __init__(self, *args, **kwargs) -> None:
            built.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(prompts, "QueryEncoder", Counting)  # where serving builds it
    fresh = Recommender.from_pretrained(tiny_exported_dir, backend="transformers", **COMMON)
    assert not built  # lazily: loading the folder builds none
    fresh.recommend_batch(
        [RecommendationRequest([], canvas="search", query=q, k=2) for q in ("paris", "robot", "paris")]
    )
    fresh.recommend(HISTORY, canvas="collection", theme="Horror", k=2)  # same mode: same encoder
    assert len(built) == 1


def test_a_plain_folder_keeps_todays_behaviour(tiny_model_dir) -> None:
    """No adapters.json: no soft prompt, contexts optional; a query needs a text-capable ID artifact."""
    plain = Recommender.from_pretrained(tiny_model_dir, backend="transformers", **COMMON)
    res = plain.recommend(["tt001", "tt002"], canvas="search", k=4)
    assert len(res) == 4 and not res.soft_prompt and res.context is None
    t2t = plain.prepare(RecommendationRequest(["tt001"], canvas="t2t", source="tt009"))
    assert t2t.prompt == plain.encoder.encode(
        [plain.ids.index_of(t) for t in ("tt001", "tt009")], canvas="home"
    )
    # an ID artifact without text embeddings has no content neighbours: the whole catalog, and why
    assert t2t.candidates is None and "decodes over the whole catalog" in t2t.warnings[0]
    with pytest.raises(RequestError, match="cannot take a query: its ID artifact has no quantizer"):
        plain.recommend(["tt001"], canvas="search", query="paris")


# ---------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def http_clients(rec):
    with serving(rec) as clients:
        yield clients


def test_models_mark_the_soft_prompts(http_clients) -> None:
    http, client = http_clients
    cards = {m.id: m for m in client.models.list()}
    assert list(cards) == ["sidrec-home", "sidrec-search", "sidrec-t2t", "sidrec-collection"]
    got = {i: (m.soft_prompt, m.num_virtual_tokens, m.context, m.context_required) for i, m in cards.items()}
    assert got == {
        "sidrec-home": (True, NUM_VIRTUAL, None, False),
        "sidrec-search": (True, NUM_VIRTUAL, "query", True),
        "sidrec-t2t": (True, NUM_VIRTUAL, "source", False),
        "sidrec-collection": (False, 0, "theme", False),
    }
    assert http.get("/health").json()["soft_prompts"] == ["home", "search", "t2t"]


def test_search_completion_with_a_query(http_clients, rec) -> None:
    http, client = http_clients
    want = ids_of(rec.recommend(HISTORY[:2], canvas="search", query="dragon", k=5, user_id="u3"))
    out = client.completions.create(
        model="sidrec-search", prompt=" ".join(HISTORY[:2]), n=5, user="u3", extra_body={"query": "dragon"}
    )
    assert [c.text for c in out.choices] == want
    assert {k: out.sidrec[0][k] for k in ("canvas", "soft_prompt", "context")} == {
        "canvas": "search",
        "soft_prompt": True,
        "context": "query",
    }
    plain = http.post(
        "/v1/completions",
        json={
            "model": "sidrec-search",
            "prompt": " ".join(HISTORY[:2]),
            "n": 5,
            "user": "u3",
            "query": "dragon",
        },
    )
    assert plain.status_code == 200 and [c["text"] for c in plain.json()["choices"]] == want
    body = {"history": HISTORY[:2], "canvas": "search", "k": 5, "user_id": "u3", "query": "dragon"}
    res = http.post("/v1/recommendations", json=body).json()
    assert (
        [i["item_id"] for i in res["items"]] == want
        and res["soft_prompt"]
        and res["model"] == "sidrec-search"
    )
    # t2t over completions: the prompt's last title is the source, with a warning
    t2t = client.completions.create(model="sidrec-t2t", prompt="m05", n=4)
    assert [c.text for c in t2t.choices] == ids_of(rec.recommend(["m05"], canvas="t2t", k=4))
    assert "no source given" in t2t.sidrec[0]["warnings"][0] and t2t.sidrec[0]["cold_start"] is False
    theme = http.post(
        "/v1/recommendations", json={"history": HISTORY, "canvas": "collection", "theme": "Drama", "k": 3}
    ).json()
    assert [i["item_id"] for i in theme["items"]] == ids_of(
        rec.recommend(HISTORY, canvas="collection", theme="Drama", k=3)
    )


BAD = [  # (endpoint, body, status, param, words the message must contain)
    ("/v1/completions", {"model": "sidrec-search", "prompt": "m01"}, 400, "query", "needs a query"),
    ("/v1/recommendations", {"history": [], "canvas": "search"}, 400, "query", "needs a query"),
    (
        "/v1/completions",
        {"model": "sidrec-home", "prompt": "m01", "query": "paris"},
        400,
        "query",
        "query applies to the search canvas only",
    ),
    ("/v1/completions", {"model": "sidrec-search", "prompt": "m01", "query": " "}, 400, "query", "non-empty"),
    (
        "/v1/completions",
        {"model": "sidrec-search", "prompt": "m01", "query": 7},
        422,
        "query",
        "query: Input should be a valid string",
    ),
    (
        "/v1/completions",
        {"model": "sidrec-search", "prompt": "m01", "query": "x" * 1001},
        422,
        "query",
        "query: String should have at most 1000 characters",
    ),
    (
        "/v1/recommendations",
        {"history": [], "canvas": "t2t", "source": "nope"},
        400,
        "source",
        "unknown source title id 'nope'",
    ),
    ("/v1/recommendations", {"history": [], "canvas": "t2t"}, 400, "source", "needs a source title"),
    (
        "/v1/recommendations",
        {"history": [], "canvas": "search", "query": "x", "theme": "Drama"},
        400,
        "theme",
        "theme applies to the collection canvas only",
    ),
    (
        "/v1/recommendations",
        {"history": [], "canvas": "collection", "theme": ["Drama"]},
        422,
        "theme",
        "theme: Input should be a valid string",
    ),
]


def test_bad_contexts_get_a_4xx_naming_the_field(http_clients) -> None:
    http, client = http_clients
    assert_bad_requests(http, BAD)
    with pytest.raises(openai.BadRequestError, match="needs a query"):
        client.completions.create(model="sidrec-search", prompt="m01", n=2)
    assert http.get("/health").json()["status"] == "ok"
    ok = client.completions.create(model="sidrec-search", prompt="", n=2, extra_body={"query": "golden"})
    assert len(ok.choices) == 2


# ---------------------------------------------------------------------------- vLLM parity
def parity_requests() -> list[RecommendationRequest]:
    """Every canvas, with and without members, histories and contexts (and the t2t fallback)."""
    R = RecommendationRequest
    return [
        R(HISTORY, "home", 5),
        R(["m07"], "home", 5, user_id="u2"),
        R([], "search", 5, query="paris"),
        R(HISTORY, "search", 5, user_id="u1", query="electric"),
        R(HISTORY, "t2t", 5, source="m33"),
        R(["m09", "m20"], "t2t", 5),
        R(HISTORY, "collection", 5, theme="Comedy"),
        R(["m02"], "collection", 5),
        R(HISTORY, "search", 5, query="harbor", exclude=["m17"]),
    ]


@needs_vllm
def test_vllm_serves_the_soft_prompts_like_transformers(tiny_exported_dir, rec) -> None:
    vl = Recommender.from_pretrained(tiny_exported_dir, backend="vllm", **SMALL_VLLM, **COMMON)
    try:
        reqs = parity_requests()
        for req, a, b in zip(reqs, vl.recommend_batch(reqs), rec.recommend_batch(reqs), strict=True):
            spec = get_canvas(req.canvas)
            fused = spec.fuse_co_engaged or spec.fuse_candidate_order  # reciprocal ranks tie exactly
            assert len(b) == 5 and (fused or min(-np.diff([r.score for r in b])) > 1e-4), (req, b)
            assert ids_of(a) == ids_of(b), req
            np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=1e-3, rtol=0)
            assert (a.soft_prompt, a.context, a.warnings, a.prompt_tokens, a.candidates) == (
                b.soft_prompt,
                b.context,
                b.warnings,
                b.prompt_tokens,
                b.candidates,
            )
        with serving(vl) as (http, client):
            out = client.completions.create(
                model="sidrec-search", prompt="m01 m12", n=5, extra_body={"query": "dragon"}
            )
            assert [c.text for c in out.choices] == ids_of(
                rec.recommend(["m01", "m12"], canvas="search", query="dragon", k=5)
            )
            assert (
                http.post("/v1/completions", json={"model": "sidrec-search", "prompt": "m01"}).status_code
                == 400
            )
    finally:
        vl.close()
