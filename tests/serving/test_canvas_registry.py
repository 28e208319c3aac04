"""A canvas defined in this file alone is trained, exported and served end to end.

"new-releases" reuses the foundation model's home token and no context; its own example builder
keeps the next-title examples whose target came out in 2000 or later. It trains with the stage's own
entry point (``prompt_tuning.train.train_canvas``), is exported with the tiny folder's three soft
prompts, and is served by ``Recommender`` (transformers) and over HTTP, where ``/v1/models`` lists
it. "genre-row" (collection token, the ``theme`` field, no soft prompt) is registered after the
engine is loaded and served at once, inside its theme's candidate set. Both are unregistered after
the module, so other tests see the four built-in canvases only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prompt_tuning.canvases import (
    CanvasSource,
    CanvasContext,
    CanvasSpec,
    Examples,
    canvas_names,
    get_canvas,
    held_out_examples,
    next_title_examples,
    register,
    unregister,
)
from serving.prompts import RequestError
from serving.recommender import RecommendationRequest, Recommender
from serving.server import ServerSettings, create_app
from tests.serving.servers import served_app
from tests.serving.tiny_adapters import NUM_VIRTUAL

NEW = "new-releases"
KEY = "registry-key"
COMMON = dict(num_beams=5, max_k=10, max_batch=16)
HISTORY = ["m01", "m12", "m26"]
CUTOFF = 2000  # tinyads titles are 1980..2019, one a year


def new_release_examples(src: CanvasSource) -> Examples:
    """Home's examples (training events; held-out test targets) whose target is from CUTOFF on."""
    new = {
        int(src.sid_rows[r])
        for r, year in enumerate(src.data.catalog["year"])
        if year is not None and year >= CUTOFF and src.sid_rows[r] >= 0
    }
    train = [
        ex for ex in next_title_examples(src.split, src.sid_rows, src.split.max_history) if ex.target in new
    ]
    test = [ex for ex in held_out_examples(src.split, src.sid_rows) if ex.target in new]
    for ex in train + test:
        ex.kind = "new"
    return Examples(train, test, {"new_titles": len(new)})


NEW_RELEASES = CanvasSpec(name=NEW, token="home", build_examples=new_release_examples)
GENRE_ROW = CanvasSpec(
    name="genre-row",
    token="collection",
    context=CanvasContext("theme", "text"),
    build_examples=new_release_examples,  # never trained here
    candidates=lambda index, theme: index.for_theme(theme),
)


@pytest.fixture(scope="module")
def registered():
    register(NEW_RELEASES)
    try:
        yield NEW_RELEASES
    finally:
        for name in (NEW, GENRE_ROW.name):
            if name in canvas_names():
                unregister(name)


