"""Read a data directory in either supported layout into one common, memory-mapped form.

Layouts:
- MovieLens CSV: ``ratings.csv`` (+ ``movies.csv``, optional ``tags.csv``).
- Sequence file: exactly one ``*.txt`` of ``user item item ...`` lines in time order plus
  ``items.jsonl`` or ``items.jsonl.gz`` (``item_id``, ``title``, optional ``categories``).

The common form is two Hugging Face ``datasets`` tables saved as Arrow and memory-mapped from a
cache keyed by the source files' hashes (so the second load is instant and tables larger than RAM
are not held in memory):

- catalog: ``item_id`` (str), ``title`` (str), ``categories`` (list[str]), ``year`` (int, null if unknown)
- interactions: ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64: unix seconds, or the
  position in the member's sequence when the layout has no clock), ``kind`` ("rating", "tag" or
  "interaction"), ``rating`` (float, null), ``tag`` (str, null)

Every row that is dropped is counted under a named reason in ``DataReport``; nothing is dropped
silently, and structural problems (missing files or columns) raise ``DataError``.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

DATA_DIR_ENV = "SIDREC_DATA_DIR"
CACHE_DIR_ENV = "SIDREC_CACHE_DIR"
_CACHE_FORMAT = "v2"


class DataError(ValueError):
    """The data directory cannot be read: a missing file or column, or no usable rows."""


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how much of it to read."""

    # Folder holding one dataset, or a folder of datasets (then `dataset` names the sub-folder).
    # Defaults to $SIDREC_DATA_DIR.
    data_dir: str | None = None
    # Sub-folder of data_dir, e.g. "ml-latest-small" or "amazon-beauty".
    dataset: str | None = None
    # Keep only the first N members (sorted by id): small, deterministic slices for tests.
    max_users: int | None = None
    # MovieLens: read tags.csv as engagement events (they are also the search canvas's queries).
    include_tags: bool = True

    def __post_init__(self) -> None:
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {self.max_users}")


@dataclass
class DataReport:
    """What was read and what was dropped, by reason."""

    rows_read: dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str, n: int) -> None:
        if n:
            self.dropped[reason] += int(n)

    def lines(self) -> list[str]:
        out = [f"read {n:,} rows from {name}" for name, n in self.rows_read.items()]
        out += [f"dropped {n:,}: {reason}" for reason, n in sorted(self.dropped.items())]
        return out

    def to_json(self) -> dict:
        return {"rows_read": dict(self.rows_read), "dropped": dict(self.dropped)}


@dataclass
class RecData:
    """A dataset in the common form."""

    name: str
    layout: str  # "movielens" | "sequence"
    has_time: bool  # False when timestamps are positions in the sequence
    catalog: "datasets.Dataset"  # noqa: F821
    interactions: "datasets.Dataset"  # noqa: F821
    report: DataReport
    source_hashes: dict[str, str]
    path: Path

    @property
    def fingerprint(self) -> str:
        """One hash for all source files (and the slice read), recorded in artifact manifests."""
        h = hashlib.sha256(json.dumps(self.source_hashes, sort_keys=True).encode())
        return h.hexdigest()

    def item_titles(self) -> dict[str, str]:
        return dict(zip(self.catalog["item_id"], self.catalog["title"]))


# --------------------------------------------------------------------------- locating data


def detect_layout(path: Path) -> str | None:
    if (path / "ratings.csv").is_file():
        return "movielens"
    txts = _sequence_files(path)
    if txts and _items_file(path) is not None:
        return "sequence"
    return None


def _sequence_files(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*.txt") if not p.name.lower().startswith("readme"))


def _items_file(path: Path) -> Path | None:
    for name in ("items.jsonl", "items.jsonl.gz"):
        if (path / name).is_file():
            return path / name
    return None


def resolve_data_dir(data_dir: str | os.PathLike | None, dataset: str | None = None) -> Path:
    """Find the folder of one dataset from an explicit path, $SIDREC_DATA_DIR and a dataset name."""
    base = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if base is None:
        raise DataError(f"no data directory: pass --data DIR or set {DATA_DIR_ENV}")
    path = Path(base).expanduser()
    if dataset:
        path = path / dataset
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist")
    if detect_layout(path) is None:
        subs = sorted(p.name for p in path.iterdir() if p.is_dir() and detect_layout(p))
        if subs:
            raise DataError(f"{path} holds several datasets ({', '.join(subs)}): choose one with "
                            f"--dataset NAME")
        raise DataError(f"{path} is neither a MovieLens folder (ratings.csv) nor a sequence folder "
                        f"(one *.txt plus items.jsonl[.gz])")
    return path


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "sidrec")).expanduser()


# --------------------------------------------------------------------------- loading


