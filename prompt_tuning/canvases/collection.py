"""The collection canvas: the member's history, then a theme (a catalog category, as text) after
``<sep>``; the target is the next title, when it is in that theme.

A title's theme is its rarest category with at least ``min_theme_titles`` titles on at most half the
catalog (``theme_of``). Examples are home's (training events; test targets held out), kept when the
target has a theme. Served, the theme's titles are the candidates (``CandidateIndex.for_theme``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prompt_tuning.canvases.base import CanvasContext, CanvasSource, CanvasSpec, ExampleContext, Examples
from prompt_tuning.canvases.base import held_out_examples, next_title_examples, theme_of


def build_examples(src: CanvasSource) -> Examples:
    data, sid_rows, H = src.data, src.sid_rows, src.split.max_history
    themes = theme_of(list(data.catalog["categories"]), src.config.canvas_data.min_theme_titles)
    row_theme = {int(sid_rows[r]): t for r, t in enumerate(themes) if sid_rows[r] >= 0}
    train = [ex for ex in next_title_examples(src.split, sid_rows, H) if row_theme.get(ex.target)]
    test = [ex for ex in held_out_examples(src.split, sid_rows) if row_theme.get(ex.target)]
    names = sorted({row_theme[ex.target] for ex in train + test})
    tokens = dict(zip(names, src.queries.encode(names)))
    for ex in train + test:
        ex.text, ex.kind = row_theme[ex.target], "theme"
        ex.context = tokens[ex.text]
    return Examples(train, test, {"themes": len(names)})


def candidates(index, theme: str):
    """Every title of a catalog theme; a free-text theme's matching titles, else its nearest."""
    return index.for_theme(theme)


def metrics(
    data, ranked: list[list[int]], *, titles_lower, row_categories, k: int, ranked_anonymous=None
) -> dict[str, Any]:
    """``in_theme_share``: the share of the top-K inside the theme."""
    shares = [
        np.mean([ex.text in row_categories[r] for r in rows[:k]]) if rows else 0.0
        for ex, rows in zip(data.test, ranked)
    ]
    return {"in_theme_share": float(np.mean(shares))}


def example_context(data, ids, history_rows: list[int], user: str) -> ExampleContext | None:
    """The theme of the member's latest title that has one (None: no such title, skip)."""
    cats = dict(zip(data.catalog["item_id"], data.catalog["categories"]))
    themes = theme_of([cats.get(i, []) for i in ids.item_ids], 20)
    theme = next((themes[r] for r in reversed(history_rows) if themes[r]), None)
    return None if theme is None else ExampleContext(theme, f"collection '{theme}'")


SPEC = CanvasSpec(
    name="collection",
    token="collection",
    build_examples=build_examples,
    context=CanvasContext("theme", "text", "the theme (a category name)"),
    candidates=candidates,
    metrics=metrics,
    example_context=example_context,
    # a soft prompt on the frozen model cannot learn to read the theme; a LoRA reads it
    # as well as full fine-tuning does, with far fewer weights
    adapter="lora",
)
