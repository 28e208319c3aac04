"""``sidrec data fetch | list``: the public datasets of the README, fetched into a data directory
(``core.fetch``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.data import DATA_DIR_ENV, DataError
from core.fetch import FETCHED, SOURCES, dataset_present, fetch_dataset
from sidrec.arguments import console


def _data_root(args) -> Path:
    base = args.data if args.data is not None else os.environ.get(DATA_DIR_ENV)
    if not base:
        raise DataError(f"no data directory: pass --data DIR or set {DATA_DIR_ENV}")
    return Path(base).expanduser()


def cmd_data_fetch(args) -> None:
    root = _data_root(args)

    def say(line: str) -> None:
        console.print(line, soft_wrap=True)  # one line: paths and URLs stay whole at any width

    path = fetch_dataset(args.name, root, force=args.force, base_url=args.mirror, log=say)
    fetched = path / FETCHED
    if fetched.is_file():
        counts = json.loads(fetched.read_text()).get("counts", {})
        say(f"{args.name} is in {path}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))


def cmd_data_list(args) -> None:
    root = _data_root(args)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist (`sidrec data fetch NAME` creates it)")
    console.print(f"datasets in {root}:")
    for name, source in SOURCES.items():
        present = dataset_present(root, name)
        when = ""
        if present and (root / name / FETCHED).is_file():
            when = f", fetched {json.loads((root / name / FETCHED).read_text()).get('fetched', '?')}"
        state = f"[green]present[/green]{when}" if present else "[yellow]missing[/yellow]"
        console.print(f"  {name:<18} {state}  {source.description}")
    console.print(
        "[dim]`sidrec data fetch NAME` fetches one (terms: each folder's README or FETCHED.json)[/dim]"
    )
