"""Flags that several `sidrec` commands share, declared once: data, config overrides, threads.

Its own module (not ``sidrec.cli``) so that the command modules can use it while ``sidrec.cli``
imports them to build the one parser, without an import cycle.
"""

from __future__ import annotations

import argparse
import inspect
import shlex
from collections.abc import Callable
from typing import Any

from rich.console import Console

from core.artifacts import read_manifest
from core.data import DataConfig

console = Console()


def add_data_args(
    p: argparse.ArgumentParser,
    *,
    dataset: bool = True,
    dataset_required: bool = False,
    dataset_help: str | None = None,
    max_users: bool = True,
) -> None:
    """``--data`` and, as the command needs them, ``--dataset`` and ``--max-users``."""
    p.add_argument("--data", help="data directory (default: $SIDREC_DATA_DIR)")
    if dataset or dataset_required:
        p.add_argument(
            "--dataset",
            required=dataset_required,
            help=dataset_help or "sub-folder of --data holding one dataset, e.g. amazon-beauty",
        )
    if max_users:
        p.add_argument("--max-users", type=int, help="read only the first N members (quick runs)")


def add_config_args(
    p: argparse.ArgumentParser, config: str, *, preset: bool = True, set_help: str | None = None
) -> None:
    """``--preset FILE`` (a JSON file of overrides) and ``--set KEY=VALUE`` (repeatable, JSON values)
    for the config class named ``config``."""
    if preset:
        p.add_argument("--preset", help=f"JSON file of {config} overrides")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help=set_help
        or f"override one {config} field, by its dotted path or, where unique, its name alone "
        "(repeatable; the value is JSON)",
    )


# ``--set`` of the commands that build a PretrainConfig (kept in step with its concerns by a test).
PRETRAIN_SET_HELP = (
    "override one PretrainConfig field, by its path (optim.lr=0.002, model.hidden_dropout=0.1) or "
    "its name alone (lr=0.002); concerns: model, titles, objectives, augment, optim, validation, "
    "checkpoints, plus seed (docs/configuration.md). Repeatable; the value is JSON"
)


def add_threads_arg(
    p: argparse.ArgumentParser, default: int | None = None, help_text: str = "torch CPU threads"
) -> None:
    p.add_argument("--threads", type=int, default=default, help=help_text)


def add_engine_args(p: argparse.ArgumentParser, each: str) -> None:
    """--engine local|ray and --workers (the platform jobs: batch lists, embeddings)."""
    p.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="local: one loop in this process; ray: a Ray Data pipeline of --workers actors "
        "(pip install -e '.[ray]'; a local Ray unless RAY_ADDRESS names a cluster)",
    )
    p.add_argument("--workers", type=int, default=1, help=f"Ray actors, each with its own {each}")


def data_config(args: argparse.Namespace, model_dir: str | None = None):
    """--data/--dataset/--max-users; with ``model_dir``, the dataset defaults to the model's own."""
    dataset = getattr(args, "dataset", None)
    if dataset is None and model_dir is not None:
        dataset = (read_manifest(model_dir).get("data") or {}).get("dataset")
    return DataConfig(data_dir=args.data, dataset=dataset, max_users=getattr(args, "max_users", None))


def set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch  # here, not at the top: building the parser must not import torch

        torch.set_num_threads(args.threads)


def call_with_args(fn: Callable[..., Any], args: argparse.Namespace, **given: Any) -> Any:
    """``fn`` called with each parameter it takes from the command line: ``given`` first (values
    renamed or converted), ``data_dir`` from ``--data``, ``command`` the command as typed, and any
    other from the option of the same name (a parameter no option names keeps its default). A
    ``fn`` with ``**kwargs`` takes the rest of ``given`` there."""
    params = inspect.signature(fn).parameters
    variadic = {n for n, p in params.items() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    named = [n for n in params if n not in variadic]
    takes_any = any(params[n].kind == inspect.Parameter.VAR_KEYWORD for n in variadic)
    if not takes_any and set(given) - set(named):
        raise TypeError(f"{fn.__name__} takes no {sorted(set(given) - set(named))}")
    kwargs: dict[str, Any] = {n: v for n, v in given.items() if n not in named}  # into **kwargs
    for name in named:
        if name in given:
            kwargs[name] = given[name]
        elif name == "data_dir":
            kwargs[name] = args.data
        elif name == "command":
            kwargs[name] = command_line(args)
        elif hasattr(args, name):
            kwargs[name] = getattr(args, name)
    return fn(**kwargs)


def command_line(args: argparse.Namespace) -> str:
    """The command as a person typed it (``sidrec bench ...``), for the results files to record."""
    return shlex.join(["sidrec", *getattr(args, "argv", [])])
