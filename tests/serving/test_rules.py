"""Business rules: parsing, the row masks they compile to, their trie restrictions, the diversity
selection, and the rules end to end on the transformers backend (fast, no vLLM)."""

from __future__ import annotations

import numpy as np
import pytest

from semantic_ids.ids import SemanticIDs
from semantic_ids.trie import PrefixTrie
from serving.recommender import RecommendationRequest, Recommender
from serving.rules import AttributeTable, DiversityCap, RuleError, Rules, compile_rules, load_attributes
from tests.serving.tiny_model import GENRES, NUM_TITLES, UNCATALOGUED, tiny_attributes

TITLES = [f"tt{i:03d}" for i in range(NUM_TITLES)]


@pytest.fixture(scope="module")
def ids(tiny_model_dir) -> SemanticIDs:
    return SemanticIDs.load(tiny_model_dir / "semantic_ids")


@pytest.fixture(scope="module")
def rec(tiny_model_dir, tiny_attributes_table) -> Recommender:
    return Recommender.from_pretrained(
        tiny_model_dir, backend="transformers", num_beams=10, max_k=20, attributes=tiny_attributes_table
    )


def truth(i: int) -> tuple[list[str], int | None]:
    """Attributes of title i as the catalog file states them (None, None: not in the catalog)."""
    return ([], None) if TITLES[i] == UNCATALOGUED else tiny_attributes(i)


def permitted_paths(trie: PrefixTrie, view) -> set[int]:
    """Every title reachable by walking allowed_next from the root under a view (the decoder's view)."""
    found, stack = set(), [[]]
    while stack:
        prefix = stack.pop()
        if len(prefix) == trie.sid_length:
            found.add(trie.item_of(prefix))
            continue
        stack += [prefix + [int(t)] for t in trie.allowed_next(prefix, view)]
    return found


# ---------------------------------------------------------------- parsing
def test_rules_parse_and_reject_malformed_input() -> None:
    r = Rules.from_dict(
        {
            "exclude_titles": ["tt001"],
            "exclude_attributes": {"categories": ["Horror"]},
            "max_year": 1990,
            "diversity": {"max_per_group": 2},
        }
    )
    assert r.exclude_titles == ("tt001",) and r.max_year == 1990 and r.diversity.group_by == "sid_prefix"
    assert Rules.from_dict(None).is_empty and Rules.from_dict({}).is_empty and not r.is_empty
    bad = [
        ({"exclude_genre": ["x"]}, "unknown rule.*exclude_genre"),
        ({"max_year": "1990"}, "max_year must be an integer"),
        ({"max_year": True}, "max_year must be an integer"),
        ({"min_year": 2000, "max_year": 1990}, "min_year 2000 is after max_year 1990"),
        ({"exclude_titles": "tt001"}, "exclude_titles must be a list"),
        ({"exclude_attributes": {"categories": "Horror"}}, r"exclude_attributes\['categories'\]"),
        ({"exclude_attributes": ["categories"]}, "must be an object"),
        ({"diversity": {"max_per_group": 0}}, ">= 1"),
        ({"diversity": {"per_group": 2}}, "unknown diversity field"),
        ({"diversity": {}}, "needs max_per_group"),
        ([1, 2], "rules must be an object"),
    ]
    for obj, msg in bad:
        with pytest.raises(RuleError, match=msg):
            Rules.from_dict(obj)


# ---------------------------------------------------------------- attributes and masks
def test_attributes_loaded_from_the_catalog_match_the_file(ids, tiny_attributes_table) -> None:
    table = tiny_attributes_table
    assert set(table.names) == {"categories", "year"} and table.matched == NUM_TITLES - 1
    for i in range(NUM_TITLES):
        genres, year = truth(i)
        assert list(table.values_of("categories", i)) == genres
        assert table.values_of("year", i) == (() if year is None else (year,))


def test_attribute_and_year_masks_equal_brute_force(ids, tiny_attributes_table) -> None:
    rules = {
        "exclude_attributes": {"categories": ["horror", "Comedy"]},  # case-insensitive
        "require_attributes": {"categories": ["Drama", "Action", "Romance"]},
        "min_year": 1975,
        "max_year": 2000,
        "exclude_titles": [TITLES[2]],
    }
    mask = compile_rules(rules, ids, tiny_attributes_table)
    want = set()
    for i in range(NUM_TITLES):
        genres, year = truth(i)
        if (
            set(genres) & {"Horror", "Comedy"}
            or not set(genres) & {"Drama", "Action", "Romance"}
            or year is None
            or not 1975 <= year <= 2000
            or i == 2
        ):
            continue
        want.add(i)
    assert 5 < len(want) < NUM_TITLES // 2  # the rules really bite, and leave something
    trie = PrefixTrie.from_ids(ids)
    view = mask.narrow(trie, None)
    assert set(np.flatnonzero(view.permits(np.arange(NUM_TITLES)))) == want
    assert permitted_paths(trie, view) == want  # the decoder's view of the same restriction
    assert mask.applied == (
        "exclude_titles",
        "exclude_attributes",
        "require_attributes",
        "min_year",
        "max_year",
    )


