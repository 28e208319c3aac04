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

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gen_fm.batches import IGNORE, TITLE_COLUMNS, Augment, EpochTensors, WindowSource  # noqa: F401  (IGNORE: the label convention, re-exported)
from gen_fm.config import PretrainConfig
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


@dataclass
class TrainingRows:
    """Every epoch's training rows: the members' windows (re-cut each epoch when augmented) and the
    canvas mixture's rows beside them."""

    source: WindowSource
    fixed: dict[str, list]  # the un-augmented cut: sizes the schedule, and is every epoch's rows
    extra: dict[str, list]  # the canvas mixture's input_ids and labels (empty lists without one)
    mixture: dict[str, Any] | None  # what the mixture holds, per canvas
    augment: Augment
    titles: bool  # title-token histories (their windows carry the title columns)
    seed: int
    _same: EpochTensors | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.augment.active:  # the same tensors every epoch: cut once, up front
            self._same = self._tensors(self.fixed)

    @property
    def num_rows(self) -> int:
        return len(self.fixed["input_ids"]) + len(self.extra["input_ids"])

    def epoch(self, epoch: int) -> EpochTensors:
        """The epoch's rows as padded arrays (augmented with the epoch's own generator)."""
        if self._same is not None:
            return self._same
        return self._tensors(self.source.rows(self.augment, np.random.default_rng([self.seed, epoch, 7])))

    def _tensors(self, cols: dict[str, list]) -> EpochTensors:
        if self.titles:  # no canvas mixture (the config refuses one)
            return EpochTensors.from_rows(cols["input_ids"], **{k: cols[k] for k in TITLE_COLUMNS})
        return EpochTensors.from_rows(
            cols["input_ids"] + self.extra["input_ids"], cols["labels"] + self.extra["labels"]
        )


def training_rows(
    split: Split,
    sid_rows: np.ndarray,
    encoder: PromptEncoder,
    config: PretrainConfig,
    targets: np.ndarray | None = None,
    extra_rows: tuple[Any, dict] | None = None,
) -> TrainingRows:
    """The run's training rows; `targets` marks the events that are targets (None: all), and
    `extra_rows` = (rows with input_ids and labels columns, what they are) is the canvas mixture
    that ``config.augment.canvas_mix`` names."""
    source = window_source(split, sid_rows, encoder, targets=targets)
    fixed = source.rows()
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
    titles = config.model.history_tokens == "titles"
    return TrainingRows(source, fixed, extra, mixture, augment, titles, config.seed)


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
