"""SASRec (Kang & McAuley, ICDM 2018), the ID-based baseline generative retrieval must beat.

Faithful to the authors' code in the parts that matter for its numbers: item embeddings scaled by
sqrt(hidden) plus learned absolute positional embeddings over a left-padded window (the most recent
event always at the last position); pre-LayerNorm blocks wired as in the reference implementation
(q = LN(x); x = q + MHA(q, x, x); x = LN(x); x = x + FFN(x)), causal attention, padded positions zeroed
after every block, final LayerNorm; the input item embedding as the output layer (dot products); loss
"bce": binary cross-entropy on the next title against ONE uniformly sampled negative per position (a
title outside the member's training set); Adam(lr 1e-3, betas 0.9/0.98); xavier-normal initialisation.
Loss "ce" replaces the sampled BCE by a softmax over the whole catalog, the variant that later work
found much stronger (Klenitskiy & Vasilev, RecSys 2023).
Departures, all for this project's protocol: hidden 64 (paper: 50), window 20 = the benchmark's
history cap (paper: 50 for Beauty, 200 for MovieLens); with ``train_windows="all"`` a training prefix
longer than the window is cut, from its end, into consecutive windows so that every transition is a
training target once (the paper keeps the most recent window, ``"last"``). Network: ``sasrec_net``."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core.checks import at_least, in_unit_interval, one_of
from core.metrics import topk_rows
from core.sequences import Split
from eval.baselines.sasrec_net import BLOCKS, INITS, ITEMS, SASRec

LOSSES = ("bce", "ce")
WINDOWS = ("all", "last")


# The fields of ``SASRecConfig`` that are the network's constructor arguments.
SHAPE_FIELDS = ("hidden", "num_blocks", "num_heads", "dropout", "max_len", "items", "block", "init")


@dataclass(frozen=True)
class SASRecConfig:
    # "bce": the paper's loss, one sampled negative per position; "ce": full-catalog softmax.
    loss: str = "bce"
    hidden: int = 64  # embedding and model width
    num_blocks: int = 2  # self-attention blocks
    num_heads: int = 1
    dropout: float = 0.5  # paper: 0.5 on the sparse Amazon sets, 0.2 on MovieLens
    # Positions in a window; longer histories keep their most recent `max_len` events.
    max_len: int = 20
    # "all": cut long training prefixes into consecutive windows; "last": the most recent only.
    train_windows: str = "all"
    # Title representation, shared by input and output: "id", "codes" or "both" (needs an ID map).
    items: str = "id"
    # Self-attention block: "sasrec" (the paper's) or "llama" (the foundation model's).
    block: str = "sasrec"
    init: str = "sasrec"  # "sasrec" (the authors') or "llama" (the foundation model's)
    batch_size: int = 128  # windows per step
    lr: float = 1e-3
    weight_decay: float = 0.0  # the paper's l2_emb is 0
    max_epochs: int = 200  # hard cap; a run that hits it has not converged
    # Stop after this many validation checks without a better validation Recall@max(ks).
    patience: int = 10
    eval_every: int = 1  # epochs between validation checks
    seed: int = 0

    def __post_init__(self) -> None:
        one_of(LOSSES, loss=self.loss)
        one_of(ITEMS, items=self.items)
        one_of(BLOCKS, block=self.block)
        one_of(INITS, init=self.init)
        one_of(WINDOWS, train_windows=self.train_windows)
        at_least(  # the network
            1, hidden=self.hidden, num_blocks=self.num_blocks, num_heads=self.num_heads, max_len=self.max_len
        )
        at_least(  # the training run
            1,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            patience=self.patience,
            eval_every=self.eval_every,
        )
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by num_heads ({self.num_heads})")
        in_unit_interval(dropout=self.dropout)
        at_least(0, weight_decay=self.weight_decay, seed=self.seed)
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class TrainWindows:
    """Training windows, left-padded: inputs[w, t] predicts targets[w, t]; 0 = padding."""

    inputs: np.ndarray  # (W, T) int64, item index = catalog row + 1
    targets: np.ndarray  # (W, T) int64
    owner: np.ndarray  # (W,) member row, for negative sampling


def make_windows(split: Split, max_len: int, mode: str = "all") -> TrainWindows:
    """Next-title windows from every member's training prefix."""
    inputs, targets, owner = [], [], []
    for u in range(len(split.sequences)):
        s = split.train_items(u).astype(np.int64) + 1
        if mode == "all":
            ends = list(range(len(s), 1, -max_len))  # e.g. 45 titles, window 20: ends 45, 25, 5
        else:
            ends = [len(s)] if len(s) > 1 else []
        for end in ends:
            w = s[max(0, end - max_len - 1) : end]  # up to max_len + 1 titles
            row_in = np.zeros(max_len, dtype=np.int64)
            row_tg = np.zeros(max_len, dtype=np.int64)
            row_in[max_len - len(w) + 1 :] = w[:-1]
            row_tg[max_len - len(w) + 1 :] = w[1:]
            inputs.append(row_in)
            targets.append(row_tg)
            owner.append(u)
    if not inputs:
        raise ValueError("no member has two training events: nothing to train SASRec on")
    return TrainWindows(np.stack(inputs), np.stack(targets), np.asarray(owner, dtype=np.int64))


