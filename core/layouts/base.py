"""What a dataset layout is given (``DataConfig``, ``DataReport``), raises (``DataError``) and
provides to ``core.data`` (``Layout``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa


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


@dataclass(frozen=True)
class Layout:
    name: str
    description: str  # for errors: what a folder of this layout holds
    has_time: bool  # timestamps are a clock (unix seconds), not positions in each sequence
    detect: Callable[[Path], bool]  # does this folder hold this layout?
    # The files whose hashes identify the data (a changed file is a new dataset); DataError if one
    # the layout needs is missing.
    source_files: Callable[[Path, "DataConfig"], list[Path]]
    # (catalog, interactions) as Arrow tables in the common form (catalog_table, interaction_table);
    # every dropped row counted
    read: Callable[[Path, "DataConfig", "DataReport"], "tuple[pa.Table, pa.Table]"]


# The common form's two tables (``core.data``'s docstring says what each column holds).
CATALOG = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("year", pa.int32()),
    ]
)
INTERACTIONS = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("kind", pa.string()),
        ("rating", pa.float32()),
        ("tag", pa.string()),
    ]
)


def catalog_table(item_id: Any, title: Any, categories: Any = None, year: Any = None) -> pa.Table:
    """A layout's catalog in the common form: columns as lists or Arrow arrays; without
    ``categories`` every title has none, without ``year`` every year is unknown (null)."""
    n = len(item_id)
    columns = {
        "item_id": item_id,
        "title": title,
        "categories": [[]] * n if categories is None else categories,
        "year": [None] * n if year is None else year,
    }
    return pa.table(columns, schema=CATALOG)


def interaction_table(
    user_id: Any, item_id: Any, timestamp: Any, kind: str, rating: Any = None, tag: Any = None
) -> pa.Table:
    """Events of one ``kind`` ("rating", "tag", "interaction") in the common form: columns as lists
    or Arrow arrays; ``rating`` and ``tag`` are null where not given."""
    n = len(user_id)
    columns = {
        "user_id": user_id,
        "item_id": item_id,
        "timestamp": timestamp,
        "kind": [kind] * n,
        "rating": [None] * n if rating is None else rating,
        "tag": [None] * n if tag is None else tag,
    }
    return pa.table(columns, schema=INTERACTIONS)
