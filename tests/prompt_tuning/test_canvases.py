"""Canvas data on a real slice: where examples come from, that the held-out part does not leak, the
query encoder, and the `sidrec prompts` commands end to end."""

from __future__ import annotations

import numpy as np
import pytest

from gen_fm.dataset import catalog_to_sid_rows, to_sid_rows
from gen_fm.model import load_model
from prompt_tuning.canvases import QueryEncoder, build_canvas_data, theme_of
from prompt_tuning.config import PromptTuningStageConfig

CFG = dict(max_train_examples=None, max_eval_examples=None, seed=0)


@pytest.fixture(scope="module")
def world(slice_world):
    data, split, ids, model_dir, dc = slice_world
    gen = load_model(model_dir)
    enc = gen.prompt_encoder()
    queries = QueryEncoder(model_dir / "semantic_ids", "anchors", 3)
    return data, split, ids, gen, enc, queries, dc


def _build(world, canvas, **kw):
    data, split, ids, _, enc, queries, _ = world
    return build_canvas_data(
        canvas, data, split, ids, enc, PromptTuningStageConfig.create(canvas=canvas, **{**CFG, **kw}), queries
    )


def _member_rows(world):
    data, split, ids, *_ = world
    rows = catalog_to_sid_rows(data, ids)
    seqs = split.sequences
    return {
        seqs.user_ids[u]: (to_sid_rows(split.train_items(u), rows), to_sid_rows(seqs.items(u), rows))
        for u in range(len(seqs))
    }


def test_home_trains_on_training_events_and_holds_out_test_targets(world):
    cd = _build(world, "home")
    members = _member_rows(world)
    for ex in cd.train:
        train_items, _ = members[ex.user]
        n = len(ex.history)
        assert any(
            list(train_items[j - n : j + 1]) == [*ex.history, ex.target] for j in range(n, len(train_items))
        )
    for ex in cd.test:
        _, all_items = members[ex.user]
        assert ex.target == all_items[-1] and list(ex.history) == list(all_items[:-1][-len(ex.history) :])
    assert cd.info["train"] == len(cd.train) and all(ex.context is None for ex in cd.train)


def test_t2t_pairs_are_the_history_up_to_the_source_asked_the_home_question(world):
    cd = _build(world, "t2t")
    _, _, _, _, enc, _, _ = world
    for ex in cd.train + cd.test:
        assert len(ex.history) and ex.history[-1] == ex.source != ex.target and ex.context is None
        assert ex.prompt(enc, "t2t") == enc.encode(ex.history, canvas="home", user_id=ex.user)
    train_pairs = {(ex.source, ex.target) for ex in cd.train}
    members = _member_rows(world)
    consecutive = {(int(a), int(b)) for items, _ in members.values() for a, b in zip(items, items[1:])}
    assert train_pairs <= consecutive
    for ex in cd.test:  # the held-out target is the member's test title, after their whole history
        _, all_items = members[ex.user]
        assert ex.target == all_items[-1]


def test_collection_themes_are_specific_categories_of_the_target(world):
    data, _, ids, *_ = world
    cd = _build(world, "collection", min_theme_titles=5)
    cats = dict(zip(data.catalog["item_id"], data.catalog["categories"]))
    for ex in cd.train + cd.test:
        assert ex.text in cats[ids.item_ids[ex.target]] and ex.context
    assert theme_of([["A", "B"], ["A"], ["A", "C"], ["B"]], 2) == ["B", None, None, "B"]  # A: > half


def test_search_queries_are_real_and_the_heldout_pairs_are_unseen(world):
    data, _, ids, *_ = world
    cd = _build(world, "search")
    kinds = {ex.kind for ex in cd.train} | {ex.kind for ex in cd.test}
    assert kinds == {"tag", "word"}
    tags = {
        (u, i, t.strip().lower())
        for u, i, t, k in zip(
            data.interactions["user_id"],
            data.interactions["item_id"],
            data.interactions["tag"],
            data.interactions["kind"],
        )
        if k == "tag"
    }
    for ex in cd.train + cd.test:
        if ex.kind == "tag":
            assert (ex.user, ids.item_ids[ex.target], ex.text) in tags
            assert ex.target not in set(ex.history.tolist())
        else:
            assert ex.user is None and len(ex.history) == 0 and len(ex.text) >= 4
            assert ex.text in (ids.titles[ex.target] or "").lower()
    seen = {(ex.text, ex.target) for ex in cd.train if ex.kind == "tag"}
    assert not seen & {(ex.text, ex.target) for ex in cd.test if ex.kind == "tag"}
    word_train = {ex.target for ex in cd.train if ex.kind == "word"}
    assert not word_train & {ex.target for ex in cd.test if ex.kind == "word"}


