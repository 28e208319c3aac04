"""Canvas contexts as candidate sets, on a real MovieLens slice (titles, genres, sentence embeddings)."""

from __future__ import annotations

import numpy as np
import pytest

from gen_fm.decode import recommend
from gen_fm.model import load_model
from prompt_tuning.candidate_config import CandidateConfig
from prompt_tuning.candidates import CandidateIndex, with_fresh, words
from prompt_tuning.evaluate import candidate_rows
from semantic_ids.trie import PrefixTrie


@pytest.fixture(scope="module")
def world(slice_world):
    data, split, ids, model_dir, _ = slice_world
    index = CandidateIndex(
        ids.path, config=CandidateConfig(search_candidates=12, theme_candidates=7, min_candidates=5)
    )
    cats = dict(zip(data.catalog["item_id"], data.catalog["categories"]))
    row_cats = [set(cats.get(i, [])) for i in ids.item_ids]
    return index, ids, row_cats, model_dir


def test_a_catalog_theme_is_every_title_with_that_category(world) -> None:
    index, ids, row_cats, _ = world
    genre = "Comedy"
    expected = {r for r, cs in enumerate(row_cats) if genre in cs}
    assert expected, "the slice has comedies"
    for spelling in ("Comedy", "comedy", "  COMEDY "):
        c = index.for_theme(spelling)
        assert set(c.rows.tolist()) == expected
        assert "catalog theme 'Comedy'" in c.how
    assert index.is_catalog_theme("comedy") and not index.is_catalog_theme("space opera")


def test_a_free_text_theme_is_the_titles_matching_it_else_its_semantic_neighbourhood(world) -> None:
    index, ids, _, _ = world
    c = index.for_theme("zzqxv qqvzz")  # no title shares a word: the configured neighbourhood size
    assert len(c.rows) == 7 and len(set(c.rows.tolist())) == 7
    assert "not a catalog category, no title matches its words" in c.how
    # a word of a few titles: those titles first, filled up to theme_fill (here theme_candidates, 7)
    counts: dict[str, int] = {}
    for t in ids.titles:
        for w in set(words(t)) - index._stop:
            counts[w] = counts.get(w, 0) + 1
    word = next(w for w, n in sorted(counts.items()) if n == 3 and len(w) >= 5 and w.isalpha())
    c = index.for_theme(word)
    assert set(c.rows[:3].tolist()) == {r for r, t in enumerate(ids.titles) if word in words(t)}
    assert len(c.rows) == 7 and "the 3 titles matching it in its title, then 4 nearest" in c.how
    with pytest.raises(ValueError, match="theme_fill"):
        CandidateConfig(theme_fill=0)
    with pytest.raises(ValueError, match="empty"):
        index.for_theme("  ")


def test_search_keeps_the_titles_sharing_the_query_words_and_expands_prefixes(world) -> None:
    index, ids, _, _ = world
    # a word of one title that few titles share: its titles must lead the candidates
    counts: dict[str, int] = {}
    for t in ids.titles:
        for w in set(words(t)):
            counts[w] = counts.get(w, 0) + 1
    word = next(w for w, n in sorted(counts.items()) if n == 2 and len(w) >= 6 and w.isalpha())
    with_word = {r for r, t in enumerate(ids.titles) if word in words(t)}
    c = index.for_query(word)
    assert with_word <= set(c.rows.tolist())
    assert len(c.rows) >= 5  # filled up to min_candidates from the fused ranking
    prefix = word[:4]
    assert word in index.expand(prefix)  # "pari" -> "paris"
    assert with_word <= set(index.for_query(prefix).rows.tolist())


def test_a_query_of_several_words_keeps_the_titles_holding_all_of_them_first(world) -> None:
    index, ids, _, _ = world
    title_words = [set(words(t)) - index._stop for t in ids.titles]
    df: dict[str, int] = {}
    for ws in title_words:
        for w in ws:
            df[w] = df.get(w, 0) + 1
    # two words found together in one title and each also without the other
    a, b = next(
        (a, b)
        for ws in title_words
        for a in sorted(ws)
        for b in sorted(ws)
        if a < b and a.isalpha() and b.isalpha() and df[a] > 1 and df[b] > 1
    )
    both = {r for r, ws in enumerate(title_words) if {a, b} <= ws}
    rows = index.for_query(f"{a} {b}").rows.tolist()
    assert set(rows[: len(both)]) == both  # not every title with one of the words
    assert len(rows) == max(len(both), 5)  # then filled from the fused ranking (min_candidates)


