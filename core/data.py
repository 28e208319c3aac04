"""Read a data directory in any registered layout (``core.layouts``) into one common, memory-mapped form.

Layouts: MovieLens CSV (``ratings.csv`` + ``movies.csv``, optional ``tags.csv``); a sequence file
(exactly one ``*.txt`` of ``user item item ...`` lines in time order plus ``items.jsonl`` or
``items.jsonl.gz``: ``item_id``, ``title``, optional ``categories``).

The common form is two Hugging Face ``datasets`` tables saved as Arrow and memory-mapped from a
cache keyed by the source files' hashes (tables larger than RAM are not held in memory):
- catalog: ``item_id`` (str), ``title`` (str), ``categories`` (list[str]), ``year`` (int, null if unknown)
- interactions: ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64: unix seconds, or the
  position in the member's sequence when the layout has no clock), ``kind`` ("rating", "tag" or
  "interaction"), ``rating`` (float, null), ``tag`` (str, null)

Every dropped row is counted under a named reason in ``DataReport``; structural problems (missing
files or columns) raise ``DataError``."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from core.artifacts import atomic_dir, file_sha256, read_json, write_json
from core.layouts import LAYOUTS

DATA_DIR_ENV = "SIDREC_DATA_DIR"
CACHE_DIR_ENV = "SIDREC_CACHE_DIR"
_CACHE_FORMAT = "v2"


# What a layout's reader is given and raises live with the layouts' contract; re-exported here.
from core.layouts.base import DataConfig, DataError, DataReport  # noqa: E402, F401


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

    def title_tags(self, skip: Callable[[str, str], bool] | None = None) -> dict[str, list[str]]:
        """What members wrote about each title: item_id -> its distinct tags (stripped, lower-cased),
        most often written first, then in the data's order; {} for data without tags. `skip(tag,
        item_id)` leaves pairs out (a benchmark's held-out queries must not describe their answer)."""
        inter = self.interactions
        if "tag" not in inter.column_names:
            return {}
        tags = inter.filter(lambda k, t: k == "tag" and bool(t and t.strip()), input_columns=["kind", "tag"])
        counts: dict[str, Counter] = {}
        for item, tag in zip(tags["item_id"], tags["tag"]):
            text = tag.strip().lower()
            if skip is None or not skip(text, item):
                counts.setdefault(item, Counter())[text] += 1
        return {item: [t for t, _ in c.most_common()] for item, c in counts.items()}


# --------------------------------------------------------------------------- locating data


def detect_layout(path: Path) -> str | None:
    """The name of the first layout in ``core.layouts.LAYOUTS`` that recognises the folder."""
    return next((name for name, layout in LAYOUTS.items() if layout.detect(path)), None)


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
            raise DataError(
                f"{path} holds several datasets ({', '.join(subs)}): choose one with --dataset NAME"
            )
        kinds = [f"a {lay.description}" for lay in LAYOUTS.values()]
        raise DataError(f"{path} is neither {', '.join(kinds[:-1])} nor {kinds[-1]}")
    return path


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "sidrec")).expanduser()


# --------------------------------------------------------------------------- loading


def load_data(config: DataConfig | None = None, **overrides) -> RecData:
    """Load, validate and cache a dataset; see the module docstring for the common form."""
    import datasets

    config = config or DataConfig(**overrides)
    path = resolve_data_dir(config.data_dir, config.dataset)
    layout = detect_layout(path)
    reader = LAYOUTS[layout]
    sources = reader.source_files(path, config)
    hashes = {p.name: file_sha256(p) for p in sources}
    hashes["_slice"] = json.dumps(
        {"max_users": config.max_users, "tags": config.include_tags, "loader": _CACHE_FORMAT}
    )
    key = hashlib.sha256(json.dumps([_CACHE_FORMAT, hashes], sort_keys=True).encode()).hexdigest()
    cdir = cache_root() / "data" / f"{path.name}-{key[:16]}"
    if (cdir / "report.json").is_file():
        rep = read_json(cdir / "report.json")
        report = DataReport(rows_read=rep["rows_read"], dropped=Counter(rep["dropped"]))
        catalog = datasets.load_from_disk(str(cdir / "catalog"))
        inter = datasets.load_from_disk(str(cdir / "interactions"))
    else:
        report = DataReport()
        cat_t, int_t = reader.read(path, config, report)
        int_t = _finish_interactions(cat_t, int_t, config, report)
        cdir.parent.mkdir(parents=True, exist_ok=True)
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
    return RecData(
        name=path.name,
        layout=layout,
        has_time=reader.has_time,
        catalog=catalog,
        interactions=inter,
        report=report,
        source_hashes=hashes,
        path=path,
    )


def _finish_interactions(
    catalog: pa.Table, inter: pa.Table, config: DataConfig, report: DataReport
) -> pa.Table:
    """Drop (and count) unknown titles and exact duplicate rows; slice members; sort by (user, time)."""
    known = pc.is_in(inter["item_id"], value_set=catalog["item_id"])
    report.drop("interactions with a title id not in the catalog", inter.num_rows - pc.sum(known).as_py())
    inter = inter.filter(known)
    if config.max_users is not None:
        users = sorted(set(inter["user_id"].to_pylist()), key=_natural_key)[: config.max_users]
        inter = inter.filter(pc.is_in(inter["user_id"], value_set=pa.array(users, pa.string())))
    keys = ["user_id", "item_id", "timestamp", "kind", "tag"]
    before = inter.num_rows
    inter = (
        inter.group_by(keys, use_threads=False)
        .aggregate([("rating", "max")])
        .rename_columns(keys + ["rating"])
    )
    report.drop("duplicate interaction rows", before - inter.num_rows)
    if inter.num_rows == 0:
        raise DataError(
            "no interactions left after validation; see the drop counts: " + "; ".join(report.lines())
        )
    order = pc.sort_indices(
        inter,
        sort_keys=[
            ("user_id", "ascending"),
            ("timestamp", "ascending"),
            ("kind", "ascending"),
            ("item_id", "ascending"),
        ],
    )
    inter = inter.take(order)
    return inter.select(["user_id", "item_id", "timestamp", "kind", "rating", "tag"])


def _natural_key(s: str) -> tuple:
    return (0, int(s), "") if s.isdigit() else (1, 0, s)