def test_search_relevance_judges_tags_by_what_members_wrote_and_words_by_the_title(world):
    from prompt_tuning.canvases import CanvasData, get_canvas

    data, _, ids, *_ = world
    cd = _build(world, "search")
    tag = next(ex for ex in cd.test if ex.kind == "tag")
    word = next(ex for ex in cd.test if ex.kind == "word")
    tagged = {
        r
        for r, i in enumerate(ids.item_ids)
        if any(
            t.strip().lower() == tag.text
            for t, it, k in zip(
                data.interactions["tag"], data.interactions["item_id"], data.interactions["kind"]
            )
            if k == "tag" and it == i
        )
    }
    assert tag.relevant == frozenset(tagged) and tag.target in tag.relevant  # its own pair counts
    titles = [(t or "").lower() for t in ids.titles]
    cats = [[] for _ in titles]
    off_tag = next(
        r
        for r in range(len(titles))
        if r not in tag.relevant and not all(w in titles[r] for w in tag.text.split())
    )
    off_word = next(r for r in range(len(titles)) if word.text not in titles[r])
    one = CanvasData(canvas="search", train=[], test=[tag, word], info={})
    out = get_canvas("search").metrics(
        one, [[tag.target, off_tag], [word.target, off_word]], titles_lower=titles, row_categories=cats, k=10
    )
    assert out["relevance_tag"] == 0.5 and out["relevance_word"] == 0.5 and out["relevance"] == 0.5
    out = get_canvas("search").metrics(
        one, [[tag.target], []], titles_lower=titles, row_categories=cats, k=10
    )
    assert out["relevance_tag"] == 1.0 and out["relevance_word"] == 0.0  # nothing answered: 0


def test_search_demo_query_is_the_members_own_tag_else_the_one_most_members_wrote(world):
    from collections import Counter

    from prompt_tuning.canvases import get_canvas

    data, _, ids, *_ = world
    inter = data.interactions
    tags = [
        (u, t.strip().lower())
        for u, t, k in zip(inter["user_id"], inter["tag"], inter["kind"])
        if k == "tag" and t
    ]
    demo = get_canvas("search").example_context
    user = tags[0][0]
    assert demo(data, ids, [], user).value == [t for u, t in tags if u == user][-1]
    writers = Counter(t for _, t in set(tags))
    assert writers[demo(data, ids, [], "nobody").value] == max(writers.values())


def test_query_encoder_modes(world, slice_world):
    _, _, ids, _, enc, queries, _ = world
    title = next(t for t in ids.titles if t and t.lower().startswith("toy story"))
    row = ids.titles.index(title)
    tokens = queries.encode(["toy story"])[0]
    L = ids.sid_length
    assert len(tokens) == 3 * L
    anchor_rows = enc.decode_rows(tokens)
    assert all("toy story" in ids.titles[r].lower() for r in anchor_rows[:1])
    assert row in anchor_rows or all("toy story" in ids.titles[r].lower() for r in anchor_rows)
    quantized = QueryEncoder(slice_world[3] / "semantic_ids", "quantized").encode(["space adventure"])[0]
    assert [enc.layout.level_of(t) for t in quantized] == list(range(len(ids.codebook_sizes) - 1))
    with pytest.raises(ValueError, match="empty"):
        queries.encode(["  "])


def test_config_validation():
    for bad in (
        dict(query_mode="words"),
        dict(max_train_examples=0),
        dict(eval_fraction=1.0),
        dict(num_anchors=0),
        dict(full_finetune_lr=0.0),
    ):
        with pytest.raises(ValueError):
            PromptTuningStageConfig.create(**bad)


def test_prompts_cli_train_list_export(slice_world, tmp_path, capsys):
    from prompt_tuning.export import virtual_token_ids
    from sidrec.cli import main

    _, _, _, model_dir, dc = slice_world
    common = [
        "--model",
        str(model_dir),
        "--data",
        dc.data_dir,
        "--threads",
        "1",
        "--set",
        "max_train_examples=48",
        "--set",
        "max_eval_examples=12",
        "--set",
        "epochs=1",
    ]
    # t2t is served by the frozen model: training its adapter is refused, and says how to anyway
    assert main(["prompts", "train", "--canvas", "t2t", "--out", str(tmp_path / "t2t"), *common]) == 2
    assert "served by the frozen model" in capsys.readouterr().out and not (tmp_path / "t2t").exists()
    assert main(["prompts", "train", "--canvas", "search", "--out", str(tmp_path / "search"), *common]) == 0
    assert (
        main(
            [
                "prompts",
                "train",
                "--canvas",
                "t2t",
                "--out",
                str(tmp_path / "t2t"),
                *common,
                "--set",
                "method=soft_prompt",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "held-out adapter" in out and "held-out base" in out
    assert main(["prompts", "list", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "search" in listing and "t2t" in listing
    assert (
        main(
            [
                "prompts",
                "export",
                "--model",
                str(model_dir),
                "--adapters",
                str(tmp_path / "search"),
                str(tmp_path / "t2t"),
                "--out",
                str(tmp_path / "served"),
            ]
        )
        == 0
    )
    served = load_model(tmp_path / "served")
    virtual = virtual_token_ids(served)
    assert sorted(virtual) == ["search", "t2t"] and all(len(v) == 8 for v in virtual.values())
    # errors name the problem and leave nothing behind
    with pytest.raises(SystemExit, match="unknown canvas 'tv'"):
        main(["prompts", "train", "--canvas", "tv", "--out", str(tmp_path / "bad"), *common])
    assert not (tmp_path / "bad").exists()
    assert main(["prompts", "list", str(tmp_path / "missing")]) == 2
    assert np.asarray(virtual["search"]).min() >= served.layout.code_end