def test_rules_stack_onto_an_existing_restriction_and_never_widen(ids, tiny_attributes_table) -> None:
    trie = PrefixTrie.from_ids(ids)
    history_view = trie.restrict(exclude_rows=[0, 1, 2, 3])
    mask = compile_rules({"exclude_attributes": {"categories": ["Drama"]}}, ids, tiny_attributes_table)
    view = mask.narrow(trie, history_view)
    drama = {i for i in range(NUM_TITLES) if "Drama" in truth(i)[0]}
    assert permitted_paths(trie, view) == set(range(4, NUM_TITLES)) - drama
    allow_view = trie.restrict(allow_rows=[5, 6, 7, 8])
    assert permitted_paths(trie, mask.narrow(trie, allow_view)) == {5, 6, 7, 8} - drama
    assert compile_rules(None, ids, None).narrow(trie, history_view) is history_view  # no rules: unchanged


def test_unknown_attributes_and_values_are_named(ids, tiny_attributes_table) -> None:
    with pytest.raises(RuleError, match="unknown attribute 'genre'; this catalog has"):
        compile_rules({"exclude_attributes": {"genre": ["Horror"]}}, ids, tiny_attributes_table)
    with pytest.raises(RuleError, match="no title has categories = 'Horor'.*'Horror'"):
        compile_rules({"exclude_attributes": {"categories": ["Horor"]}}, ids, tiny_attributes_table)
    with pytest.raises(RuleError, match="unknown attribute 'year'.*--data"):
        compile_rules({"max_year": 1990}, ids, None)  # no catalog loaded
    with pytest.raises(RuleError, match="unknown attribute 'categories'"):
        compile_rules({"diversity": {"max_per_group": 1, "group_by": "categories"}}, ids, None)
    empty = AttributeTable.from_records(ids.item_ids, {t: {"year": None} for t in ids.item_ids})
    with pytest.raises(RuleError, match="'year' is unknown for every title"):
        compile_rules({"max_year": 1990}, ids, empty)
    with pytest.raises(ValueError, match="unknown title id.*exclude_titles: 'nope'"):
        compile_rules({"exclude_titles": ["nope"]}, ids, None)
    with pytest.raises(RuleError, match="prefix_length 9 exceeds"):
        compile_rules({"diversity": {"max_per_group": 1, "prefix_length": 9}}, ids, None)


