"""Pretraining of the foundation model with accelerate: next-title prediction over semantic IDs.

The same code runs on one CPU and under ``accelerate launch`` on many GPUs: batches are sharded by
process rank from one seeded, per-epoch order (so a resumed run sees exactly the batches an
uninterrupted run would), and checkpoints go through ``Accelerator.save_state`` (model, optimizer,
RNG states, the scheduler as a registered object) plus a ``trainer_state.json`` of progress
(``gen_fm.checkpoints``).

Layout of ``out_dir``: ``checkpoints/step-XXXXXXXX/`` (the last ``keep_checkpoints``),
``checkpoints/best/`` (the weights ``gen_fm.selection`` chose among the validated epochs) and
``model/``, the final model folder (those weights), written atomically at the end.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core.artifacts import jsonable, manifest_hash, read_json
from core.data import DataConfig, RecData, load_data
from core.sequences import SequenceConfig, Sequences, build_sequences, leave_one_out
from gen_fm.batches import IGNORE, EpochTensors, epoch_batches
from gen_fm.checkpoints import (
    CHECKPOINTS,
    STATE_FILE,
    TrainState,
    check_resumable,
    list_checkpoints,
    save_checkpoint,
)
from gen_fm.config import PretrainConfig
from gen_fm.dataset import catalog_to_sid_rows, training_rows
from gen_fm.epochs import end_epoch, finish_run
from gen_fm.network import build_network
from gen_fm.objectives import HiddenStates
from gen_fm.tokenizer import PromptEncoder
from gen_fm.validation import validation_set
from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import PAD
from semantic_ids.trie import PrefixTrie


def make_optimizer(modules: list[torch.nn.Module], config: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW over the modules' parameters, with weight decay on matrices only (not on norm gains)."""
    params = {id(p): (n, p) for m in modules for n, p in m.named_parameters() if p.requires_grad}.values()
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.optim.lr,
        betas=config.optim.betas,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, config: PretrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
    return get_scheduler(
        name[config.optim.schedule],
        optimizer,
        num_warmup_steps=int(config.optim.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


# --------------------------------------------------------------------------- training


def _title_losses(
    accelerator, model, b: dict, hidden: HiddenStates, config: PretrainConfig, code_end: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed code-token loss (softmax over specials and codes: title rows are never a target)
    and, with ``title_loss_weight``, the summed full-softmax loss over titles at trunk positions."""
    net = accelerator.unwrap_model(model)
    # the forward keeps one position's full-vocabulary logits: the (B, T, V) tensor over every
    # title row is never built; the code logits come from the caught hidden states
    model(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        position_ids=b["position_ids"],
        logits_to_keep=1,
    )
    h = hidden.take()  # (B, T, H)
    sel = b["targets"] != IGNORE  # (B, T)
    weight = net.get_output_embeddings().weight  # (V, H), tied to the input embedding
    logits = F.linear(h[sel], weight[:code_end])  # (n, code_end)
    loss = F.cross_entropy(
        logits.float(), b["targets"][sel], reduction="sum", label_smoothing=config.augment.label_smoothing
    )
    if not config.titles.title_loss_weight:
        return loss, None
    tsel = b["title_targets"] != IGNORE  # (B, T) trunk positions
    titles = net.get_input_embeddings().title_matrix()  # (N, H)
    tl = F.linear(h[tsel], titles)  # (m, N)
    return loss, F.cross_entropy(tl.float(), b["title_targets"][tsel], reduction="sum")


def _train_step(
    accelerator,
    model,
    optimizer,
    scheduler,
    tensors: EpochTensors,
    group,
    config,
    state: TrainState,
    aux=None,
    hidden: HiddenStates | None = None,
    code_end: int = 0,
) -> None:
    """One optimizer step over `group` micro-batches; each loss normalised by the group's targets
    (the next-token loss by its target tokens, an auxiliary one by its own targets)."""
    t0 = time.perf_counter()
    batches = [tensors.batch(idx) for idx in group]
    state.host_seconds += time.perf_counter() - t0
    n_targets = sum(int((b["targets"] != IGNORE).sum()) for b in batches)
    n_aux: dict[str, int] = {}
    if hidden is not None and config.titles.title_loss_weight:
        n_aux["title"] = sum(int((b["title_targets"] != IGNORE).sum()) for b in batches)
    if aux is not None:
        heads = accelerator.unwrap_model(aux)
        for b in batches:
            for n, c in heads.counts(b["labels"].to(accelerator.device)).items():
                n_aux[n] = n_aux.get(n, 0) + c
        embeddings = accelerator.unwrap_model(model).get_output_embeddings().weight
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        b = {k: v.to(accelerator.device, non_blocking=True) for k, v in b.items()}
        state.host_seconds += time.perf_counter() - t0
        sync = i == len(batches) - 1
        with nullcontext() if sync else accelerator.no_sync(model):
            aux_sums: dict[str, torch.Tensor] = {}
            if hidden is not None:
                loss_sum, title_sum = _title_losses(accelerator, model, b, hidden, config, code_end)
                loss = config.titles.code_loss_weight * loss_sum / max(n_targets, 1)
                if title_sum is not None:
                    aux_sums["title"] = title_sum
                    loss = loss + config.titles.title_loss_weight * title_sum / max(n_aux["title"], 1)
            else:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                loss_sum = F.cross_entropy(
                    logits.flatten(0, 1).float(),
                    b["targets"].flatten(),
                    ignore_index=IGNORE,
                    reduction="sum",
                    label_smoothing=config.augment.label_smoothing,
                )
                loss = loss_sum / max(n_targets, 1)
                aux_sums = aux(b["labels"], embeddings) if aux is not None else {}
                for n, v in aux_sums.items():
                    loss = loss + heads.weights[n] * v / max(n_aux[n], 1)
            accelerator.backward(loss)
        state.loss_sum += float(loss_sum.detach())
        state.tokens += int((b["input_ids"] != PAD).sum())  # real tokens, padding left out
        for n, v in aux_sums.items():
            state.aux[n][0] += float(v.detach())
    for n, c in n_aux.items():
        state.aux[n][1] += c
    state.loss_tokens += n_targets
    if config.optim.max_grad_norm > 0:  # over the saved model's weights (training-only heads: unclipped)
        accelerator.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.epoch_step += 1


def config_for_run(config: PretrainConfig, sequences: Sequences) -> PretrainConfig:
    """The config a run on these members, on this machine, trains with, as the model folder records
    it: the settings left to the data set from them (``PretrainConfig.for_data``) and those left to
    the machine from it (``PretrainConfig.for_machine``)."""
    return config.for_data(float(np.median(sequences.lengths))).for_machine(bf16_native())


def bf16_native() -> bool:
    """Whether the device training runs on (a GPU when there is one, as accelerate picks) multiplies
    bf16 natively; elsewhere bf16 autocast is emulated and slower than float32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pretrain(
    data_config: DataConfig | RecData,
    seq_config: SequenceConfig,
    ids_dir: str | Path,
    out_dir: str | Path,
    config: PretrainConfig,
    resume: bool = False,
    init_from: str | Path | None = None,
    targets_since: int | None = None,
    replay: float = 0.0,
    extra_rows: tuple[Any, dict] | None = None,
) -> Path:
    """Train the foundation model; returns the final model folder (``out_dir/model``).

    `data_config` may be an already loaded ``RecData`` (e.g. a derived view such as the refresh
    simulation's old world; its fingerprint is what the model records). `init_from` names a model
    folder whose weights the run starts from instead of a fresh initialisation (same architecture
    and token layout required); the new model's manifest names it as a parent. `targets_since`
    (a time, as in the data) puts the loss on training events from then on only (the fresh
    interactions of a refresh), earlier events being context, except a `replay` share of them
    (drawn with the seed) that stays a target so that what the model knew is rehearsed.
    `extra_rows` = (rows with input_ids and labels columns, what they are) are trained on beside the
    windows every epoch: the canvas mixture that ``config.augment.canvas_mix`` names.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out_dir, ids_dir = Path(out_dir), Path(ids_dir)
    ckpt_root = out_dir / CHECKPOINTS
    checkpoints = list_checkpoints(ckpt_root) if ckpt_root.is_dir() else []
    if checkpoints and not resume:
        raise FileExistsError(
            f"{ckpt_root} holds checkpoints of an earlier run: resume it "
            f"(resume=True / --resume) or choose another output folder"
        )
    data = data_config if isinstance(data_config, RecData) else load_data(data_config)
    split = leave_one_out(build_sequences(data, seq_config), seq_config)
    config = config_for_run(config, split.sequences)  # the folder records what it trained with
    opt = config.optim  # the optimisation settings, read all through the loop
    keep, every_steps = config.checkpoints.keep_checkpoints, config.checkpoints.checkpoint_every_steps
    accelerator = Accelerator(mixed_precision=opt.mixed_precision)
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    ids = SemanticIDs.load(ids_dir)
    titles = config.model.history_tokens == "titles"
    encoder = PromptEncoder.from_ids(ids, config.model.num_user_buckets, title_tokens=titles)
    sid_rows = catalog_to_sid_rows(data, ids)
    targets = None
    if targets_since is not None:
        if not 0.0 <= replay <= 1.0:
            raise ValueError(f"replay must be in [0, 1], got {replay}")
        rehearse = np.random.default_rng([config.seed, 1]).random(len(split.sequences.first_time))
        targets = (split.sequences.first_time >= targets_since) | (rehearse < replay)  # (E,)
    rows = training_rows(split, sid_rows, encoder, config, targets, extra_rows)
    num_rows, mixture = rows.num_rows, rows.mixture
    val = validation_set(split, sid_rows, encoder, config) if config.validation.eval_every else None
    trie = None
    if val is not None:
        trie = PrefixTrie(ids.codes, encoder.layout)

    meta = {
        "config": jsonable(config),
        "semantic_ids": manifest_hash(ids_dir),
        "data_fingerprint": data.fingerprint,
        "sequence_config": jsonable(seq_config),
        "world_size": world,
    }
    if init_from is not None:
        meta["init_from"] = manifest_hash(init_from)
    if targets_since is not None:
        meta["targets_since"], meta["replay"] = int(targets_since), float(replay)

    set_seed(config.seed)
    net = build_network(
        config,
        encoder,
        split.max_history,
        init_from,
        accelerator.device,
        ids=ids,
        data=data,
        sid_rows=sid_rows,
    )
    model, parent, hidden, ema, aux = net.model, net.parent, net.hidden, net.ema, net.aux
    optimizer = make_optimizer([model] + ([aux] if aux is not None else []), config)
    # Every epoch takes as many steps as the un-augmented cut (augmented epochs differ by a few
    # windows: their batch list is wrapped or cut to that length), so the schedule is exact.
    batches_per_epoch = math.ceil(num_rows / (opt.batch_size * world))
    steps_per_epoch = math.ceil(batches_per_epoch / opt.grad_accum)
    total_steps = steps_per_epoch * opt.epochs
    scheduler = make_scheduler(optimizer, config, total_steps)
    if aux is not None:
        model, aux, optimizer = accelerator.prepare(model, aux, optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    aux_names = accelerator.unwrap_model(aux).names if aux is not None else []
    state = TrainState(
        aux={n: [0.0, 0] for n in aux_names + (["title"] if config.titles.title_loss_weight else [])}
    )
    if resume and checkpoints:
        saved = read_json(checkpoints[-1] / STATE_FILE)
        check_resumable(saved, meta)
        accelerator.load_state(str(checkpoints[-1]))
        state = TrainState(**saved["state"])
        if rank:  # epoch sums were saved reduced over processes: rank 0 carries them
            state.reset_sums()
        accelerator.print(f"resumed from {checkpoints[-1].name} (epoch {state.epoch + 1}, step {state.step})")
    elif resume:
        accelerator.print(f"nothing to resume in {ckpt_root}: starting from scratch")
    if mixture:
        accelerator.print(
            "canvas mixture: " + ", ".join(f"{c} {m['examples']:,}" for c, m in mixture.items())
        )
    accelerator.print(
        f"{num_rows:,} windows from {len(split.sequences):,} members; "
        f"{steps_per_epoch} steps/epoch; "
        f"{sum(p.numel() for p in set(model.parameters())):,} parameters"
    )

    model.train()
    halted = None  # max_steps is a halt, not an end: it is not saved, so a resumed run goes on
    saved_step = state.step if resume and checkpoints else -1  # step of the newest checkpoint
    while halted is None and state.stop_reason is None and state.epoch < opt.epochs:
        t0 = time.perf_counter()
        epoch_rows = rows.epoch(state.epoch)
        state.host_seconds += time.perf_counter() - t0  # augmented epochs: the re-cut, once
        batches = epoch_batches(epoch_rows.lengths, opt.batch_size, state.epoch, config.seed, rank, world)
        batches = [batches[i % len(batches)] for i in range(batches_per_epoch)]
        groups = [batches[i : i + opt.grad_accum] for i in range(0, len(batches), opt.grad_accum)]
        bar = tqdm(
            total=len(groups),
            initial=state.epoch_step,
            disable=not main,
            leave=False,
            desc=f"epoch {state.epoch + 1}/{opt.epochs}",
        )
        for group in groups[state.epoch_step :]:
            if opt.max_steps is not None and state.step >= opt.max_steps:
                halted = f"max_steps {opt.max_steps} reached"
                break
            t0 = time.perf_counter()
            _train_step(
                accelerator,
                model,
                optimizer,
                scheduler,
                epoch_rows,
                group,
                config,
                state,
                aux,
                hidden,
                encoder.layout.code_end,
            )
            if ema is not None:
                ema.update_parameters(accelerator.unwrap_model(model))
            state.train_seconds += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{state.loss_sum / max(state.loss_tokens, 1):.4f}")
            if every_steps and state.step % every_steps == 0 and state.epoch_step < len(groups):
                save_checkpoint(accelerator, ckpt_root, state, meta, keep)
                saved_step = state.step
        bar.close()
        if halted is not None:
            if saved_step != state.step:
                save_checkpoint(accelerator, ckpt_root, state, meta, keep)
            break
        end_epoch(accelerator, model, state, val, trie, config, ckpt_root, ema)
        save_checkpoint(accelerator, ckpt_root, state, meta, keep)
        saved_step = state.step
    if state.stop_reason is None and halted is None:
        state.stop_reason = f"{opt.epochs} epochs done"
    state.stop_reason = state.stop_reason or halted
    return finish_run(
        accelerator,
        model if ema is None else ema.module,
        state,
        out_dir,
        ckpt_root,
        encoder,
        ids,
        config,
        seq_config,
        data,
        num_rows,
        split,
        val,
        steps_per_epoch,
        parent,
        None if targets is None else {"since": int(targets_since), "replay": replay},
        mixture,
    )