def test_a_query_sharing_no_word_falls_back_to_the_embedding_and_says_so(world) -> None:
    index, _, _, _ = world
    c = index.for_query("zzqxv")
    assert "no title shares a word" in c.how and len(c.rows) == 12


def test_tags_make_a_title_findable_by_what_members_wrote_about_it(world, slice_world) -> None:
    from prompt_tuning.train import candidate_index_for, model_split
    from prompt_tuning.config import PromptTuningStageConfig
    from prompt_tuning.canvases.search import holds_out_tag

    index, ids, _, model_dir = world
    gen = load_model(model_dir)
    folder_tags = gen.title_tags()  # pretraining wrote what the slice's members tagged
    assert folder_tags and set(folder_tags) <= set(ids.item_ids)
    title_words = {w for t in ids.titles for w in words(t)}
    # a tag word found in no title: without tags the index cannot match it, with them it does
    item, tag = next(
        (i, t)
        for i, ts in sorted(folder_tags.items())
        for t in ts
        if words(t) and all(w not in title_words and len(w) > 4 and w.isalpha() for w in words(t))
    )
    row = ids.index_of(item)
    assert "no title shares a word" in index.for_query(tag).how
    tagged = CandidateIndex(ids.path, config=index.config, tags=folder_tags)
    c = tagged.for_query(tag)
    assert row in c.rows.tolist() and "in its title or tags" in c.how
    assert all(any(w in words(" ".join(tagged.row_tags[r])) for w in words(tag)) for r in c.rows[:1])
    # a free-text collection theme in the members' words finds it too
    assert row in tagged.for_theme(tag).rows.tolist() and "title or tags" in tagged.for_theme(tag).how
    # the embedding match reads tags too: the tag's own text puts its title near the top
    assert row in tagged._semantic_order(tag)[:5].tolist()
    # judged inside a benchmark: the held-out (tag, title) pairs are not in the index
    data, split = model_split(gen, slice_world[4])
    config = PromptTuningStageConfig.create(canvas="search")
    judged = candidate_index_for(gen, data, split, config)
    held = [(t, i) for i, ts in folder_tags.items() for t in ts if holds_out_tag(config, t, i)]
    assert held
    for t, i in held:
        assert t not in judged.row_tags[ids.index_of(i)]
    kept = sum(map(len, judged.row_tags))
    assert 0 < kept < sum(map(len, tagged.row_tags))


def test_decoding_inside_the_candidate_set_never_leaves_it(world) -> None:
    index, ids, row_cats, model_dir = world
    gen = load_model(model_dir)
    encoder = gen.prompt_encoder()
    trie = PrefixTrie(ids.codes, encoder.layout)
    theme = index.for_theme("Drama").rows.tolist()
    query = index.for_query("the").rows.tolist()
    prompts = [
        encoder.encode(np.arange(3), canvas="collection"),
        encoder.encode(np.arange(3), canvas="search"),
    ]
    recs = recommend(gen.model, prompts, trie, k=5, num_beams=5, allow=[theme, query])
    assert recs[0].rows and set(recs[0].rows) <= set(theme)
    assert all("Drama" in row_cats[r] for r in recs[0].rows)
    assert recs[1].rows and set(recs[1].rows) <= set(query)


def test_candidate_rows_follow_each_example_context(world, slice_world) -> None:
    from prompt_tuning.canvases import CanvasData, CanvasExample

    index, ids, row_cats, _ = world
    ex = CanvasExample(history=np.arange(2), target=0, user="1", context=[], text="Comedy", kind="theme")
    data = CanvasData(canvas="collection", train=[], test=[ex, ex], info={})
    allow = candidate_rows(data, index)
    assert allow is not None and allow[0] == allow[1] == index.for_theme("Comedy").rows.tolist()
    assert candidate_rows(CanvasData(canvas="home", train=[], test=[ex], info={}), index) is None