@pytest.fixture(scope="module")
def served_dir(registered, tiny_exported_dir, tmp_path_factory) -> Path:
    """The new canvas's soft prompt trained by ``train_canvas``, exported beside the other three."""
    from core.data import load_data
    from prompt_tuning.config import PromptTuningStageConfig
    from prompt_tuning.export import export_adapters
    from prompt_tuning.train import train_canvas

    root = tiny_exported_dir.parent  # tiny_adapters.write_exported_model's folder
    out = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIDREC_CACHE_DIR", str(out / "cache"))
        data = load_data(data_dir=str(root / "data" / "tinyads"), dataset=None)
    config = PromptTuningStageConfig.create(
        canvas=NEW, num_virtual_tokens=NUM_VIRTUAL, lr=0.05, epochs=10, batch_size=4, seed=0
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        adapter = train_canvas(root / "base", data, out / f"adapter_{NEW}", config)
    finally:
        torch.set_num_threads(before)
    adapters = [root / f"adapter_{c}" for c in ("home", "search", "t2t")] + [adapter]
    return export_adapters(root / "base", adapters, out / "served")


@pytest.fixture(scope="module")
def rec(served_dir) -> Recommender:
    r = Recommender.from_pretrained(served_dir, backend="transformers", **COMMON)
    yield r
    r.close()


def test_the_new_canvas_trains_on_its_own_examples(served_dir) -> None:
    from prompt_tuning.adapter import read_adapter

    info = read_adapter(served_dir.parent / f"adapter_{NEW}")
    examples = info.manifest["training"]["examples"]
    assert info.config.canvas == NEW and examples["canvas"] == NEW
    assert examples["train_kinds"] == {"new": examples["train"]} and examples["train"] > 0
    assert examples["new_titles"] == 20 and examples["test"] > 0
    held = info.manifest["training"]["heldout"]
    assert set(held) == {"base", "adapter"} and "recall@10" in held["adapter"]


def test_the_new_canvas_is_served_with_its_soft_prompt_and_token(rec, served_dir) -> None:
    from prompt_tuning.adapter import read_adapter

    virtual, enc = rec.prompts.virtual, rec.encoder
    assert sorted(virtual) == sorted(["home", "search", "t2t", NEW])
    # the trained soft prompt is what the served folder holds
    weight = rec.backend.model.get_input_embeddings().weight.detach()
    trained = read_adapter(served_dir.parent / f"adapter_{NEW}").prompt
    torch.testing.assert_close(weight[virtual[NEW]].float(), trained.float())
    rows = [rec.ids.index_of(t) for t in HISTORY]
    p = rec.prepare(RecommendationRequest(HISTORY, canvas=NEW, user_id="u1"))
    assert p.prompt == virtual[NEW] + enc.encode(rows, canvas="home", user_id="u1")  # the home token
    home = rec.prepare(RecommendationRequest(HISTORY, canvas="home", user_id="u1"))
    assert (
        p.prompt[NUM_VIRTUAL:] == home.prompt[NUM_VIRTUAL:]
        and p.prompt[:NUM_VIRTUAL] != home.prompt[:NUM_VIRTUAL]
    )
    res = rec.recommend(HISTORY, canvas=NEW, k=5, user_id="u1")
    assert len(res) == 5 and (res.canvas, res.soft_prompt, res.context) == (NEW, True, None)
    assert not set(HISTORY) & {r.item_id for r in res} and res.reason is None
    with pytest.raises(RequestError, match=f"query applies to the search canvas only, not {NEW}"):
        rec.recommend(HISTORY, canvas=NEW, query="paris")


def test_the_server_lists_and_serves_the_new_canvas(rec) -> None:
    with served_app(create_app(rec, ServerSettings(api_key=KEY)), KEY) as (_, http, client):
        cards = {m.id: m for m in client.models.list()}
        assert list(cards) == [
            "sidrec-home",
            "sidrec-search",
            "sidrec-t2t",
            "sidrec-collection",
            f"sidrec-{NEW}",
        ]
        card = cards[f"sidrec-{NEW}"]
        assert (
            card.canvas,
            card.soft_prompt,
            card.num_virtual_tokens,
            card.context,
            card.context_required,
        ) == (NEW, True, NUM_VIRTUAL, None, False)
        want = [r.item_id for r in rec.recommend(HISTORY, canvas=NEW, k=4, user_id="u2")]
        out = client.completions.create(model=f"sidrec-{NEW}", prompt=" ".join(HISTORY), n=4, user="u2")
        assert [c.text for c in out.choices] == want and out.sidrec[0]["canvas"] == NEW
        body = {"history": HISTORY, "canvas": NEW, "k": 4, "user_id": "u2"}
        res = http.post("/v1/recommendations", json=body).json()
        assert [i["item_id"] for i in res["items"]] == want and res["model"] == f"sidrec-{NEW}"
        assert f"sidrec-{NEW}" in http.get("/health").json()["models"]
        # a canvas registered while the server runs is served at once (no soft prompt: its token)
        register(GENRE_ROW)
        try:
            assert "sidrec-genre-row" in [m.id for m in client.models.list()]
            r = http.post(
                "/v1/recommendations",
                json={"history": HISTORY, "canvas": "genre-row", "theme": "Comedy", "k": 3},
            ).json()
            assert r["context"] == "theme" and r["candidates"].startswith("catalog theme 'Comedy'")
        finally:
            unregister(GENRE_ROW.name)
        gone = http.post("/v1/recommendations", json={"history": [], "canvas": "genre-row"})
        assert gone.status_code == 404 and "unknown canvas 'genre-row'" in gone.json()["error"]["message"]


def test_a_registered_text_canvas_keeps_the_answer_inside_its_context(rec, registered) -> None:
    genre = {
        f"m{i:02d}": ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")[i % 6] for i in range(40)
    }
    register(GENRE_ROW)
    try:
        res = rec.recommend(HISTORY, canvas="genre-row", theme="Horror", k=4)
        assert len(res) == 4 and all(genre[r.item_id] == "Horror" for r in res)
        assert (res.soft_prompt, res.context) == (False, "theme")
        coll = rec.prepare(RecommendationRequest(HISTORY, canvas="collection", theme="Horror"))
        assert (
            rec.prepare(RecommendationRequest(HISTORY, canvas="genre-row", theme="Horror")).prompt
            == coll.prompt
        )
        # a theme no title shares: the free-text fallback, and the reason says where the titles came from
        loose = rec.recommend([], canvas="genre-row", theme="zzqxv", k=4)
        assert loose.candidates.startswith("free-text theme 'zzqxv'") and len(loose) == 4
        with pytest.raises(
            RequestError, match="theme applies to the collection, genre-row canvases only, not search"
        ) as e:
            rec.recommend(HISTORY, canvas="search", query="x", theme="Horror")
        assert e.value.param == "theme"
    finally:
        unregister(GENRE_ROW.name)


def test_a_folder_with_an_unregistered_canvas_is_refused_by_name(served_dir, registered) -> None:
    unregister(NEW)
    try:
        with pytest.raises(
            ValueError, match=rf"soft prompts of canvases \['{NEW}'\] that are not registered"
        ):
            Recommender.from_pretrained(served_dir, backend="transformers", **COMMON)
        with pytest.raises(
            ValueError,
            match=f"unknown canvas '{NEW}'; choose one of "
            r"\['home', 'search', 't2t', 'collection'\]",
        ):
            get_canvas(NEW)
    finally:
        register(NEW_RELEASES)


def test_unknown_canvases_name_the_known_ones(rec) -> None:
    from prompt_tuning.config import PromptTuningStageConfig

    known = r"\['home', 'search', 't2t', 'collection', 'new-releases'\]"
    for call in (
        lambda: rec.recommend(HISTORY, canvas="tv"),
        lambda: PromptTuningStageConfig.create(canvas="tv"),
    ):
        with pytest.raises(ValueError, match=f"unknown canvas 'tv'; choose one of {known}"):
            call()
    assert canvas_names() == ("home", "search", "t2t", "collection", NEW)
