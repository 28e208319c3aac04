"""The `sidrec` command line: one parser for every command a person runs.

The flags of the stage commands are in ``sidrec.stage_commands``, those of the measuring commands
(``sidrec bench ...``, ``sidrec baseline``, ``sidrec report``) in ``sidrec.bench_commands``, shared
ones in ``sidrec.arguments``. Each command names its handler as a ``"module:function"`` string (a
function in ``sidrec.handlers``), imported only when that command runs, so that `sidrec --help` and
argument errors answer without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from core.artifacts import ArtifactError
from core.data import DataError
from core.logs import route_library_logs, split_logging_flags
from sidrec.arguments import console
from sidrec.bench_commands import add_bench_commands
from sidrec.stage_commands import add_stage_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidrec",
        description=__doc__.splitlines()[0],
        epilog="Every command also takes --verbose (library messages on the screen) and --log-file "
        "PATH (where they go otherwise: $SIDREC_LOG_FILE, else sidrec.log in the cache folder).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_stage_commands(sub)
    add_bench_commands(sub)
    return parser


def handler(name: str) -> Callable[[argparse.Namespace], int | None]:
    """The function a command names as ``"module:function"``, its module imported now."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    argv, verbose, log_file = split_logging_flags(argv)
    if argv[:1] not in (["-h"], ["--help"], []) and "-h" not in argv and "--help" not in argv:
        path = route_library_logs(log_file, verbose)
        if path is not None and argv[:1] in (["quickstart"], ["refresh"], ["serve"], ["pretrain"]):
            console.print(f"[dim]library messages go to {path} (--verbose shows them here)[/dim]")
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line, for the results files that record it
    try:
        return handler(args.func)(args) or 0
    except (DataError, ArtifactError, FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        if os.environ.get("SIDREC_DEBUG"):
            raise
        console.print(f"[red]error:[/red] {e}", soft_wrap=True)  # one line: paths and URLs stay whole
        return 2


if __name__ == "__main__":
    sys.exit(main())
