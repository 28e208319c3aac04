"""Training examples for next-title prediction: windows over each member's training prefix.

A member's training events (``Split.train_items``, never the validation or test targets) are cut into
windows of at most ``max_history + 1`` titles. Windows are aligned to the end of the sequence and
overlap by one title, so every title but the member's first is a target exactly once, and the most
recent titles see the longest context (as the evaluation histories do). The first title of a window
is context only: it was the last target of the window before.

Labels follow the Hugging Face convention (aligned with ``input_ids``; the model predicts position t
from positions < t): the code tokens of titles 2..W keep their ids, everything else is -100.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gen_fm.tokenizer import DEFAULT_CANVAS, PromptEncoder
from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import PAD
from sidrec.data import RecData
from sidrec.sequences import Split

IGNORE = -100


def catalog_to_sid_rows(data: RecData, ids: SemanticIDs) -> np.ndarray:
    """(num_catalog,) int64: ID-artifact row of each catalog row, -1 for titles without an ID."""
    out = np.full(len(data.catalog), -1, dtype=np.int64)
    for row, item_id in enumerate(data.catalog["item_id"]):
        if item_id in ids:
            out[row] = ids.index_of(item_id)
    return out


def to_sid_rows(catalog_rows: np.ndarray, sid_rows: np.ndarray) -> np.ndarray:
    """Map catalog rows to ID-artifact rows; a title without an ID is an error, not a silent drop."""
    mapped = sid_rows[np.asarray(catalog_rows, dtype=np.int64)]
    if (mapped < 0).any():
        raise KeyError(f"{int((mapped < 0).sum())} title(s) in the sequences have no semantic ID: "
                       f"the ID artifact was built from another catalog (assign them first)")
    return mapped


def window_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most `size` titles over n titles, oldest first, sharing one title
    with the next window, the last one ending at n. Sequences of < 2 titles give no window."""
    if size < 2:
        raise ValueError(f"window size must be >= 2, got {size}")
    out, end = [], n
    while n >= 2:
        start = max(0, end - size)
        out.append((start, end))
        if start == 0:
            break
        end = start + 1
    return out[::-1]


def make_example(encoder: PromptEncoder, rows: np.ndarray, user_id: str | None,
                 canvas: str = DEFAULT_CANVAS) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one window: loss on the code tokens of every title but the first."""
    input_ids = encoder.encode(rows, canvas=canvas, user_id=user_id)
    L = encoder.layout.sid_length
    context = len(input_ids) - (len(rows) - 1) * L  # prefix tokens + the first title
    labels = [IGNORE] * context + input_ids[context:]
    return input_ids, labels


def build_examples(split: Split, sid_rows: np.ndarray, encoder: PromptEncoder,
                   canvas: str = DEFAULT_CANVAS,
                   targets: np.ndarray | None = None) -> "datasets.Dataset":  # noqa: F821
    """One row per window: input_ids, labels (both variable length), member (row in Sequences).

    `targets` ((E,) bool over the Sequences' events) limits the loss to those events, e.g. the fresh
    interactions of a catalog refresh: other titles stay in the windows as context only, and
    windows without a target are left out.
    """
    import datasets

    size = split.max_history + 1
    L = encoder.layout.sid_length
    cols: dict[str, list] = {"input_ids": [], "labels": [], "member": []}
    for u in range(len(split.sequences)):
        items = to_sid_rows(split.train_items(u), sid_rows)
        user_id = split.sequences.user_ids[u]
        first = int(split.sequences.offsets[u])  # event index of the member's first title
        for start, end in window_bounds(len(items), size):
            ids, labels = make_example(encoder, items[start:end], user_id, canvas)
            if targets is not None:
                keep = targets[first + start + 1: first + end]  # (W-1,) titles 2..W of the window
                if not keep.any():
                    continue
                tail = len(labels) - len(keep) * L  # where title 2's code tokens start
                for j in np.flatnonzero(~keep):
                    labels[tail + j * L: tail + (j + 1) * L] = [IGNORE] * L
            cols["input_ids"].append(ids)
            cols["labels"].append(labels)
            cols["member"].append(u)
    if not cols["input_ids"]:
        raise ValueError("no training windows: every member has fewer than 2 training titles")
    return datasets.Dataset.from_dict(cols, features=example_features())


def example_features() -> "datasets.Features":  # noqa: F821
    """Columns of every pretraining row (windows and canvas-mixture rows alike, so they concatenate)."""
    import datasets

    return datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                              "labels": datasets.Sequence(datasets.Value("int32")),
                              "member": datasets.Value("int64")})


@dataclass(frozen=True)
class PadCollator:
    """Right-pads a list of examples (or a column batch) into tensors; labels pad with -100."""

    pad_id: int = PAD

    def __call__(self, batch: Sequence[dict] | dict) -> dict[str, torch.Tensor]:
        if isinstance(batch, dict):  # a column batch, as `Dataset.__getitem__(list)` returns
            seqs, labs = batch["input_ids"], batch["labels"]
        else:
            seqs, labs = [b["input_ids"] for b in batch], [b["labels"] for b in batch]
        B, T = len(seqs), max(len(s) for s in seqs)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((B, T), IGNORE, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
        for i, (s, lab) in enumerate(zip(seqs, labs)):
            if len(s) != len(lab):
                raise ValueError(f"example {i}: {len(s)} input ids but {len(lab)} labels")
            input_ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            labels[i, : len(s)] = torch.as_tensor(lab, dtype=torch.long)
            attention_mask[i, : len(s)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
