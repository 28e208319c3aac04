"""Library chatter goes to a log file; the screen keeps sidrec's stages, progress bars and results.

What this moves off the screen (a quickstart printed pages of it): transformers/accelerate/datasets/
PEFT/sentence-transformers log records ("Removed shared tensor {'lm_head.weight'} while saving" at
every checkpoint), vLLM's INFO lines (its own processes too: they
log to the same file through ``VLLM_LOGGING_CONFIG_PATH``), Python warnings
(FutureWarning, deprecation notices; ignored in child processes), torch's C++ warnings, and the weight loading/saving progress bars of transformers
and the Hugging Face hub. sidrec's own progress bars (epochs, decoding) and tables stay.

``--verbose`` (or ``SIDREC_VERBOSE=1``) leaves everything on the screen as the libraries print it.
The log file is ``--log-file``, else ``$SIDREC_LOG_FILE``, else ``sidrec.log`` in the cache folder
(``$SIDREC_CACHE_DIR``, default ``~/.cache/sidrec``); it is appended to, one header per command.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from core.data import CACHE_DIR_ENV

LOG_FILE_ENV = "SIDREC_LOG_FILE"
VERBOSE_ENV = "SIDREC_VERBOSE"
# Loggers whose records go to the file only (their own handlers, if any, are replaced).
# ("torch" stays: it logs from atexit hooks, after logging has closed the file.)
LIBRARIES = (
    "transformers",
    "accelerate",
    "datasets",
    "peft",
    "sentence_transformers",
    "vllm",
    "huggingface_hub",
    "urllib3",
    "httpx",
    "filelock",
    "py.warnings",
)
_routed: dict[str, logging.Handler] = {}  # path -> its handler (a second call reuses it)


def split_logging_flags(argv: list[str]) -> tuple[list[str], bool, str | None]:
    """``--verbose`` and ``--log-file PATH`` anywhere on the line (they apply to every command)."""
    rest, verbose, log_file = [], False, None
    it = iter(argv)
    for a in it:
        if a == "--verbose":
            verbose = True
        elif a == "--log-file":
            log_file = next(it, None)
            if log_file is None:
                raise SystemExit("sidrec: --log-file needs a path")
        elif a.startswith("--log-file="):
            log_file = a.split("=", 1)[1]
        else:
            rest.append(a)
    return rest, verbose, log_file


def default_log_file() -> Path:
    cache = os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "sidrec")
    return Path(cache) / "sidrec.log"


def route_library_logs(log_file: str | Path | None = None, verbose: bool = False) -> Path | None:
    """Send library logs and warnings to ``log_file`` (see the module doc); returns its path, or
    None when ``verbose`` leaves them on the screen. Call once, before the libraries are imported."""
    if verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return None
    path = Path(log_file or os.environ.get(LOG_FILE_ENV) or default_log_file())
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(path) in _routed:
        return path
    for old in _routed.values():
        old.close()
    _routed.clear()
    handler = logging.FileHandler(path, encoding="utf-8")
    _routed[str(path)] = handler
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.stream.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} sidrec {' '.join(sys.argv[1:])}\n")
    for name in LIBRARIES:
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.propagate = False
        lg.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the file
    # child processes (vLLM's engine core, dataloader workers) inherit these: vLLM's loggers write
    # to the same file through its own logging config, C++ and Python warnings stay quiet there
    vllm_config = path.with_name(path.name + ".vllm-logging.json")
    vllm_config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "filename": str(path),
                        "formatter": "plain",
                        "encoding": "utf-8",
                    }
                },
                "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}},
            }
        )
    )
    os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", str(vllm_config))
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # datasets draws a bar for every map and filter; read at its import, so set before it
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:  # transformers keeps its own stderr handler: drop it, and its weight-loading bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_warning()
        logging.getLogger("transformers").handlers = [handler]
    except ImportError:
        pass
    return path


__all__ = ["LOG_FILE_ENV", "VERBOSE_ENV", "default_log_file", "route_library_logs", "split_logging_flags"]
