"""The home canvas: the member's history, no context; the target is the next title.

Training examples are every next-title position inside members' training events; held-out examples
are the leave-one-out test targets, which neither the foundation model nor the adapter trained on.
"""

from __future__ import annotations

from prompt_tuning.canvases.base import (CanvasSource, CanvasSpec, Examples, held_out_examples,
                                         next_title_examples)


def build_examples(src: CanvasSource) -> Examples:
    return Examples(next_title_examples(src.split, src.sid_rows, src.split.max_history),
                    held_out_examples(src.split, src.sid_rows), {})


SPEC = CanvasSpec(name="home", token="home", build_examples=build_examples)