def _sample_negatives(
    rng: np.random.Generator, owner: np.ndarray, shape: tuple[int, int], num_items: int, seen: np.ndarray
) -> np.ndarray:
    """Uniform titles (index 1..N) outside the owner's training set, as in the paper's sampler.

    `seen` holds sorted keys member * (N + 1) + item of every training event.
    """

    def collides(neg: np.ndarray) -> np.ndarray:
        keys = owner[:, None] * (num_items + 1) + neg  # (B, T)
        at = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
        return seen[at] == keys

    neg = rng.integers(1, num_items + 1, size=shape)  # (B, T)
    bad = collides(neg)
    while bad.any():
        neg[bad] = rng.integers(1, num_items + 1, size=int(bad.sum()))
        bad = collides(neg)
    return neg


def _batch_loss(
    model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None
) -> torch.Tensor:
    states = model(inputs)  # (B, T, d)
    real = targets != 0  # (B, T)
    h = states[real]  # (P, d) one row per real position
    if negatives is None:  # full softmax over the catalog
        return F.cross_entropy(model.all_item_scores(h), targets[real] - 1)  # logits (P, N)
    items = model.item_matrix()  # (N + 1, d)
    pos = (h * items[targets[real]]).sum(-1)  # (P,)
    neg = (h * items[negatives[real]]).sum(-1)  # (P,)
    return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + F.binary_cross_entropy_with_logits(
        neg, torch.zeros_like(neg)
    )


@torch.no_grad()
def rank_histories(
    model: SASRec, histories: list[np.ndarray], k: int, batch_size: int = 256, exclude_history: bool = False
) -> np.ndarray:
    """Top-k catalog rows after each history (oldest first), over the full catalog (without the
    history's own titles, the whole history and not only its capped tail, with
    `exclude_history`). (U, k) int64."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(histories), batch_size):
        chunk = [
            np.asarray(h, dtype=np.int64)[-model.max_len :] + 1 for h in histories[start : start + batch_size]
        ]
        t = max(1, max(len(h) for h in chunk))
        seq = np.zeros((len(chunk), t), dtype=np.int64)  # (b, T) left-padded
        for i, h in enumerate(chunk):
            if len(h):
                seq[i, t - len(h) :] = h
        states = model(torch.from_numpy(seq).to(device))[:, -1]  # (b, d) last position
        scores = model.all_item_scores(states).float().cpu()  # (b, N)
        if exclude_history:
            for i, h in enumerate(histories[start : start + batch_size]):
                scores[i, torch.as_tensor(np.asarray(h, dtype=np.int64))] = float("-inf")
        out.append(topk_rows(scores, k, batch_size=batch_size))
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


@dataclass
class SASRecResult:
    model: SASRec  # weights of the best validation check
    best_epoch: int
    epochs_run: int
    converged: bool  # stopped by patience, not by max_epochs
    train_seconds: float  # wall time of training, validation checks included
    history: list[dict] = field(default_factory=list)  # per epoch: loss, seconds, valid metric


def train_sasrec(
    split: Split,
    num_items: int,
    config: SASRecConfig,
    validate: Callable[[SASRec], float],
    device: str = "cpu",
    codes: np.ndarray | None = None,
) -> SASRecResult:
    """Train with early stopping on `validate(model)` (higher is better); keep the best weights.
    `codes`: each catalog row's semantic-ID codes (see ``SASRec``), for ``items`` other than "id"."""
    det_before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(split, num_items, config, validate, device, codes)
    finally:
        torch.use_deterministic_algorithms(det_before)


def _train(
    split: Split,
    num_items: int,
    config: SASRecConfig,
    validate: Callable[[SASRec], float],
    device: str,
    codes: np.ndarray | None,
) -> SASRecResult:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    windows = make_windows(split, config.max_len, config.train_windows)
    shape = {name: getattr(config, name) for name in SHAPE_FIELDS}
    model = SASRec(num_items=num_items, codes=codes, **shape).to(device)
    opt = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )
    seen = None
    if config.loss == "bce":
        users, items = split.train_pairs()
        seen = np.unique(users * (num_items + 1) + items + 1)  # sorted (member, title) keys
    best, best_epoch, best_state, since_best = -np.inf, 0, None, 0
    history: list[dict] = []
    start = time.perf_counter()
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(len(windows.owner))
        losses = []
        bar = tqdm(
            range(0, len(order), config.batch_size),
            desc=f"epoch {epoch}",
            leave=False,
            disable=None,
            mininterval=2.0,
        )
        for b in bar:
            idx = order[b : b + config.batch_size]
            negatives = None
            if seen is not None:
                negatives = torch.from_numpy(
                    _sample_negatives(rng, windows.owner[idx], windows.targets[idx].shape, num_items, seen)
                ).to(device)
            loss = _batch_loss(
                model,
                torch.from_numpy(windows.inputs[idx]).to(device),
                torch.from_numpy(windows.targets[idx]).to(device),
                negatives,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0}
        if epoch % config.eval_every == 0 or epoch == config.max_epochs:
            score = float(validate(model))
            row["valid"] = score
            if score > best:
                best, best_epoch, since_best = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
        history.append(row)
        tqdm.write(
            f"epoch {epoch}: loss {row['loss']:.4f}"
            + (f"  valid {row['valid']:.4f} (best {best:.4f} @ {best_epoch})" if "valid" in row else "")
            + f"  {row['seconds']:.1f}s"
        )
        if since_best >= config.patience:
            break
    model.load_state_dict(best_state)
    return SASRecResult(
        model=model,
        best_epoch=best_epoch,
        epochs_run=epoch,
        converged=since_best >= config.patience,
        train_seconds=time.perf_counter() - start,
        history=history,
    )
