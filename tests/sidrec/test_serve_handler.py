"""``sidrec serve`` hands the server every option it was given, ``--set`` fields included."""

from __future__ import annotations

import inspect

import sidrec.handlers.serve as serve_handler
from sidrec.cli import build_parser, handler


def test_serve_gets_every_option_and_the_set_fields(monkeypatch, tmp_path):
    real = serve_handler.serve
    seen: dict = {}

    def fake(**kwargs):
        seen.update(kwargs)

    fake.__signature__ = inspect.signature(real)  # what call_with_args reads
    fake.__name__ = "serve"
    monkeypatch.setattr(serve_handler, "serve", fake)
    argv = ["serve", "--model", "m", "--port", "8123", "--data", str(tmp_path), "--set", "num_beams=20"]
    args = build_parser().parse_args(argv)
    args.argv = argv

    handler(args.func)(args)
    assert seen["model_dir"] == "m" and seen["port"] == 8123 and seen["data_dir"] == str(tmp_path)
    assert seen["num_beams"] == 20  # a --set field goes into serve's **config
    assert "config" not in seen and "set" not in seen
    named = {n for n, p in inspect.signature(real).parameters.items() if p.kind != p.VAR_KEYWORD}
    assert named - set(seen) <= {"max_body_bytes", "max_queue", "log_level"}  # no option names these
