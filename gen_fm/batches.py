"""Each epoch's training rows, augmented and padded into tensors once, then sliced per batch.

An epoch starts by cutting every member's windows (re-cut and augmented with the epoch's own seeded
generator, so a resumed run sees the very same rows) and padding them into two (N, T) arrays; a
batch is a slice of those arrays, so no table lookup or Python padding runs per micro-batch.

Augmentation (``PretrainConfig.item_dropout`` / ``window_jitter``) attacks what the gap between
validation and test shows: the model learning members' exact training contexts. Each epoch a title
is left out of a member's sequence with probability ``item_dropout`` (it is then neither context nor
target that epoch), and members longer than one window get their window boundaries shifted by a
random phase, so a title is predicted from contexts of varying length across epochs. Only training
events are ever used (``Split.train_items``): validation and test targets never enter a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gen_fm.tokenizer import DEFAULT_CANVAS, PromptEncoder
from semantic_ids.layout import PAD

IGNORE = -100
# Columns of a title-token model's rows besides input_ids (``make_title_example``).
TITLE_COLUMNS = ("targets", "title_targets", "position_ids", "branch", "anchor")
LENGTH_GROUP = 64  # batches per length-sorted group (less padding, still shuffled)


def window_bounds(n: int, size: int, shift: int = 0) -> list[tuple[int, int]]:
    """[start, end) windows of at most `size` titles over n titles, oldest first, sharing one title
    with the next window. With shift 0 the last window ends at n; a shift s moves every boundary s
    titles earlier and adds a last window of the s newest titles. Either way every title but the
    first is a target exactly once. Sequences of < 2 titles give no window."""
    if size < 2:
        raise ValueError(f"window size must be >= 2, got {size}")
    if not 0 <= shift <= size - 2:
        raise ValueError(f"shift must be in [0, {size - 2}], got {shift}")
    if n < 2:
        return []
    shift = min(shift, n - 2)  # the shifted part must still hold a full first window
    out, end = [], n - shift
    while True:
        start = max(0, end - size)
        out.append((start, end))
        if start == 0:
            break
        end = start + 1
    out = out[::-1]
    if shift:
        out.append((n - shift - 1, n))
    return out


def make_title_example(
    encoder: PromptEncoder,
    rows: np.ndarray,
    user_id: str | None,
    canvas: str = DEFAULT_CANVAS,
    keep: np.ndarray | None = None,
) -> dict[str, list]:
    """One window of a title-token model, every target trained in one pass, as at inference.

    The trunk is the prompt (prefix, then one title token per title). The hidden state of title
    j-1 predicts title j's first code; title j's other codes are predicted in a branch of its
    first L-1 code tokens that sees the trunk up to title j-1 and itself only, at the positions
    they take when decoded after that prompt. Columns: input_ids, targets (what each position
    predicts, IGNORE for none), title_targets (the ID-artifact row a trunk position predicts, for the
    full-softmax title loss), position_ids, branch (0 = trunk, j = title j's branch) and anchor
    (last trunk index a token sees). `keep` ((W-1,) bool) marks which of titles 2..W are targets.
    """
    trunk = encoder.encode(rows, canvas=canvas, user_id=user_id)
    codes = encoder.sid_tokens[rows]  # (W, L)
    W, L = codes.shape
    first = len(trunk) - W  # index of title 1's token
    targets = [IGNORE] * len(trunk)
    title_targets = [IGNORE] * len(trunk)
    ids, pos, branch, anchor = list(trunk), list(range(len(trunk))), [0] * len(trunk), list(range(len(trunk)))
    for j in range(1, W):
        if keep is not None and not keep[j - 1]:
            continue
        a = first + j - 1  # trunk index of the title before target j
        targets[a], title_targets[a] = int(codes[j, 0]), int(rows[j])
        ids += codes[j, :-1].tolist()
        targets += codes[j, 1:].tolist()
        title_targets += [IGNORE] * (L - 1)
        pos += list(range(a + 1, a + L))
        branch += [j] * (L - 1)
        anchor += [a] * (L - 1)
    return {
        "input_ids": ids,
        "targets": targets,
        "title_targets": title_targets,
        "position_ids": pos,
        "branch": branch,
        "anchor": anchor,
    }


def make_example(
    encoder: PromptEncoder, rows: np.ndarray, user_id: str | None, canvas: str = DEFAULT_CANVAS
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one window: loss on the code tokens of every title but the first."""
    input_ids = encoder.encode(rows, canvas=canvas, user_id=user_id)
    L = encoder.layout.sid_length
    context = len(input_ids) - (len(rows) - 1) * L  # prefix tokens + the first title
    labels = [IGNORE] * context + input_ids[context:]
    return input_ids, labels


@dataclass(frozen=True)
class Augment:
    """How one epoch's windows are perturbed; the default is the plain, fixed cut."""

    item_dropout: float = 0.0  # chance that a title is left out of a member's sequence this epoch
    jitter: bool = False  # shift window boundaries by a random phase (members longer than a window)

    def __post_init__(self) -> None:
        if not 0.0 <= self.item_dropout < 1.0:
            raise ValueError(f"item_dropout must be in [0, 1), got {self.item_dropout}")

    @property
    def active(self) -> bool:
        return self.item_dropout > 0 or self.jitter


class WindowSource:
    """Members' training titles (ID-artifact rows), from which every epoch's windows are cut."""

    def __init__(
        self,
        items: list[np.ndarray],
        first: np.ndarray,
        user_ids: Sequence[str],
        max_history: int,
        encoder: PromptEncoder,
        canvas: str = DEFAULT_CANVAS,
        targets: np.ndarray | None = None,
    ) -> None:
        self.items = items  # per member: (n,) ID-artifact rows of the training titles, in order
        self.first = np.asarray(first, dtype=np.int64)  # (U,) event index of each member's first title
        self.user_ids = user_ids
        self.size = max_history + 1
        self.encoder, self.canvas = encoder, canvas
        self.targets = targets  # (E,) bool over the Sequences' events, or None (all are targets)

    def rows(self, augment: Augment = Augment(), rng: np.random.Generator | None = None) -> dict[str, list]:
        """Columns input_ids, labels, member of one epoch's windows (`rng` drives the augmentation).

        With `targets`, titles whose event is not a target keep their place as context with labels
        IGNORE, and windows without any target are left out.
        """
        if augment.active and rng is None:
            raise ValueError("an augmented epoch needs its random generator")
        L = self.encoder.layout.sid_length
        titles = self.encoder.title_ids is not None
        cols: dict[str, list] = {"input_ids": [], "labels": [], "member": []}
        if titles:
            cols = {
                k: []
                for k in (
                    "input_ids",
                    "targets",
                    "title_targets",
                    "position_ids",
                    "branch",
                    "anchor",
                    "member",
                )
            }
        for u, items in enumerate(self.items):
            events = self.first[u] + np.arange(len(items))  # (n,) event index of each title
            if augment.item_dropout and len(items) > 2:
                keep = rng.random(len(items)) >= augment.item_dropout
                if keep.sum() >= 2:
                    items, events = items[keep], events[keep]
            shift = int(rng.integers(0, self.size - 1)) if augment.jitter and len(items) > self.size else 0
            for start, end in window_bounds(len(items), self.size, shift):
                if titles:
                    keep_t = None if self.targets is None else self.targets[events[start + 1 : end]]
                    if keep_t is not None and not keep_t.any():
                        continue
                    row = make_title_example(
                        self.encoder, items[start:end], self.user_ids[u], self.canvas, keep_t
                    )
                    for k, v in row.items():
                        cols[k].append(v)
                    cols["member"].append(u)
                    continue
                ids, labels = make_example(self.encoder, items[start:end], self.user_ids[u], self.canvas)
                if self.targets is not None:
                    keep_t = self.targets[events[start + 1 : end]]  # (W-1,) titles 2..W
                    if not keep_t.any():
                        continue
                    tail = len(labels) - len(keep_t) * L  # where title 2's code tokens start
                    for j in np.flatnonzero(~keep_t):
                        labels[tail + j * L : tail + (j + 1) * L] = [IGNORE] * L
                cols["input_ids"].append(ids)
                cols["labels"].append(labels)
                cols["member"].append(u)
        return cols


@dataclass
class EpochTensors:
    """One epoch's rows, right-padded once: a batch is a slice, not a Python collation.

    Rows of a code-token model are (input_ids, labels) in the Hugging Face convention; rows of a
    title-token model (``make_title_example``) carry their targets, positions and branch structure,
    from which a batch builds its 4-D attention mask."""

    input_ids: np.ndarray  # (N, T) int64, PAD after each row's end
    labels: np.ndarray | None  # (N, T) int64 labels (code-token rows), IGNORE after each row's end
    lengths: np.ndarray  # (N,) int64 tokens of each row
    targets: np.ndarray | None = None  # (N, T) what each position predicts (title-token rows)
    title_targets: np.ndarray | None = None  # (N, T) ID-artifact row a trunk position predicts
    position_ids: np.ndarray | None = None  # (N, T)
    branch: np.ndarray | None = None  # (N, T) 0 = trunk, j = branch of target j
    anchor: np.ndarray | None = None  # (N, T) last trunk index each token sees

    @classmethod
    def from_rows(
        cls,
        input_ids: Sequence[Sequence[int]],
        labels: Sequence[Sequence[int]] | None = None,
        **title_columns: Sequence[Sequence[int]],
    ) -> "EpochTensors":
        lengths = np.fromiter((len(s) for s in input_ids), dtype=np.int64, count=len(input_ids))
        if not len(lengths):
            raise ValueError("no training rows")
        columns = {"labels": labels} if labels is not None else title_columns
        if set(columns) not in ({"labels"}, set(TITLE_COLUMNS)):
            raise ValueError(f"rows need labels, or {', '.join(TITLE_COLUMNS)}; got {sorted(columns)}")
        if any(len(s) != len(c) for col in columns.values() for s, c in zip(input_ids, col)):
            raise ValueError("every row needs as many labels (or targets) as input ids")
        T = int(lengths.max())
        mask = np.arange(T)[None, :] < lengths[:, None]  # (N, T) real tokens

        def pad(rows, fill):
            out = np.full((len(lengths), T), fill, dtype=np.int64)
            out[mask] = np.fromiter((t for s in rows for t in s), dtype=np.int64, count=int(lengths.sum()))
            return out

        fills = {
            "labels": IGNORE,
            "targets": IGNORE,
            "title_targets": IGNORE,
            "position_ids": 0,
            "branch": -1,
            "anchor": 0,
        }
        return cls(
            pad(input_ids, PAD),
            lengths=lengths,
            **{"labels": None, **{k: pad(v, fills[k]) for k, v in columns.items()}},
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """The rows `idx`, cut to their longest. Every batch has ``targets`` (what each position
        predicts); code-token rows also keep their ``labels``, title-token rows add
        ``position_ids`` and a (B, 1, T, T) boolean ``attention_mask``."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.lengths[idx]
        T = int(lengths.max())
        real = np.arange(T)[None, :] < lengths[:, None]  # (B, T)
        if self.labels is not None:
            labels = torch.from_numpy(self.labels[idx, :T])
            return {
                "input_ids": torch.from_numpy(self.input_ids[idx, :T]),
                "attention_mask": torch.from_numpy(real.astype(np.int64)),
                "labels": labels,
                "targets": torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE),
            }
        branch = torch.from_numpy(self.branch[idx, :T])  # (B, T)
        anchor = torch.from_numpy(self.anchor[idx, :T])  # (B, T)
        t = torch.arange(T)
        trunk_key = (branch == 0)[:, None, :] & (t[None, None, :] <= anchor[:, :, None])  # (B, T, T)
        same = (
            (branch[:, :, None] == branch[:, None, :])
            & (branch[:, :, None] > 0)
            & (t[None, None, :] <= t[None, :, None])
        )  # (B, T, T) own branch, causally
        allowed = (trunk_key | same) & torch.from_numpy(real)[:, None, :]
        allowed |= torch.eye(T, dtype=torch.bool)[None]  # padding rows see themselves (no NaN)
        return {
            "input_ids": torch.from_numpy(self.input_ids[idx, :T]),
            "attention_mask": allowed[:, None],  # (B, 1, T, T)
            "position_ids": torch.from_numpy(self.position_ids[idx, :T]),
            "targets": torch.from_numpy(self.targets[idx, :T]),
            "title_targets": torch.from_numpy(self.title_targets[idx, :T]),
        }


def epoch_batches(
    lengths: np.ndarray,
    batch_size: int,
    epoch: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    group: int = LENGTH_GROUP,
) -> list[np.ndarray]:
    """This process's batches (row indices) of one epoch, from one seeded global order.

    Groups of `group` global batches are sorted by length to cut padding, then the batch order is
    shuffled. The order is padded (wrapping) to a multiple of `world`, so every process gets the
    same number of batches and none is empty.
    """
    rng = np.random.default_rng([seed, epoch])
    n = len(lengths)
    perm = np.resize(rng.permutation(n), n + (-n) % world)
    gb = batch_size * world
    if group > 1:
        chunks = [perm[i : i + gb * group] for i in range(0, len(perm), gb * group)]
        perm = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    batches = [perm[i : i + gb] for i in range(0, len(perm), gb)]
    return [batches[j][rank::world] for j in rng.permutation(len(batches))]