def test_a_catalog_of_another_dataset_is_refused(ids, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SIDREC_CACHE_DIR", str(tmp_path / "cache"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "movies.csv").write_text("movieId,title,genres\n1,A (1990),Drama\n")
    (other / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n")
    with pytest.raises(ValueError, match="none of the model's 60 titles is in the catalog"):
        load_attributes(ids, str(other))


# ---------------------------------------------------------------- diversity selection
def test_diversity_select_is_greedy_by_score_under_the_cap() -> None:
    groups = {10: ("a",), 11: ("a",), 12: ("b",), 13: ("a",), 14: ("a", "c"), 15: ("c",), 16: ("c",)}
    cap = DiversityCap(2, "test", lambda rows: [groups[r] for r in rows])
    rows = [10, 11, 12, 13, 14, 15, 16]  # best first
    assert [rows[i] for i in cap.select(rows, 10)] == [10, 11, 12, 15, 16]  # 13, 14: "a" is full
    assert [rows[i] for i in cap.select(rows, 3)] == [10, 11, 12]
    one = DiversityCap(1, "test", lambda rows: [groups[r] for r in rows])
    assert [rows[i] for i in one.select(rows, 10)] == [10, 12, 15]


def test_diversity_picks_from_the_widened_beam_like_greedy_over_the_plain_list(rec) -> None:
    history = TITLES[:3]
    res = rec.recommend(history, k=6, rules={"diversity": {"max_per_group": 2}})
    first = [rec.ids.sid(r.item_id)[0] for r in res]
    assert len(res) == 6 and res.reason is None and max(np.bincount(first)) <= 2
    # the plain list at the same beam width (k * diversity_widen = 18) holds the candidates
    wide = rec.recommend(history, k=18)
    plain_first = [rec.ids.sid(r.item_id)[0] for r in wide[:6]]
    assert max(np.bincount(plain_first)) > 2  # without the rule the top 6 would break the cap
    kept, counts = [], {}
    for r in wide:
        g = rec.ids.sid(r.item_id)[0]
        if counts.get(g, 0) < 2 and len(kept) < 6:
            kept.append(r.item_id)
            counts[g] = counts.get(g, 0) + 1
    assert [r.item_id for r in res] == kept
    assert [r.score for r in res] == [r.score for r in wide if r.item_id in kept]


def test_a_short_diversity_cap_searches_again_with_a_wider_beam(rec) -> None:
    history = TITLES[:3]
    plain = rec.prepare(RecommendationRequest(history, k=4))

    def greedy(beams: int) -> list[str]:  # one title per first code from the plain beam of that width
        rows = rec.backend.search([plain.prompt], beams, beams, [plain.view])[0].rows
        kept, seen = [], set()
        for r in rows:
            if ids_first(rec, r) not in seen:
                kept.append(TITLES[r])
                seen.add(ids_first(rec, r))
        return kept

    assert rec.config.beams_for(4, diverse=True) == 12 and len(greedy(12)) < 4  # the first width is short
    res = rec.recommend(history, k=4, rules={"diversity": {"max_per_group": 1}})
    assert [r.item_id for r in res] == greedy(24)[:4] and res.reason is None  # filled at twice the width


def test_diversity_by_a_longer_code_prefix(rec) -> None:
    history = TITLES[:2]
    plain = [rec.ids.sid(r.item_id)[:2] for r in rec.recommend(history, k=10)]
    assert len(set(plain)) < 10  # the plain top 10 repeats a two-code prefix
    res = rec.recommend(history, k=10, rules={"diversity": {"max_per_group": 1, "prefix_length": 2}})
    assert len(res) == 10 and len({rec.ids.sid(r.item_id)[:2] for r in res}) == 10


def ids_first(rec: Recommender, row: int) -> int:
    return int(rec.ids.codes[row, 0])


def test_diversity_by_genre_counts_every_genre_of_a_title(rec) -> None:
    def genre_counts(res) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in res:
            for g in truth(TITLES.index(r.item_id))[0] or ["<unknown>"]:
                counts[g] = counts.get(g, 0) + 1
        return counts

    history = TITLES[:3]
    assert max(genre_counts(rec.recommend(history, k=8)).values()) > 2  # the plain list breaks the cap
    res = rec.recommend(history, k=8, rules={"diversity": {"max_per_group": 2, "group_by": "categories"}})
    assert len(res) >= 7 and max(genre_counts(res).values()) <= 2  # 5 genres + unknown: at most 12 fit


def test_diversity_that_cannot_fill_k_returns_fewer_and_says_why(rec) -> None:
    # 4 first codes in the tiny ID space: at most 4 titles with one per first code
    res = rec.recommend(TITLES[:2], k=6, rules={"diversity": {"max_per_group": 1}})
    assert len({rec.ids.sid(r.item_id)[0] for r in res}) == len(res) <= 4
    assert "diversity rule (at most 1 per first code)" in res.reason and "beam" in res.reason


# ---------------------------------------------------------------- rules end to end
def test_rules_are_applied_while_decoding(rec) -> None:
    rules = {"exclude_attributes": {"categories": ["Drama", "Comedy"]}, "max_year": 1995}
    res = rec.recommend(TITLES[:3], k=10, rules=rules)
    assert len(res) == 10 and res.reason is None  # enough titles survive: the list is not shortened
    for r in res:
        genres, year = truth(TITLES.index(r.item_id))
        assert not {"Drama", "Comedy"} & set(genres) and year is not None and year <= 1995
    assert res.rules_applied == ("exclude_attributes", "max_year")
    # scores are renormalised over the permitted titles, as for an allow-list
    permitted = [
        i
        for i in range(3, NUM_TITLES)
        if not {"Drama", "Comedy"} & set(truth(i)[0]) and truth(i)[1] is not None and truth(i)[1] <= 1995
    ]
    assert res.num_permitted == len(permitted)
    every = rec.recommend(TITLES[:3], k=len(permitted), rules=rules)
    assert abs(np.logaddexp.reduce([r.score for r in every])) < 1e-4


def test_rules_leaving_fewer_than_k_titles_say_which_rules(rec) -> None:
    rules = {"require_attributes": {"categories": ["Horror"]}, "min_year": 2000}
    n = sum("Horror" in truth(i)[0] and (truth(i)[1] or 0) >= 2000 for i in range(NUM_TITLES))
    res = rec.recommend([], k=10, rules=rules)
    assert 0 < n < 10 and len(res) == res.num_permitted == n
    assert res.reason == (
        f"only {n} title(s) permitted (rule require_attributes, rule min_year), fewer than k=10"
    )
    none = rec.recommend([], k=3, rules={"allow_titles": [TITLES[0]], "exclude_titles": [TITLES[0]]})
    assert len(none) == 0 and none.reason.startswith("no title is permitted")


def test_recommender_loads_attributes_from_its_data_dir(
    tiny_model_dir, tiny_catalog_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("SIDREC_CACHE_DIR", str(tmp_path))
    # no dataset given: the one named in the model's manifest ("unit") is a folder of data_dir
    assert tiny_catalog_dir.name == "unit"
    rec = Recommender.from_pretrained(
        tiny_model_dir, backend="transformers", num_beams=5, max_k=5, data_dir=tiny_catalog_dir.parent
    )
    assert rec.attributes.matched == NUM_TITLES - 1 and GENRES[0] in rec.attributes.values_of("categories", 5)
    res = rec.recommend([], k=5, rules={"exclude_attributes": {"categories": list(GENRES[:4])}})
    assert all(set(truth(TITLES.index(r.item_id))[0]) <= {"Romance"} for r in res)
