"""Library chatter goes to the log file, not the screen; --verbose keeps it on the screen."""

from __future__ import annotations

import os
import subprocess
import sys

from core.logs import split_logging_flags as _logging_flags

SCRIPT = """
import logging, sys, warnings
from core.logs import route_library_logs
path = route_library_logs(sys.argv[1] if sys.argv[1] != "-" else None, verbose=sys.argv[2] == "1")
logging.getLogger("accelerate.utils.other").warning("Removed shared tensor while saving")
logging.getLogger("vllm.engine").info("vllm info line")
from transformers.utils import logging as hf
hf.get_logger("transformers.modeling_utils").warning("transformers chatter")
warnings.warn("a future warning", FutureWarning)
import datasets
datasets.Dataset.from_dict({"x": list(range(300))}).filter(lambda x: x % 2 == 0, input_columns=["x"])
print("result line", path)
"""


def _run(tmp_path, verbose: bool) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "logs" / "run.log"
    # a clean environment: an earlier in-process command may have set these for its children
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PYTHONWARNINGS",
            "VLLM_LOGGING_CONFIG_PATH",
            "VLLM_CONFIGURE_LOGGING",
            "HF_DATASETS_DISABLE_PROGRESS_BARS",
        )
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log), "1" if verbose else "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out, log.read_text() if log.exists() else ""


def test_library_messages_go_to_the_file_and_results_stay_on_screen(tmp_path) -> None:
    out, text = _run(tmp_path, verbose=False)
    screen = out.stdout + out.stderr
    assert "result line" in out.stdout
    for line in ("Removed shared tensor", "vllm info line", "transformers chatter", "a future warning"):
        assert line not in screen
        assert line in text
    assert "Filter" not in screen  # datasets' bar for a filter


def test_verbose_leaves_them_on_screen(tmp_path) -> None:
    out, text = _run(tmp_path, verbose=True)
    assert "result line None" in out.stdout and text == ""
    assert "Removed shared tensor" in out.stderr and "transformers chatter" in out.stderr


def test_logging_flags_are_taken_from_anywhere_on_the_line() -> None:
    assert _logging_flags(["pretrain", "--verbose", "--out", "x"]) == (["pretrain", "--out", "x"], True, None)
    assert _logging_flags(["--log-file", "a.log", "eval"]) == (["eval"], False, "a.log")
    assert _logging_flags(["eval", "--log-file=b.log"]) == (["eval"], False, "b.log")
