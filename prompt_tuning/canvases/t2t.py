"""The t2t ("title to title") canvas: a source title's ID after ``<sep>``, no history, no member.

The target is a title a member engaged with right after the source: training pairs are consecutive
training events; held-out pairs are (last history title, leave-one-out test target). Served with its
soft prompt and no ``source``, the history's last title is the source (a "because you watched X" row).
"""

from __future__ import annotations

import numpy as np

from prompt_tuning.canvases.base import (CanvasExample, CanvasSource, CanvasSpec, ExampleContext,
                                         Examples, held_out_examples, next_title_examples)


def build_examples(src: CanvasSource) -> Examples:
    train = []
    for ex in next_title_examples(src.split, src.sid_rows, 1):
        s = int(ex.history[-1])
        if s != ex.target:
            train.append(CanvasExample(np.zeros(0, np.int64), ex.target, None, kind="pair", source=s))
    test = [CanvasExample(np.zeros(0, np.int64), ex.target, None, kind="pair",
                          source=int(ex.history[-1]))
            for ex in held_out_examples(src.split, src.sid_rows)
            if len(ex.history) and ex.history[-1] != ex.target]
    for ex in train + test:
        ex.context = src.encoder.sid_tokens[ex.source].tolist()
    return Examples(train, test, {})


def example_context(data, ids, history_rows: list[int], user: str) -> ExampleContext | None:
    """More like the member's last title."""
    if not history_rows:
        return None
    return ExampleContext(ids.item_ids[history_rows[-1]], f"more like '{ids.titles[history_rows[-1]]}'")


SPEC = CanvasSpec(name="t2t", token="t2t", build_examples=build_examples, context_field="source",
                  context_kind="title", keeps_history=False, missing_context="last_title",
                  example_context=example_context)
