"""What a dataset layout provides to ``core.data``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from core.data import DataConfig, DataReport


class DataError(ValueError):
    """The data directory cannot be read: a missing file or column, or no usable rows."""


@dataclass(frozen=True)
class Layout:
    name: str
    description: str  # for errors: what a folder of this layout holds
    has_time: bool  # timestamps are a clock (unix seconds), not positions in each sequence
    detect: Callable[[Path], bool]  # does this folder hold this layout?
    # The files whose hashes identify the data (a changed file is a new dataset); DataError if one
    # the layout needs is missing.
    source_files: Callable[[Path, "DataConfig"], list[Path]]
    # (catalog, interactions) as Arrow tables in the common form; every dropped row counted
    read: Callable[[Path, "DataConfig", "DataReport"], "tuple[pa.Table, pa.Table]"]
