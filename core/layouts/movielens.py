"""MovieLens CSV: ``ratings.csv`` + ``movies.csv`` (+ optional ``tags.csv``), timestamped."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from core.layouts.base import DataConfig, DataError, DataReport, Layout, catalog_table, interaction_table


def _detect(path: Path) -> bool:
    return (path / "ratings.csv").is_file()


def _source_files(path: Path, config: DataConfig) -> list[Path]:
    files = [path / "ratings.csv", path / "movies.csv"]
    if config.include_tags and (path / "tags.csv").is_file():
        files.append(path / "tags.csv")
    for f in files:
        if not f.is_file():
            raise DataError(f"MovieLens folder {path} is missing {f.name}")
    return files


def _read_csv(file: Path, columns: dict[str, pa.DataType], report: DataReport) -> pa.Table:
    try:
        table = pacsv.read_csv(
            file, convert_options=pacsv.ConvertOptions(column_types=columns, include_columns=list(columns))
        )
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
    movies = _read_csv(
        path / "movies.csv", {"movieId": pa.string(), "title": pa.string(), "genres": pa.string()}, report
    )
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
    genres = [[] if g in ("(no genres listed)", "") else g.split("|") for g in movies["genres"].to_pylist()]
    catalog = catalog_table(movies["movieId"], titles, genres, years)

    ratings = _read_csv(
        path / "ratings.csv",
        {"userId": pa.string(), "movieId": pa.string(), "rating": pa.float32(), "timestamp": pa.int64()},
        report,
    )
    parts = [
        interaction_table(
            ratings["userId"], ratings["movieId"], ratings["timestamp"], "rating", rating=ratings["rating"]
        )
    ]
    if config.include_tags and (path / "tags.csv").is_file():
        tags = _read_csv(
            path / "tags.csv",
            {"userId": pa.string(), "movieId": pa.string(), "tag": pa.string(), "timestamp": pa.int64()},
            report,
        )
        parts.append(
            interaction_table(tags["userId"], tags["movieId"], tags["timestamp"], "tag", tag=tags["tag"])
        )
    return catalog, pa.concat_tables(parts)


MOVIELENS = Layout(
    name="movielens",
    description="MovieLens folder (ratings.csv, movies.csv)",
    has_time=True,
    detect=_detect,
    source_files=_source_files,
    read=_read_movielens,
)
