"""How a quickstart run is timed and recorded: the seconds of each stage, and one results file
(``quickstart.json``) with the command, configs, data, machine, times and figures."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.artifacts import jsonable, read_json, read_manifest
from core.data import RecData
from eval.machine import machine_info
from prompt_tuning.export import ADAPTERS_FILE

if TYPE_CHECKING:
    from sidrec.quickstart import QuickstartConfig

# What a quickstart run leaves beside its stages: how it ran and what it measured, in one file.
RECORD_FILE = "quickstart.json"


class StageClock:
    """Wall-clock seconds of each stage, for the run's closing line (where the time went)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = time.perf_counter() - start

    def summary(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name} {_duration(s)}" for name, s in self.seconds.items())
        return f"quickstart done in {_duration(total)}: {parts}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def run_record(
    config: QuickstartConfig,
    data: RecData,
    clock: StageClock,
    model_dir: Path,
    served: Path,
    test: dict[str, Any],
    command: str | None = None,
) -> dict[str, Any]:
    """The run as a results file records it: the command, the config and the config the model
    trained with, the data, the machine, the time per stage, the test report and what each canvas's
    adapter did on its held-out examples."""
    model = read_manifest(model_dir, "gen_fm")
    trained = set(read_json(served / ADAPTERS_FILE)) if (served / ADAPTERS_FILE).is_file() else set()
    return {
        "kind": "quickstart",
        "command": command,
        "dataset": config.dataset,
        "data_fingerprint": data.fingerprint,
        "config": jsonable(config),
        "trained_with": model["config"],
        "training": model.get("training"),
        "machine": machine_info(),
        "closing_line": clock.summary(),
        "seconds": round(sum(clock.seconds.values()), 1),
        "stage_seconds": {name: round(sec, 1) for name, sec in clock.seconds.items()},
        "model": str(model_dir),
        "served": str(served),
        "test": test,
        "canvas_adapters": {  # held-out examples: the frozen base and the adapter, as trained
            canvas: read_manifest(Path(config.out) / "prompts" / canvas, "prompt_adapter")["training"].get(
                "heldout"
            )
            for canvas in config.canvases
            if canvas in trained
        },
    }
