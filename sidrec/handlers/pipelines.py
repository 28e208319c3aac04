"""``sidrec quickstart``, ``sidrec refresh`` and ``sidrec catalog update``: runs over several stages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.artifacts import write_json
from core.overrides import config_from_args
from eval.machine import machine_info
from sidrec.arguments import command_line, console, data_config, set_threads
from sidrec.catalog import update_catalog
from sidrec.quickstart import QuickstartConfig, quickstart
from sidrec.refresh import refresh, simulate
from sidrec.refresh_config import RefreshConfig, parse_since


def cmd_quickstart(args) -> None:
    set_threads(args)
    config = config_from_args(QuickstartConfig, args.preset, args.set, dataset=args.dataset, out=args.out)
    quickstart(config, data_dir=args.data, command=command_line(args))


def cmd_refresh(args) -> None:
    set_threads(args)
    if bool(args.model) == args.simulate:
        raise SystemExit(
            "error: give either --model DIR (refresh a trained model with newer data) "
            "or --simulate (hold out the newest titles, build the old world's model, "
            "then refresh it)"
        )
    config = config_from_args(RefreshConfig, args.preset, args.set)
    if args.since is not None:
        config = dataclasses.replace(config, **parse_since(args.since))
    if args.simulate:
        simulate(data_config(args), args.out, config, results=args.results)
    else:
        refresh(args.model, data_config(args), args.out, config, results=args.results)


def cmd_catalog_update(args) -> None:
    set_threads(args)
    report = update_catalog(args.model, data_config(args, args.model), args.out)
    console.print(
        f"{report['added_titles']:,} new title(s) servable in {report['model']} "
        f"({report['trained_titles']:,} trained, {report['titles']:,} in all; {report['seconds']} s)"
    )
    for line in report["examples"]:
        console.print(f"  {line}")
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        write_json(
            args.results,
            {"kind": "catalog_update", **report, "command": command_line(args), "machine": machine_info()},
        )