def test_a_source_neighbourhood_is_co_engaged_titles_then_nearest_by_text(world, slice_world) -> None:
    from gen_fm.co_engagement import co_engagement_of_split
    from gen_fm.dataset import catalog_to_sid_rows, to_sid_rows
    from prompt_tuning.canvases import CanvasData, CanvasExample

    _, ids, _, _ = world
    data, split, _, _, _ = slice_world
    sid_rows = catalog_to_sid_rows(data, ids)
    table = co_engagement_of_split(split, sid_rows, ids.num_items)
    index = CandidateIndex(ids.path, config=CandidateConfig(source_candidates=6), co_engagement=table)
    near = index.for_title(0, 5)
    assert len(near) == 5 and 0 not in near.tolist()
    sims = index.title_vecs @ index.title_vecs[0]
    assert sims[near[0]] >= sims[near[-1]]  # nearest first
    with pytest.raises(ValueError, match="not in the ID artifact"):
        index.for_title(ids.num_items, 5)
    first = to_sid_rows(split.train_items(0), sid_rows).tolist()
    src = first[0]
    c = index.for_source(src)
    rows = c.rows.tolist()
    assert rows[:3] == table.of(src, 3).tolist() and first[1] in table.of(src).tolist()
    assert len(rows) == 6 and src not in rows and len(set(rows)) == 6
    assert "3 most often paired with it, then 3 nearest by title text" in c.how
    # a title no training history holds: its content neighbours alone, and the reason says so
    unseen = next(r for r in range(ids.num_items) if len(table.of(r)) == 0)
    cold = index.for_source(unseen)
    assert cold.rows.tolist() == index.for_title(unseen, 6).tolist() and "never watched" in cold.how
    no_table = CandidateIndex(ids.path, config=CandidateConfig(source_candidates=6)).for_source(src)
    assert no_table.rows.tolist() == index.for_title(src, 6).tolist()
    assert "no co-engagement table" in no_table.how
    # the t2t canvas's held-out examples are judged inside exactly these sets
    ex = CanvasExample(history=np.asarray(first[:1]), target=first[1], source=src, kind="pair")
    assert candidate_rows(CanvasData(canvas="t2t", train=[], test=[ex], info={}), index) == [rows]


def test_reciprocal_rank_fusion_by_hand() -> None:
    from gen_fm.ranking import fusion_scores
    from prompt_tuning.candidates import fuse_ranks

    # model [7, 3, 9], order [3, 5]; k=0: model 1/1, 1/2, 1/3; order (weight 1) 1/1, 1/2
    s = fusion_scores([7, 3, 9], [3, 5], 0, 1.0)
    assert list(s) == [3, 7, 5, 9] and s[3] == pytest.approx(1.5) and s[5] == pytest.approx(0.5)
    assert fuse_ranks([7, 3, 9], [3, 5], 2, 0, 1.0) == [3, 7]
    assert fuse_ranks([7, 3, 9], [3, 5], 3, 0, 0.0) == [7, 3, 9]  # weight 0: the model's order
    assert fuse_ranks([1, 2], [2, 1], 2, 5, 1.0) == [1, 2]  # a tie keeps the model's order
    with pytest.raises(ValueError, match="fusion_k and fusion_weight"):
        CandidateConfig(fusion_weight=-1)


def test_a_fresh_share_gives_fresh_titles_their_slots_and_no_more() -> None:
    fresh_rows = {100, 101, 102, 103, 4}
    ranked = list(range(20))  # row 4 is fresh too: it never takes one of the other slots
    one = with_fresh(ranked, [100, 101], 10, 0.1, fresh_rows)
    assert one == [0, 1, 2, 3, 5, 100, 6, 7, 8, 9]  # the middle of the row
    two = with_fresh(ranked, [101, 101, 100, 7], 10, 0.2, fresh_rows)  # 7 is not fresh: never a fresh slot
    assert two == [0, 1, 101, 2, 3, 5, 6, 100, 7, 8]
    for share in (0.0, 0.1, 0.25, 0.5, 1.0):
        row = with_fresh(ranked, [103, 102, 101, 100, 4], 10, share, fresh_rows)
        assert len(row) == len(set(row)) == 10
        assert sum(r in fresh_rows for r in row) <= int(share * 10)
    assert with_fresh([1, 2], [100, 101], 10, 0.2, fresh_rows) == [1, 2, 100, 101]  # a short row keeps them
    with pytest.raises(ValueError, match="fresh share"):
        with_fresh(ranked, [], 10, 1.5, fresh_rows)
