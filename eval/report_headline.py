"""The report's headline: per dataset, the home row as served and its parts, our best SASRec and
the published anchor, each row naming the file it comes from.

The home rows are the ones ``eval.report_results.parse_home_row`` reads from the ``sidrec eval``
files (the model alone, its beam and title head where recorded, the counts alone, the served row);
``HEADLINE_RULE`` says which file is a dataset's headline, and the report prints that sentence
beside the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from eval.published import published
from eval.report_results import HOME_PARTS, HomeRow, Retrieval
from gen_fm.selection import standard_error

K = 10
RECALL, NDCG, SE = f"recall@{K}", f"ndcg@{K}", f"recall@{K}_se"
ANCHOR = "TIGER (paper)"  # the published method this project reproduces (eval.published)

HEADLINE_RULE = (
    "among the `sidrec eval` files on the test split whose home row is scored as served (history "
    "excluded, fusion weight chosen on validation by the model folder), the one with the highest "
    f"served R@{K} (ties: served N@{K}, then the file name)"
)
SASREC_RULE = (
    f"the `sasrec*` baseline file with the highest test R@{K} with the history excluded (the "
    "figures without exclusion only where no file records them)"
)


@dataclass(frozen=True)
class HeadlineRow:
    kind: str  # a HOME_PARTS key, "sasrec" or "anchor"
    label: str  # the table's words (markdown)
    short: str  # the plot's
    recall: float | None  # R@K
    ndcg: float | None  # N@K
    se: float | None  # one standard error of R@K
    se_computed: bool  # the file records none: sqrt(p (1 - p) / n) from R@K and its members
    source: str  # a results file, or the publication
    key: str  # where in the file the figures are ("" for a publication)


@dataclass(frozen=True)
class Headline:
    dataset: str
    rows: tuple[HeadlineRow, ...]
    chosen: HomeRow | None  # the headline file's home row
    candidates: int  # files the rule chose among


def headline_candidates(home_rows: list[HomeRow], dataset: str) -> list[HomeRow]:
    """The files ``HEADLINE_RULE`` chooses among, the headline first."""
    rows = [
        r
        for r in home_rows
        if r.dataset == dataset
        and r.split == "test"
        and r.as_served
        and r.parts["served"][RECALL] is not None
    ]
    return sorted(
        rows, key=lambda r: (-r.parts["served"][RECALL], -(r.parts["served"][NDCG] or 0.0), r.source)
    )


def best_sasrec(retrieval: list[Retrieval], dataset: str) -> tuple[Retrieval, bool] | None:
    """Our best SASRec by ``SASREC_RULE`` and whether its figures exclude the history."""
    rows = [
        r
        for r in retrieval
        if r.group == "baseline"
        and r.dataset == dataset
        and r.split == "test"
        and r.model.startswith("sasrec")
    ]
    excluded = [r for r in rows if r.history_excluded and r.history_excluded.get(RECALL) is not None]
    pool, figures = (excluded, "history_excluded") if excluded else (rows, "metrics")
    pool = [r for r in pool if getattr(r, figures).get(RECALL) is not None]
    if not pool:
        return None
    best = sorted(pool, key=lambda r: (-getattr(r, figures)[RECALL], r.source))[0]
    return best, bool(excluded)


SHORT = {
    "model": "the model alone",
    "beam": "· its beam",
    "title_head": "· its title head",
    "counts": "the counts alone",
    "served": "served",
}


def _part_label(part: str, h: HomeRow) -> str:
    weight = lambda w: "?" if w is None else f"{w:g}"  # noqa: E731
    if part == "model":
        if "beam" in h.parts:
            return (
                f"the model alone: its beam fused with its title head (title weight {weight(h.title_weight)})"
            )
        return "the model alone (its beam)"
    if part == "beam":
        return "· its beam alone"
    if part == "title_head":
        return "· its title head alone"
    if part == "counts":
        newest = f"the {h.recent_titles} newest" if h.recent_titles else "the newest"
        return f"the counts alone (titles most co-engaged with {newest} titles)"
    return f"**served**: the model fused with the counts (fusion weight {weight(h.fusion_weight)}, chosen on validation)"


def headline(home_rows: list[HomeRow], retrieval: list[Retrieval], dataset: str) -> Headline:
    """The headline rows of one dataset, in the order the report shows them."""
    candidates = headline_candidates(home_rows, dataset)
    chosen = candidates[0] if candidates else None
    rows: list[HeadlineRow] = []
    if chosen is not None:
        for part, key in HOME_PARTS.items():
            if part in chosen.parts:
                f = chosen.parts[part]
                where = "home_row" if key is None else f"home_row.{key}"
                label, short = _part_label(part, chosen), SHORT[part]
                rows.append(
                    HeadlineRow(part, label, short, f[RECALL], f[NDCG], f[SE], False, chosen.source, where)
                )
    sasrec = best_sasrec(retrieval, dataset)
    if sasrec is not None:
        r, excluded = sasrec
        figures = r.history_excluded if excluded else r.metrics
        se = standard_error(figures[RECALL], r.members) if r.members else None
        label = f"our best SASRec ({r.model}, history {'excluded' if excluded else 'not excluded'})"
        key = f"history_excluded.{r.split}" if excluded else f"metrics.{r.split}"
        stem = r.source.rsplit("/", 1)[-1].removesuffix(".json")
        short = f"SASRec ({stem.removeprefix(dataset).strip('-_') or r.model})"
        rows.append(
            HeadlineRow(
                "sasrec", label, short, figures[RECALL], figures.get(NDCG), se, se is not None, r.source, key
            )
        )
    anchor = published(dataset).get(ANCHOR)
    if anchor is not None:
        rows.append(
            HeadlineRow(
                "anchor",
                f"published anchor: {ANCHOR}, history not excluded",
                f"{ANCHOR}, history kept",
                anchor.get(RECALL),
                anchor.get(NDCG),
                None,
                False,
                anchor["source"],
                "",
            )
        )
    return Headline(dataset, tuple(rows), chosen, len(candidates))
