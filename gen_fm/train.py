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
from gen_fm.batches import IGNORE, TITLE_COLUMNS, Augment, EpochTensors, epoch_batches
from gen_fm.checkpoints import (
    BEST,
    CHECKPOINTS,
    STATE_FILE,
    TrainState,
    check_resumable,
    list_checkpoints,
    reduced_sums,
    save_best,
    save_checkpoint,
)
from gen_fm.co_engagement import co_engagement_of_split
from gen_fm.config import PretrainConfig
from gen_fm.dataset import catalog_to_sid_rows, window_source
from gen_fm.model import add_hidden_dropout, build_model, load_model, sasrec_init, save_model
from gen_fm.objectives import HiddenStates, build_objectives
from gen_fm.selection import choose
from gen_fm.titles import attach_title_embedding, bake_title_embeddings, extend_titles
from gen_fm.tokenizer import PromptEncoder
from gen_fm.validation import evaluate, validation_set
from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import PAD
from semantic_ids.trie import PrefixTrie

MODEL = "model"


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


# Fields of ``PretrainConfig.model`` that shape the weights: a run that starts from another
# model's weights (``init_from``) must agree with it on every one of them (the dropouts and the
# position headroom do not change a weight).
ARCHITECTURE_FIELDS = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "rope_theta",
    "num_user_buckets",
    "history_tokens",
)


def load_init_weights(
    model: torch.nn.Module,
    init_from: str | Path,
    layout,
    config: PretrainConfig,
    sid_tokens: np.ndarray | None = None,
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Copy an existing model folder's weights into `model` (a refresh fine-tune, not from scratch).

    The token layout must be identical: titles added to the ID map reuse the existing code tokens,
    so the code vocabulary never grows (a title-token parent gains title tokens for them, by their
    codes: `sid_tokens` are the new ID map's); a different layout means the IDs were rebuilt and
    the old embeddings would mean something else. Returns the parent's identity for the manifest
    and its own code rows for titles (``GenFM.title_code_rows``).
    """
    parent = load_model(init_from)
    own_rows = parent.title_code_rows()
    if sid_tokens is not None:  # titles added to the ID map since enter by their codes' rows
        parent.layout = extend_titles(parent.model, parent.layout, sid_tokens, own_rows)
    if parent.layout.to_json() != layout.to_json():
        raise ValueError(
            f"cannot start from {init_from}: its token layout ({parent.layout.vocab_size} "
            f"tokens, codebooks {parent.layout.codebook_sizes}) is not this run's "
            f"({layout.vocab_size} tokens, codebooks {layout.codebook_sizes}); new titles "
            f"must reuse the existing code tokens (assign them, do not rebuild the IDs)"
        )
    theirs, ours = parent.config.model, config.model
    changed = [f for f in ARCHITECTURE_FIELDS if getattr(theirs, f) != getattr(ours, f)]
    if changed:
        raise ValueError(
            f"cannot start from {init_from}: these fields differ from its config: "
            + ", ".join(f"model.{f} {getattr(theirs, f)} -> {getattr(ours, f)}" for f in changed)
        )
    model.load_state_dict(parent.model.state_dict(), strict=True)
    identity = {
        "model": str(init_from),
        "model_manifest": manifest_hash(init_from),
        "semantic_ids_map_version": parent.ids.version,
    }
    return identity, own_rows


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


def data_end_time(data) -> int | None:
    """Newest event time (unix seconds) of timestamped data; None when times are positions."""
    if not data.has_time or len(data.interactions) == 0:
        return None
    times = data.interactions.with_format("numpy", columns=["timestamp"])[:]["timestamp"]
    return int(np.max(times))


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
    source = window_source(split, sid_rows, encoder, targets=targets)
    fixed = source.rows()  # the un-augmented cut: sizes the schedule, and is every epoch's rows
    if not fixed["input_ids"]:
        raise ValueError("no training windows: every member has fewer than 2 training titles")
    mixture = None
    extra: dict[str, list] = {"input_ids": [], "labels": []}
    if config.augment.canvas_mix:
        # The canvas formats and their leakage rules belong to the canvas stage, above this one:
        # its rows come from the caller (``prompt_tuning.canvases.pretraining_mixture``).
        if extra_rows is None:
            raise ValueError(
                f"canvas_mix {list(config.augment.canvas_mix)}: pass the mixture's rows "
                f"(extra_rows=prompt_tuning.canvases.pretraining_mixture(...)); "
                f"`sidrec pretrain` builds them"
            )
        rows, mixture = extra_rows
        extra = {"input_ids": list(rows["input_ids"]), "labels": list(rows["labels"])}
    augment = Augment(config.augment.item_dropout, config.augment.window_jitter)

    def epoch_tensors(epoch: int) -> EpochTensors:
        """The epoch's rows as padded arrays (augmented with the epoch's own generator)."""
        cols = (
            source.rows(augment, np.random.default_rng([config.seed, epoch, 7])) if augment.active else fixed
        )
        if titles:  # no canvas mixture (the config refuses one)
            return EpochTensors.from_rows(cols["input_ids"], **{k: cols[k] for k in TITLE_COLUMNS})
        return EpochTensors.from_rows(
            cols["input_ids"] + extra["input_ids"], cols["labels"] + extra["labels"]
        )

    tensors = epoch_tensors(0) if not augment.active else None  # the same for every epoch
    num_rows = len(fixed["input_ids"]) + len(extra["input_ids"])
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
    model = build_model(config, encoder.layout, split.max_history)
    parent, parent_rows = (
        (None, None)
        if init_from is None
        else load_init_weights(model, init_from, encoder.layout, config, encoder.sid_tokens)
    )
    hidden = None
    if titles:  # before the dropout hooks, so the composed rows are what dropout sees
        emb = attach_title_embedding(
            model,
            encoder.layout,
            encoder.sid_tokens,
            config.titles.identity_dropout,
            own_code_rows=config.titles.title_code_rows == "own",
            input_scale=config.model.hidden_size**0.5 if config.model.init == "sasrec" else 1.0,
        )
        if parent is not None:
            emb.identity_from_rows(parent_rows)
        elif config.model.init == "sasrec":
            sasrec_init(model, (encoder.layout.offsets[0], encoder.layout.code_end))
        hidden = HiddenStates()
        hidden.attach(model)
    spared = None
    if config.model.hidden_dropout_on == "trunk":  # the code tokens: offsets[0] up to code_end
        spared = (encoder.layout.offsets[0], encoder.layout.code_end)
    add_hidden_dropout(model, config.model.hidden_dropout, spared)
    ema = None
    if opt.ema_decay:  # copied before the auxiliary heads hook into the model
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model,
            device=accelerator.device,
            use_buffers=True,
            multi_avg_fn=get_ema_multi_avg_fn(opt.ema_decay),
        )
    aux = build_objectives(config, encoder.layout, ids, data, sid_rows)
    if aux is not None:
        aux.attach(model)
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
        epoch_rows = tensors if tensors is not None else epoch_tensors(state.epoch)
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
        _end_epoch(accelerator, model, state, val, trie, config, ckpt_root, ema)
        save_checkpoint(accelerator, ckpt_root, state, meta, keep)
        saved_step = state.step
    if state.stop_reason is None and halted is None:
        state.stop_reason = f"{opt.epochs} epochs done"
    state.stop_reason = state.stop_reason or halted
    return _finish(
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


def _end_epoch(
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


def _finish(
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
