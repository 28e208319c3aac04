"""What ends an epoch and a pretraining run: the epoch's figures, validation, the choice of weights
and early stopping; then the model folder written with the chosen weights."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gen_fm.checkpoints import BEST, TrainState, reduced_sums, save_best
from gen_fm.co_engagement import co_engagement_of_split
from gen_fm.config import PretrainConfig
from gen_fm.dataset import catalog_to_sid_rows
from gen_fm.model import save_model
from gen_fm.selection import choose
from gen_fm.titles import bake_title_embeddings
from gen_fm.validation import evaluate

MODEL = "model"


def data_end_time(data) -> int | None:
    """Newest event time (unix seconds) of timestamped data; None when times are positions."""
    if not data.has_time or len(data.interactions) == 0:
        return None
    times = data.interactions.with_format("numpy", columns=["timestamp"])[:]["timestamp"]
    return int(np.max(times))


def end_epoch(
    accelerator, model, state: TrainState, val, trie, config: PretrainConfig, ckpt_root: Path, ema=None
) -> None:
    """Reduce the epoch's figures, validate, track the best weights, decide on early stopping.

    With weight averaging (`ema`) the averaged weights are the ones judged and kept; the raw
    weights are validated beside them so that the history shows what averaging changed."""
    v, k = config.validation, config.validation.judge.k
    figs, aux = reduced_sums(accelerator, state)
    row: dict[str, Any] = {
        "epoch": state.epoch + 1,
        "step": state.step,
        "train_loss": float(figs[0] / max(float(figs[1]), 1.0)),
        "train_seconds": round(state.train_seconds, 3),
        "tokens_per_second": round(float(figs[2]) / max(state.train_seconds, 1e-9), 1),
    }
    row.update({f"{n}_loss": s / max(c, 1.0) for n, (s, c) in aux.items()})
    line = f"epoch {state.epoch + 1:3d}  loss {row['train_loss']:.4f}" + "".join(
        f"  {n} {s / max(c, 1.0):.4f}" for n, (s, c) in aux.items()
    )
    if val is not None and config.validates(state.epoch + 1):
        t0 = time.perf_counter()
        judged = model if ema is None else ema.module
        metrics = evaluate(accelerator, judged, val, trie, config)
        if ema is not None:
            raw = evaluate(accelerator, model, val, trie, config)
            metrics.update({f"raw_{name}": value for name, value in raw.items()})
        row.update(metrics, eval_seconds=round(time.perf_counter() - t0, 3))
        recall, ndcg = metrics[f"recall@{k}"], metrics[f"ndcg@{k}"]
        if (recall, ndcg) > (state.best_metric, state.best_ndcg):
            state.best_metric, state.best_ndcg = recall, ndcg
            state.best_epoch, state.best_step = state.epoch + 1, state.step
            state.bad_evals = 0
        else:
            state.bad_evals += 1
        validated = [h for h in state.history if f"recall@{k}" in h] + [row]
        choice = choose(
            [h[f"recall@{k}"] for h in validated],
            [h[f"ndcg@{k}"] for h in validated],
            len(val.prompts),
            v.selection,
        )
        chosen = validated[choice.index]["epoch"]
        if chosen == state.epoch + 1:
            state.chosen_epoch, state.chosen_step = chosen, state.step
            state.chosen_metric, state.chosen_reason = recall, choice.reason
            save_best(accelerator, judged, ckpt_root, state)
        elif chosen != state.chosen_epoch:  # the choice only ever stays or moves to this epoch
            raise AssertionError(f"selection moved back to epoch {chosen}")
        line += f"  val R@{k} {recall:.4f}  N@{k} {ndcg:.4f}"
        if "title_weight" in metrics:
            line += (
                f" (title weight {metrics['title_weight']:g}; beam R@{k} {metrics[f'beam_recall@{k}']:.4f})"
            )
        if ema is not None:
            line += f" (raw weights: R@{k} {metrics[f'raw_recall@{k}']:.4f})"
        if v.patience and state.bad_evals >= v.patience:
            state.stop_reason = f"early stop: no better R@{k} in {v.patience} validations"
    row["host_seconds"] = round(state.host_seconds, 3)
    line += (
        f"  {row['train_seconds'] + row.get('eval_seconds', 0.0):.1f}s  {row['tokens_per_second']:,.0f} tok/s"
    )
    accelerator.print(line)
    state.history.append(row)
    state.epoch += 1
    state.epoch_step = 0
    state.reset_sums()
    state.train_seconds = state.host_seconds = 0.0


def finish_run(
    accelerator,
    model,
    state: TrainState,
    out_dir: Path,
    ckpt_root: Path,
    encoder,
    ids,
    config,
    seq_config,
    data,
    num_rows: int,
    split,
    val,
    steps_per_epoch,
    parent: dict[str, Any] | None = None,
    targets: dict | None = None,
    mixture: dict | None = None,
) -> Path:
    """Write the model folder with the best weights (the last ones when nothing was validated)."""
    from safetensors.torch import load_model as load_weights

    k = config.validation.judge.k
    partial = None
    if state.epoch_step:  # halted inside an epoch: its figures so far (throughput of short runs)
        figs, _ = reduced_sums(accelerator, state)
        partial = {
            "epoch": state.epoch + 1,
            "steps": state.epoch_step,
            "train_loss": float(figs[0] / max(float(figs[1]), 1.0)),
            "train_seconds": round(state.train_seconds, 3),
            "tokens_per_second": round(float(figs[2]) / max(state.train_seconds, 1e-9), 1),
        }
    accelerator.wait_for_everyone()
    target = out_dir / MODEL
    if accelerator.is_main_process:
        net = accelerator.unwrap_model(model)
        best = ckpt_root / BEST / "model.safetensors"
        used = "last"
        if state.chosen_epoch > 0 and best.is_file():
            load_weights(net, str(best), device=str(next(net.parameters()).device))
            used = "selected"
        summary = {
            "weights": used,
            "stop_reason": state.stop_reason,
            "steps": state.step,
            "steps_per_epoch": steps_per_epoch,
            "epochs_done": len(state.history),
            "best_epoch": state.best_epoch,
            "best_step": state.best_step,
            "selection": config.validation.selection,
            "chosen_epoch": state.chosen_epoch,
            "chosen_step": state.chosen_step,
            "chosen_reason": state.chosen_reason,
            f"best_val_recall@{k}": state.best_metric if state.best_epoch > 0 else None,
            "val_members": len(val.prompts) if val is not None else 0,
            "train_windows": num_rows,
            "train_members": len(split.sequences),
            "world_size": accelerator.num_processes,
            "history": state.history,
            "partial_epoch": partial,
            "init_from": parent,
            "targets": targets,
            "canvas_mix": mixture,
        }
        own_rows = bake_title_embeddings(net)  # a title-token model's rows become plain embedding rows
        save_model(
            target,
            net.to(torch.float32),
            encoder.layout,
            ids,
            config,
            seq_config,
            data_fingerprint=data.fingerprint,
            dataset=data.name,
            training=summary,
            parents={"init_from": parent["model_manifest"]} if parent else None,
            data_end=data_end_time(data),
            co_engagement=co_engagement_of_split(split, catalog_to_sid_rows(data, ids), ids.num_items),
            title_tags=data.title_tags(),
            title_code_rows=own_rows,
        )
        why = f": epoch {state.chosen_epoch}, {state.chosen_reason}" if used == "selected" else ""
        accelerator.print(f"model written to {target} ({used} weights{why}; {state.stop_reason})")
    accelerator.wait_for_everyone()
    return target
