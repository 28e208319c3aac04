"""The ``sidrec bench`` handlers hand every parameter of their benchmark function a command-line
value (``sidrec.arguments.call_with_args``): none is left at the function's default unseen."""

from __future__ import annotations

import inspect

import pytest

import sidrec.handlers.bench as bench
import sidrec.handlers.bench_ids as bench_ids
from sidrec.cli import build_parser, handler

# (argv, the handler module, the benchmark function's name there, a report its exit check reads)
COMMANDS = [
    (["serving", "--model", "m", "--out", "o.json"], bench, "bench_serving",
     {"invalid_ids": 0, "rule_violations": 0}),
    (["load", "--model", "m", "--out", "o.json"], bench, "bench_load", {"error_count": 0, "health_after": 200}),
    (["batch", "--model", "m", "--out", "o.json"], bench, "bench_batch", {"identical_lists": 1, "members": 1}),
    (["new-title-pool", "--dataset", "ml-latest-small", "--out", "o.json"], bench, "bench_new_title_pool", {}),
    (["embeddings", "--model", "m", "--out", "o.json"], bench, "bench_embeddings", {}),
    (["canvases", "--model", "m", "--out", "o.json", "--set", "epochs=1"], bench, "bench_canvases", {}),
    (["ids", "--dataset", "ml-latest-small"], bench_ids, "bench_ids", {}),
]  # fmt: skip


@pytest.mark.parametrize(
    "argv, module, name, report", COMMANDS, ids=lambda v: v if isinstance(v, str) else None
)
def test_every_benchmark_parameter_comes_from_the_command_line(argv, module, name, report, monkeypatch):
    real = getattr(module, name)
    seen: dict = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return report

    fake.__signature__ = inspect.signature(real)  # what call_with_args reads
    fake.__name__ = name
    monkeypatch.setattr(module, name, fake)
    monkeypatch.setattr(bench, "set_threads", lambda args: None)  # keep this process's torch threads
    args = build_parser().parse_args(["bench", *argv])
    args.argv = ["bench", *argv]

    assert handler(args.func)(args) in (0, None)
    assert set(seen) == set(inspect.signature(real).parameters)
    assert seen["command"].startswith("sidrec bench ")
    if "data_dir" in seen:
        assert seen["data_dir"] == args.data