def load_data(config: DataConfig | None = None, **overrides) -> RecData:
    """Load, validate and cache a dataset; see the module docstring for the common form."""
    import datasets
    from sidrec.artifacts import file_sha256, read_json, write_json

    config = config or DataConfig(**overrides)
    path = resolve_data_dir(config.data_dir, config.dataset)
    layout = detect_layout(path)
    sources = _source_files(path, layout, config)
    hashes = {p.name: file_sha256(p) for p in sources}
    hashes["_slice"] = json.dumps({"max_users": config.max_users, "tags": config.include_tags,
                                   "loader": _CACHE_FORMAT})
    key = hashlib.sha256(json.dumps([_CACHE_FORMAT, hashes], sort_keys=True).encode()).hexdigest()
    cdir = cache_root() / "data" / f"{path.name}-{key[:16]}"
    if (cdir / "report.json").is_file():
        rep = read_json(cdir / "report.json")
        report = DataReport(rows_read=rep["rows_read"], dropped=Counter(rep["dropped"]))
        catalog = datasets.load_from_disk(str(cdir / "catalog"))
        inter = datasets.load_from_disk(str(cdir / "interactions"))
    else:
        report = DataReport()
        if layout == "movielens":
            cat_t, int_t = _read_movielens(path, config, report)
        else:
            cat_t, int_t = _read_sequence(path, report)
        int_t = _finish_interactions(cat_t, int_t, config, report)
        cdir.parent.mkdir(parents=True, exist_ok=True)
        from sidrec.artifacts import atomic_dir

        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # a save of a few MB needs no bar
        try:
            with atomic_dir(cdir) as stage:
                datasets.Dataset(cat_t).save_to_disk(str(stage / "catalog"))
                datasets.Dataset(int_t).save_to_disk(str(stage / "interactions"))
                write_json(stage / "report.json", report.to_json())
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
        catalog = datasets.load_from_disk(str(cdir / "catalog"))
        inter = datasets.load_from_disk(str(cdir / "interactions"))
    return RecData(name=path.name, layout=layout, has_time=(layout == "movielens"), catalog=catalog,
                   interactions=inter, report=report, source_hashes=hashes, path=path)


def _source_files(path: Path, layout: str, config: DataConfig) -> list[Path]:
    if layout == "movielens":
        files = [path / "ratings.csv", path / "movies.csv"]
        if config.include_tags and (path / "tags.csv").is_file():
            files.append(path / "tags.csv")
        for f in files:
            if not f.is_file():
                raise DataError(f"MovieLens folder {path} is missing {f.name}")
        return files
    txts = _sequence_files(path)
    if len(txts) != 1:
        raise DataError(f"sequence folder {path} must hold exactly one *.txt of member sequences, "
                        f"found {len(txts)}: {', '.join(p.name for p in txts)}")
    return [txts[0], _items_file(path)]


def _read_csv(file: Path, columns: dict[str, pa.DataType], report: DataReport) -> pa.Table:
    try:
        table = pacsv.read_csv(file, convert_options=pacsv.ConvertOptions(
            column_types=columns, include_columns=list(columns)))
    except (pa.ArrowInvalid, KeyError) as e:
        header = file.open().readline().strip()
        missing = [c for c in columns if c not in header.split(",")]
        if missing:
            raise DataError(f"{file} lacks column(s) {', '.join(missing)} (header: {header})") from e
        raise DataError(f"{file} could not be parsed: {e}") from e
    report.rows_read[file.name] = table.num_rows
    for col in columns:
        nulls = table[col].null_count
        if nulls:
            report.drop(f"{file.name}: empty {col}", nulls)
            table = table.filter(pc.is_valid(table[col]))
    return table


