"""Loaders for both layouts, on real slices and on small hand-made folders with bad input."""

from __future__ import annotations

import gzip
import json

import pytest

from core.data import DataConfig, DataError, load_data, resolve_data_dir


def test_movielens_slice(ml_small):
    assert ml_small.layout == "movielens" and ml_small.has_time
    assert ml_small.catalog.num_rows == 9742
    inter = ml_small.interactions
    assert set(inter.column_names) == {"user_id", "item_id", "timestamp", "kind", "rating", "tag"}
    assert len(set(inter["user_id"])) == 40
    assert set(inter["kind"]) == {"rating", "tag"}
    toy = ml_small.catalog[0]
    assert toy["title"] == "Toy Story (1995)" and toy["year"] == 1995
    assert "Animation" in toy["categories"]


def test_sequence_slice(beauty_small):
    assert beauty_small.layout == "sequence" and not beauty_small.has_time
    assert beauty_small.catalog.num_rows == 12101
    assert len(set(beauty_small.interactions["user_id"])) == 60
    assert beauty_small.catalog[0]["categories"][0] == "Beauty"


def test_title_tags_say_what_members_wrote_about_each_title(ml_small, beauty_small):
    tags = ml_small.title_tags()
    inter = ml_small.interactions
    raw = [(i, t) for i, t, k in zip(inter["item_id"], inter["tag"], inter["kind"]) if k == "tag"]
    assert tags and sum(len(v) for v in tags.values()) == len({(i, t.strip().lower()) for i, t in raw})
    assert all(t == t.strip().lower() and t for v in tags.values() for t in v)
    item, first = next((i, v[0]) for i, v in tags.items() if len(v) > 1)
    kept = ml_small.title_tags(skip=lambda tag, i: (tag, i) == (first, item))
    assert kept[item] == tags[item][1:]  # only that pair left out
    assert sum(map(len, kept.values())) == sum(map(len, tags.values())) - 1
    assert beauty_small.title_tags() == {}  # no tags in the sequence layout


def test_folder_of_datasets_needs_a_name(data_dir):
    with pytest.raises(DataError, match="holds several datasets"):
        resolve_data_dir(str(data_dir))


def test_missing_dir_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("SIDREC_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="no data directory"):
        resolve_data_dir(None)
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="neither a MovieLens folder"):
        resolve_data_dir(str(tmp_path))


def _load_counted(folder, rows: int, dropped: dict[str, int]):
    """``folder`` loaded: ``rows`` interactions kept, each reason in ``dropped`` counted that often."""
    data = load_data(DataConfig(data_dir=str(folder)))
    assert {reason: data.report.dropped[reason] for reason in dropped} == dropped
    assert data.interactions.num_rows == rows
    return data


def _write_movielens(d, ratings: str, movies: str = "movieId,title,genres\n1,A (1999),Drama\n2,B,Comedy\n"):
    d.mkdir()
    (d / "ratings.csv").write_text(ratings)
    (d / "movies.csv").write_text(movies)
    return d


def test_movielens_bad_rows_are_counted(tmp_path):
    d = _write_movielens(
        tmp_path / "ml",
        "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,1,4.0,10\n1,99,3.0,11\n1,2,,12\n2,2,5.0,5\n",
    )
    data = _load_counted(
        d,
        rows=2,
        dropped={
            "duplicate interaction rows": 1,
            "interactions with a title id not in the catalog": 1,
            "ratings.csv: empty rating": 1,
        },
    )
    assert data.catalog[1]["year"] is None  # "B" has no year


def test_movielens_missing_column(tmp_path):
    d = _write_movielens(tmp_path / "ml", "userId,movieId,timestamp\n1,1,10\n")
    with pytest.raises(DataError, match="lacks column"):
        load_data(DataConfig(data_dir=str(d)))


def test_movielens_missing_movies(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n")
    with pytest.raises(DataError, match="missing movies.csv"):
        load_data(DataConfig(data_dir=str(d)))


def _write_sequence(d, lines: str, items: list[dict]):
    d.mkdir()
    (d / "seq.txt").write_text(lines)
    with gzip.open(d / "items.jsonl.gz", "wt") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    return d


def test_sequence_bad_rows_are_counted(tmp_path):
    items = [{"item_id": i, "title": f"t{i}", "categories": ["c"]} for i in (1, 2, 3)]
    d = _write_sequence(tmp_path / "s", "1 1 2 3\n2\n1 3\n3 1 7 2\n", items)
    data = _load_counted(
        d,
        rows=5,
        dropped={
            "seq.txt: member with an empty history": 1,
            "seq.txt: repeated member line (kept the first)": 1,
            "interactions with a title id not in the catalog": 1,
        },
    )
    # position is the clock: member 3 saw 1 then 2 (7 was dropped, positions keep their gap)
    rows = [r for r in data.interactions if r["user_id"] == "3"]
    assert [(r["item_id"], r["timestamp"]) for r in rows] == [("1", 0), ("2", 2)]


def test_sequence_needs_exactly_one_txt(tmp_path):
    d = _write_sequence(tmp_path / "s", "1 1\n", [{"item_id": 1, "title": "a"}])
    (d / "other.txt").write_text("2 1\n")
    with pytest.raises(DataError, match="exactly one"):
        load_data(DataConfig(data_dir=str(d)))


def test_items_without_title_field(tmp_path):
    d = _write_sequence(tmp_path / "s", "1 1\n", [{"item_id": 1}])
    with pytest.raises(DataError, match="has no 'title'"):
        load_data(DataConfig(data_dir=str(d)))


def test_cache_reused(tmp_path):
    items = [{"item_id": i, "title": f"t{i}"} for i in (1, 2)]
    d = _write_sequence(tmp_path / "s", "1 1 2\n", items)
    a = load_data(DataConfig(data_dir=str(d)))
    b = load_data(DataConfig(data_dir=str(d)))
    assert a.fingerprint == b.fingerprint
    assert a.interactions.cache_files == b.interactions.cache_files


def test_a_layout_added_in_one_file_and_a_registry_line_is_read(tmp_path, monkeypatch):
    """A tab-separated layout defined here alone: detection, hashing and reading go through it."""
    from core import layouts
    from core.data import load_data
    from core.layouts.base import Layout, catalog_table, interaction_table

    folder = tmp_path / "tsv-data"
    folder.mkdir()
    (folder / "events.tsv").write_text("u1\ta\t10\nu1\tb\t20\nu2\ta\t5\nu2\tc\t9\n")

    def read(path, config, report):
        rows = [line.split("\t") for line in (path / "events.tsv").read_text().splitlines()]
        report.rows_read["events.tsv"] = len(rows)
        items = sorted({r[1] for r in rows})
        catalog = catalog_table(items, [f"Title {i}" for i in items])
        users, titles, times = zip(*rows)
        return catalog, interaction_table(users, titles, [int(t) for t in times], "interaction")

    tsv = Layout(
        name="tsv",
        description="tsv folder (events.tsv)",
        has_time=True,
        detect=lambda p: (p / "events.tsv").is_file(),
        source_files=lambda p, c: [p / "events.tsv"],
        read=read,
    )
    monkeypatch.setitem(layouts.LAYOUTS, "tsv", tsv)
    monkeypatch.setenv("SIDREC_CACHE_DIR", str(tmp_path / "cache"))
    data = load_data(data_dir=str(folder))
    assert data.layout == "tsv" and data.has_time
    assert data.catalog["item_id"] == ["a", "b", "c"]
    assert data.interactions["user_id"] == ["u1", "u1", "u2", "u2"]
    assert data.interactions["timestamp"] == [10, 20, 5, 9]
