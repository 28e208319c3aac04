"""The t2t ("title to title", "because you watched X") canvas: the member's history ending with the
source title, asked the home question, answered inside the source's neighbourhood. Built so because:
- the neighbourhood (the source's most co-engaged titles, then its nearest by title text:
  ``CandidateIndex.for_source``) lifts every variant, and keeps the row about the source;
- inside it, the member's history ending with the source ranks at least as well as the source alone
  (or the source after ``<sep>`` under the t2t token), and personalises the row;
- no adapter trained for it beats the frozen model beyond noise: the foundation model is already
  trained on exactly this question, so the canvas is served by the frozen model (``adapter="none"``);
- the neighbourhood's own order (co-engagement counts, no model) ranks better still, and the model's
  ranking fused with it by reciprocal rank (``fuse_candidate_order``; constants chosen on the
  validation split) best of all: the row is served that way.
Training pairs are consecutive training events (history up to the source, the next title); held-out
pairs are (the history before the leave-one-out test target, whose last title is the source, the
target). Served without a ``source``, the history's last title is the source; an anonymous request
with a source is the source alone."""

from __future__ import annotations


from prompt_tuning.canvases.base import CanvasContext, CanvasExample, CanvasSource, CanvasSpec
from prompt_tuning.canvases.base import ExampleContext, Examples, held_out_examples, next_title_examples


def build_examples(src: CanvasSource) -> Examples:
    train = [
        CanvasExample(ex.history, ex.target, ex.user, kind="pair", source=int(ex.history[-1]))
        for ex in next_title_examples(src.split, src.sid_rows, src.split.max_history)
        if ex.history[-1] != ex.target
    ]
    test = [
        CanvasExample(
            ex.history[-src.split.max_history :], ex.target, ex.user, kind="pair", source=int(ex.history[-1])
        )
        for ex in held_out_examples(src.split, src.sid_rows)
        if len(ex.history) and ex.history[-1] != ex.target
    ]
    return Examples(train, test, {})


def example_context(data, ids, history_rows: list[int], user: str) -> ExampleContext | None:
    """More like the member's last title."""
    if not history_rows:
        return None
    return ExampleContext(ids.item_ids[history_rows[-1]], f"more like '{ids.titles[history_rows[-1]]}'")


def source_candidates(index, row: int):
    return index.for_source(row)


SPEC = CanvasSpec(
    name="t2t",
    token="home",
    build_examples=build_examples,
    context=CanvasContext(
        "source", "title", "the title id the row is about", missing="last_title", in_history=True
    ),
    candidates=source_candidates,
    fuse_candidate_order=True,
    example_context=example_context,
    adapter="none",
)
