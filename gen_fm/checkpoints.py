"""Training checkpoints of the foundation model: progress state, atomic step checkpoints, best weights.

A checkpoint is ``Accelerator.save_state`` output (model, optimizer, RNG states, the scheduler as a
registered object) plus ``trainer_state.json`` (``TrainState`` and the run's config and inputs),
staged in a hidden folder and renamed in only when complete. ``check_resumable`` refuses to resume
a run whose config or inputs changed since the checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gen_fm.config import RESUMABLE_CHANGES, PretrainConfig
from core.artifacts import atomic_dir, write_json

CHECKPOINTS = "checkpoints"
BEST = "best"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Progress saved with every checkpoint; what a resumed run needs besides accelerate's state."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    epoch_step: int = 0  # optimizer steps done in the current epoch
    loss_sum: float = 0.0  # summed token loss of the current epoch (this process)
    loss_tokens: int = 0  # target tokens of the current epoch (this process)
    tokens: int = 0  # non-pad tokens of the current epoch (this process)
    train_seconds: float = 0.0  # training time of the current epoch
    best_metric: float = -1.0  # best validation Recall@K so far
    best_ndcg: float = -1.0  # its NDCG@K (breaks ties in Recall@K, common on small samples)
    best_epoch: int = -1
    best_step: int = -1
    bad_evals: int = 0  # validations since the last improvement
    chosen_epoch: int = -1  # the epoch whose weights are kept (``gen_fm.selection``)
    chosen_step: int = -1
    chosen_metric: float = -1.0
    chosen_reason: str = ""
    host_seconds: float = 0.0  # time of the current epoch spent building and moving batches
    stop_reason: str | None = None
    history: list[dict] = field(default_factory=list)  # one summary per finished epoch
    # auxiliary objective -> [summed loss, targets] of the current epoch (this process)
    aux: dict[str, list[float]] = field(default_factory=dict)

    def reset_sums(self) -> None:
        """Zero the epoch sums (a new epoch; or a resumed rank > 0, rank 0 carrying them)."""
        self.loss_sum, self.loss_tokens, self.tokens = 0.0, 0, 0
        self.aux = {name: [0.0, 0] for name in self.aux}


def reduced_sums(accelerator, state: TrainState) -> tuple[list[float], dict[str, list[float]]]:
    """The epoch sums added over processes: [loss, target tokens, tokens] and the auxiliary ones."""
    names = sorted(state.aux)
    values = [state.loss_sum, state.loss_tokens, state.tokens] + [
        float(x) for name in names for x in state.aux[name]
    ]
    total = (
        accelerator.reduce(
            torch.tensor(values, dtype=torch.float64, device=accelerator.device), reduction="sum"
        )
        .cpu()
        .tolist()
    )
    return total[:3], {name: total[3 + 2 * i : 5 + 2 * i] for i, name in enumerate(names)}


def list_checkpoints(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())


def save_checkpoint(accelerator, root: Path, state: TrainState, meta: dict, keep: int) -> Path:
    """accelerate state + trainer_state.json into step-N/, renamed in only when complete."""
    name = f"step-{state.step:08d}"
    tmp, final = root / f".{name}.tmp", root / name
    figs, aux = reduced_sums(accelerator, state)
    # saved as global sums; on resume rank 0 carries them and the other ranks start from zero
    saved = dataclasses.replace(
        state, loss_sum=figs[0], loss_tokens=int(figs[1]), tokens=int(figs[2]), aux=aux
    )
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, {"state": dataclasses.asdict(saved), **meta})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_best(accelerator, model, root: Path, state: TrainState) -> None:
    from safetensors.torch import save_model as save_weights

    if accelerator.is_main_process:
        with atomic_dir(root / BEST) as stage:
            save_weights(accelerator.unwrap_model(model), str(stage / "model.safetensors"))
            write_json(
                stage / "best.json",
                {
                    "step": state.step,
                    "epoch": state.chosen_epoch,
                    "metric": state.chosen_metric,
                    "reason": state.chosen_reason,
                },
            )
    accelerator.wait_for_everyone()


def check_resumable(saved: dict, meta: dict) -> None:
    # Both configs are read the way a manifest's is: a checkpoint written before the config was
    # grouped by concern holds it flat, and a field added since it was written counts as its default.
    old = PretrainConfig.from_manifest(saved["config"]).by_path()
    new = PretrainConfig.from_manifest(meta["config"]).by_path()
    changed = sorted(k for k in old if old[k] != new[k] and k not in RESUMABLE_CHANGES)
    if changed:
        raise ValueError(f"cannot resume: config fields changed since the checkpoint: {changed}")
    for key in (
        "semantic_ids",
        "data_fingerprint",
        "sequence_config",
        "world_size",
        "init_from",
        "targets_since",
        "replay",
    ):
        if saved.get(key) != meta.get(key):
            raise ValueError(f"cannot resume: {key} differs from the checkpoint's")