_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _read_movielens(path: Path, config: DataConfig, report: DataReport) -> tuple[pa.Table, pa.Table]:
    movies = _read_csv(path / "movies.csv",
                       {"movieId": pa.string(), "title": pa.string(), "genres": pa.string()}, report)
    ids = movies["movieId"].to_pylist()
    dup = len(ids) - len(set(ids))
    if dup:
        report.drop("movies.csv: duplicate movieId (kept the first)", dup)
        _, first = np.unique(np.array(ids, dtype=object), return_index=True)
        movies = movies.take(np.sort(first))
    titles, years = [], []
    for t in movies["title"].to_pylist():
        m = _YEAR.search(t.strip())
        years.append(int(m.group(1)) if m else None)
        titles.append(t.strip())
    genres = [[] if g in ("(no genres listed)", "") else g.split("|")
              for g in movies["genres"].to_pylist()]
    catalog = pa.table({"item_id": movies["movieId"], "title": titles,
                        "categories": pa.array(genres, pa.list_(pa.string())),
                        "year": pa.array(years, pa.int32())})

    ratings = _read_csv(path / "ratings.csv", {"userId": pa.string(), "movieId": pa.string(),
                                               "rating": pa.float32(), "timestamp": pa.int64()}, report)
    parts = [pa.table({"user_id": ratings["userId"], "item_id": ratings["movieId"],
                       "timestamp": ratings["timestamp"],
                       "kind": pa.array(["rating"] * ratings.num_rows, pa.string()),
                       "rating": ratings["rating"],
                       "tag": pa.nulls(ratings.num_rows, pa.string())})]
    if config.include_tags and (path / "tags.csv").is_file():
        tags = _read_csv(path / "tags.csv", {"userId": pa.string(), "movieId": pa.string(),
                                             "tag": pa.string(), "timestamp": pa.int64()}, report)
        parts.append(pa.table({"user_id": tags["userId"], "item_id": tags["movieId"],
                               "timestamp": tags["timestamp"],
                               "kind": pa.array(["tag"] * tags.num_rows, pa.string()),
                               "rating": pa.nulls(tags.num_rows, pa.float32()),
                               "tag": tags["tag"]}))
    return catalog, pa.concat_tables(parts)


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _read_sequence(path: Path, report: DataReport) -> tuple[pa.Table, pa.Table]:
    items_file = _items_file(path)
    ids, titles, cats, seen = [], [], [], set()
    with _open_text(items_file) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{items_file.name} line {lineno} is not JSON: {e}") from e
            for key in ("item_id", "title"):
                if key not in obj:
                    raise DataError(f"{items_file.name} line {lineno} has no '{key}'")
            iid = str(obj["item_id"])
            if iid in seen:
                report.drop(f"{items_file.name}: duplicate item_id (kept the first)", 1)
                continue
            title = html.unescape(obj["title"] or "").strip()  # Amazon titles carry &amp; etc.
            if not title:
                report.drop(f"{items_file.name}: empty title", 1)
                continue
            seen.add(iid)
            ids.append(iid)
            titles.append(title)
            cats.append([str(c) for c in obj.get("categories") or []])
    report.rows_read[items_file.name] = len(ids)
    catalog = pa.table({"item_id": pa.array(ids, pa.string()), "title": titles,
                        "categories": pa.array(cats, pa.list_(pa.string())),
                        "year": pa.nulls(len(ids), pa.int32())})

    seq_file = _sequence_files(path)[0]
    users, items, pos = [], [], []
    seen_users: set[str] = set()
    n_lines = 0
    with open(seq_file, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            n_lines += 1
            user, seq = parts[0], parts[1:]
            if user in seen_users:
                report.drop(f"{seq_file.name}: repeated member line (kept the first)", 1)
                continue
            seen_users.add(user)
            if not seq:
                report.drop(f"{seq_file.name}: member with an empty history", 1)
                continue
            users.extend([user] * len(seq))
            items.extend(seq)
            pos.extend(range(len(seq)))
    report.rows_read[seq_file.name] = n_lines
    n = len(items)
    inter = pa.table({"user_id": pa.array(users, pa.string()), "item_id": pa.array(items, pa.string()),
                      "timestamp": pa.array(pos, pa.int64()),
                      "kind": pa.array(["interaction"] * n, pa.string()),
                      "rating": pa.nulls(n, pa.float32()), "tag": pa.nulls(n, pa.string())})
    return catalog, inter


def _finish_interactions(catalog: pa.Table, inter: pa.Table, config: DataConfig,
                         report: DataReport) -> pa.Table:
    """Drop (and count) unknown titles and exact duplicate rows; slice members; sort by (user, time)."""
    known = pc.is_in(inter["item_id"], value_set=catalog["item_id"])
    report.drop("interactions with a title id not in the catalog", inter.num_rows - pc.sum(known).as_py())
    inter = inter.filter(known)
    if config.max_users is not None:
        users = sorted(set(inter["user_id"].to_pylist()), key=_natural_key)[: config.max_users]
        inter = inter.filter(pc.is_in(inter["user_id"], value_set=pa.array(users, pa.string())))
    keys = ["user_id", "item_id", "timestamp", "kind", "tag"]
    before = inter.num_rows
    inter = inter.group_by(keys, use_threads=False).aggregate([("rating", "max")]) \
        .rename_columns(keys + ["rating"])
    report.drop("duplicate interaction rows", before - inter.num_rows)
    if inter.num_rows == 0:
        raise DataError("no interactions left after validation; see the drop counts: "
                        + "; ".join(report.lines()))
    order = pc.sort_indices(inter, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending"),
                                              ("kind", "ascending"), ("item_id", "ascending")])
    inter = inter.take(order)
    return inter.select(["user_id", "item_id", "timestamp", "kind", "rating", "tag"])


def _natural_key(s: str) -> tuple:
    return (0, int(s), "") if s.isdigit() else (1, 0, s)
