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


import numpy as np

from gen_fm.batches import IGNORE, WindowSource  # noqa: F401  (IGNORE: the label convention, re-exported)
from gen_fm.tokenizer import DEFAULT_CANVAS, PromptEncoder
from semantic_ids.ids import SemanticIDs
from core.data import RecData
from core.sequences import Split


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
        raise KeyError(
            f"{int((mapped < 0).sum())} title(s) in the sequences have no semantic ID: "
            f"the ID artifact was built from another catalog (assign them first)"
        )
    return mapped


def window_source(
    split: Split,
    sid_rows: np.ndarray,
    encoder: PromptEncoder,
    canvas: str = DEFAULT_CANVAS,
    targets: np.ndarray | None = None,
) -> WindowSource:
    """Every member's training titles as ID-artifact rows, ready to be cut into windows."""
    items = [to_sid_rows(split.train_items(u), sid_rows) for u in range(len(split.sequences))]
    return WindowSource(
        items,
        split.sequences.offsets[:-1],
        split.sequences.user_ids,
        split.max_history,
        encoder,
        canvas,
        targets,
    )


def example_features() -> "datasets.Features":  # noqa: F821
    """Columns of every pretraining row (windows and canvas-mixture rows alike, so they concatenate)."""
    import datasets

    return datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "labels": datasets.Sequence(datasets.Value("int32")),
            "member": datasets.Value("int64"),
        }
    )
