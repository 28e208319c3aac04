"""Sequence file: exactly one ``*.txt`` of ``user item item ...`` lines in time order, plus
``items.jsonl`` or ``items.jsonl.gz`` (``item_id``, ``title``, optional ``categories``). No clock: a
timestamp is the position in the member's sequence."""

from __future__ import annotations

import gzip
import html
import json
from pathlib import Path

import pyarrow as pa

from core.layouts.base import DataConfig, DataError, DataReport, Layout, catalog_table, interaction_table


def _detect(path: Path) -> bool:
    return bool(_sequence_files(path)) and _items_file(path) is not None


def _sequence_files(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*.txt") if not p.name.lower().startswith("readme"))


def _items_file(path: Path) -> Path | None:
    for name in ("items.jsonl", "items.jsonl.gz"):
        if (path / name).is_file():
            return path / name
    return None


def _source_files(path: Path, config: DataConfig) -> list[Path]:
    txts = _sequence_files(path)
    if len(txts) != 1:
        raise DataError(
            f"sequence folder {path} must hold exactly one *.txt of member sequences, "
            f"found {len(txts)}: {', '.join(p.name for p in txts)}"
        )
    return [txts[0], _items_file(path)]


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _read_sequence(path: Path, config: DataConfig, report: DataReport) -> tuple[pa.Table, pa.Table]:
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
    catalog = catalog_table(ids, titles, cats)

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
    inter = interaction_table(users, items, pos, "interaction")
    return catalog, inter


SEQUENCE = Layout(
    name="sequence",
    description="sequence folder (one *.txt plus items.jsonl[.gz])",
    has_time=False,
    detect=_detect,
    source_files=_source_files,
    read=_read_sequence,
)
