"""The home canvas: the member's history, no context; the target is the next title.

Training examples are every next-title position inside members' training events; held-out examples
are the leave-one-out test targets, which neither the foundation model nor the adapter trained on.

Served, the model's ranking over the whole catalog, without the history's titles, is fused by
reciprocal rank with the titles most co-engaged with the history's newest titles
(``fuse_co_engaged``: ``CoEngagement.of_recent`` over the model folder's co-engagement table,
training events only); the fused row ranks better than the model alone and the counts alone, and
``ServingConfig.fusion_weight=0`` serves the model alone. Served by the frozen model
(``adapter="none"``): no home soft prompt beats it beyond noise, with or without the fusion;
``--set method=soft_prompt`` trains one anyway.
"""

from __future__ import annotations

from prompt_tuning.canvases.base import (
    CanvasSource,
    CanvasSpec,
    Examples,
    held_out_examples,
    next_title_examples,
)


def build_examples(src: CanvasSource) -> Examples:
    return Examples(
        next_title_examples(src.split, src.sid_rows, src.split.max_history),
        held_out_examples(src.split, src.sid_rows),
        {},
    )


SPEC = CanvasSpec(
    name="home", token="home", build_examples=build_examples, fuse_co_engaged=True, adapter="none"
)
