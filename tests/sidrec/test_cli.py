"""The `sidrec` command line as a user runs it: real slices, clear errors, exit codes."""

from __future__ import annotations

import json
import re

import pytest

from sidrec.bench_commands import BASELINE_KINDS, BENCHMARKS
from sidrec.cli import main

FAST = (
    "--set text_weight=0 --set metadata_weight=1 --set codebook_size=32 --set dedup_size=64 "
    "--set quantizer_options.kmeans_iters=5"
).split()


def test_ids_build_inspect_assign(ml_slice_args, tmp_path, capsys):
    out = tmp_path / "ids"
    rc = main(["ids", "build", *ml_slice_args, "--out", str(out), "--quantizer", "rqkmeans", *FAST])
    assert rc == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["unique_ids"] and stats["num_items"] == 9742
    assert main(["ids", "inspect", str(out), "--groups", "2"]) == 0
    text = capsys.readouterr().out
    assert "collision_rate" in text and "Titles sharing their first" in text
    # nothing new in the same catalog: map version stays 1
    assert main(["ids", "assign", "--ids", str(out), *ml_slice_args]) == 0
    assert "0 new title(s)" in capsys.readouterr().out


def test_clear_errors(data_dir, tmp_path, capsys):
    assert main(["ids", "inspect", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().out
    assert main(["ids", "build", "--data", str(data_dir), "--out", str(tmp_path / "x")]) == 2
    assert "choose one with --dataset" in capsys.readouterr().out
    x = str(tmp_path / "x")
    build = ["ids", "build", "--data", str(data_dir), "--dataset", "ml-latest-small", "--out", x]
    bad = (("levels=3", "unknown SemanticIDConfig field"), ("codebook_size=1", "invalid SemanticIDConfig"))
    for override, error in bad:
        with pytest.raises(SystemExit, match=error):
            main([*build, "--set", override])
    assert not (tmp_path / "x").exists()


def test_pretrain_init_from_starts_from_a_model_and_refuses_another_shape(ml_slice_args, tmp_path, capsys):
    ids, common = tmp_path / "ids", ml_slice_args
    assert main(["ids", "build", *common, "--out", str(ids), "--quantizer", "rqkmeans", *FAST]) == 0
    tiny = ["--ids", str(ids), *"--preset tiny --threads 1 --set epochs=1 --set eval_every=0".split()]
    tiny += "--set num_user_buckets=4 --set batch_size=8".split()
    assert main(["pretrain", *common, *tiny, "--out", str(tmp_path / "a")]) == 0
    parent = tmp_path / "a" / "model"
    assert main(["pretrain", *common, *tiny, "--out", str(tmp_path / "b"), "--init-from", str(parent)]) == 0
    manifest = json.loads((tmp_path / "b" / "model" / "manifest.json").read_text())
    assert "init_from" in manifest["parents"]
    capsys.readouterr()
    other_shape = [*tiny, "--set", "num_user_buckets=0"]
    assert (
        main(["pretrain", *common, *other_shape, "--out", str(tmp_path / "c"), "--init-from", str(parent)])
        == 2
    )
    err = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "cannot start from" in err and "token layout" in err
    assert not (tmp_path / "c" / "model").exists()

    # evaluation on a device this machine does not have: a clear error before any work
    def evaluate(device: str, *more: str) -> int:
        return main(["eval", *common, "--model", str(parent), "--eval-users", "5", "--device", device, *more])

    with pytest.raises(SystemExit, match="no CUDA GPU|only .* CUDA device"):
        evaluate("cuda:7")
    with pytest.raises(SystemExit, match="not a torch device"):
        evaluate("gpu-please")
    assert evaluate("cpu", "--out", str(tmp_path / "e.json")) == 0
    assert json.loads((tmp_path / "e.json").read_text())["device"] == "cpu"


def test_bench_help_lists_every_benchmark(capsys):
    assert BENCHMARKS == (
        "serving",
        "load",
        "ids",
        "batch",
        "embeddings",
        "canvases",
        "new-title-pool",
        "unseen-titles",
    )
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in BENCHMARKS:
        assert re.search(rf"^ +{re.escape(name)}\s", text, re.M), f"{name} not listed:\n{text}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in ("bench", "baseline", "report"):  # one parser: the measuring commands are listed too
        assert re.search(rf"^ +{name}\s", text, re.M), f"{name} not listed:\n{text}"


def test_pretrain_help_names_every_concern_of_the_config(capsys):
    import dataclasses

    from gen_fm.config import PretrainConfig

    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "optim.lr=0.002" in text and "(lr=0.002)" in text
    for f in dataclasses.fields(PretrainConfig):
        assert f.name in text, f"--set help does not name {f.name}"


@pytest.mark.parametrize(
    "argv, missing",
    [
        (["bench"], "BENCHMARK"),
        (["bench", "embeddings", "--out", "x.json"], "--model"),
        (["bench", "ids", "--quantizer", "rqkmeans"], "--dataset"),
        (["bench", "serving", "--model", "m"], "--out"),
        (["baseline", "--out", "x.json"], "--kind"),
    ],
)
def test_a_missing_required_flag_is_a_clear_argparse_error(argv, missing, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    prog = " ".join(argv[:2] if argv[0] == "bench" and len(argv) > 1 else argv[:1])
    assert f"sidrec {prog}: error: the following arguments are required: {missing}" in capsys.readouterr().err


def test_baseline_popular_on_a_slice(data_dir, tmp_path, capsys):
    from eval.baselines import BASELINES

    assert BASELINE_KINDS == BASELINES
    out = tmp_path / "popular.json"
    argv = ["baseline", "--kind", "popular", "--data", str(data_dir), "--dataset", "ml-latest-small"]
    argv += ["--max-users", "40", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["baseline"] == "popular" and report["num_users"] == {"valid": 40, "test": 40}
    assert report["command"] == ["sidrec", *argv]  # the command a person can run again
    text = capsys.readouterr().out
    assert "test: recall@5" in text and "params 0" in text
    assert main([*argv, "--set", "hidden=8"]) == 2  # popular takes no hyperparameters
    assert "no hyperparameters" in capsys.readouterr().out


def _commands(parser, prefix=()):
    """(command words, its parser) of every leaf command."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))
            return
    yield prefix, parser


BAD_VALUES = {"--out": None, "--canvas": "home", "--dataset": "nope", "--kind": "popular"}


def test_every_command_answers_bad_paths_with_one_clear_error(tmp_path, capsys) -> None:
    """Walk every command with a data folder, model and artifacts that do not exist: each one ends
    with a one-line error (exit 2) and no traceback, and writes nothing."""
    from sidrec.cli import build_parser

    missing = str(tmp_path / "does-not-exist")
    for words, parser in _commands(build_parser()):
        if words == ("prompts", "list"):
            continue  # lists the registered canvases: nothing can be missing
        options = {o for a in parser._actions for o in a.option_strings}
        argv = list(words)
        for action in parser._actions:
            if action.required and action.option_strings:
                flag = action.option_strings[0]
                value = BAD_VALUES.get(flag, missing)
                argv += [flag, str(tmp_path / "out") if value is None else value]
            elif not action.option_strings and action.nargs is None:  # a positional path
                argv.append(missing)
        for flag in ("--data", "--results"):
            if flag in options and flag not in argv:
                argv += [flag, missing]
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: a bad choice or a missing flag
            code = e.code
        said = capsys.readouterr()
        text = said.out + said.err
        # exit 2 with the message printed, or SystemExit("error: ...") for a contradictory command line
        assert code == 2 or str(code).startswith("error:"), (argv, code, text[-500:])
        text += str(code)
        assert "Traceback" not in text and "error" in text.lower(), (argv, text[-500:])
        assert not (tmp_path / "out").exists(), argv


def test_every_command_names_a_handler_that_resolves():
    """Each command's func is a "module:function" string in sidrec.handlers naming a callable."""
    from sidrec.cli import build_parser, handler

    for words, parser in _commands(build_parser()):
        name = parser.get_default("func")
        assert isinstance(name, str) and re.fullmatch(r"sidrec\.handlers\.\w+:\w+", name), (words, name)
        assert callable(handler(name)), (words, name)


def test_building_the_parser_imports_no_torch_and_no_handler():
    """`sidrec --help` and argument errors answer without torch: the handlers load when a command runs."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sidrec.cli import build_parser\n"
        "build_parser()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'vllm') "
        "or m.startswith('sidrec.handlers')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
