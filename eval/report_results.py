"""What the results files hold: one typed record per figure (``Results``), filled by the per-benchmark
parsers of ``eval.report_parsers``, and the home row of a ``sidrec eval`` file (``parse_home_row``).

``sidrec eval`` records the home row beside a model's own figures (``home_row`` in a
``results/gen_fm`` file): the model's ranking with the history excluded (where the model has a
title head, that ranking fuses its beam with the head, and both are recorded alone), the counts
alone, and the served row that fuses the model with the counts. ``parse_home_row`` reads it apart
from the experiment rows; ``eval.report_headline`` chooses among the home rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
# Per-canvas variants in plotting order; other entries that carry metrics are plotted after them,
# entries without metrics (the canvas's "data", "config") are not variants.
VARIANTS = {
    "adapter": "soft prompt (adapter)",
    "base": "frozen base",
    "base_home_prompt": "frozen base, home prompt",
    "full_finetune": "full fine-tune",
}
CANVAS_EXTRAS = ("trainable_parameters", "train_seconds")
# Catalog-refresh variants in table order -> the table's words.
REFRESH_VARIANTS = {
    "before": "before (old model, old IDs)",
    "old_model_new_trie": "old model + new IDs",
    "after": "after the fine-tune",
    "popular_new": "most popular new titles",
    "content_nearest_new": "new titles nearest the history (content)",
}
# Figures of each part of the home row.
FIGURES = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@5_se", "recall@10_se")
# Part of the home row -> the key holding its figures in ``home_row`` (None: the served row, whose
# figures are the home row's own). Beam and title head are only in files of title-head models.
HOME_PARTS: dict[str, str | None] = {
    "model": "model_history_excluded",
    "beam": "beam_history_excluded",
    "title_head": "title_head_alone",
    "counts": "co_engaged_alone",
    "served": None,
}
# How eval.next_title marks a fusion weight the model folder chose on validation (else "defaults",
# or no mark in files written before the choice existed).
CHOSEN_ON_VALIDATION = "chosen on validation"


class ReportError(RuntimeError):
    """The results folder cannot make a report (missing, no JSON) or the output folder is unsafe."""


@dataclass(frozen=True)
class Retrieval:
    """One next-title figure row: a model or baseline on a dataset (ours, a baseline, or published)."""

    dataset: str
    group: str  # "ours" | "baseline" | "published"
    model: str
    split: str
    metrics: dict[str, float | None]
    params: float | None
    source: str  # a results file, or the publication
    history_excluded: dict[str, float | None] | None = None  # baselines that record it
    members: int | None = None  # members judged, where the file says


@dataclass(frozen=True)
class IDStats:
    """How good one semantic-ID artifact is: its codes' collisions and how evenly each level is used."""

    label: str
    dataset: str
    quantizer: str
    num_items: float | None
    collision_rate: float | None
    max_group: float | None
    codebook_size: Any
    utilization: tuple[float, ...]
    perplexity: tuple[float, ...]
    source: str


@dataclass(frozen=True)
class Latency:
    """One point of a serving grid: a backend at a beam width and batch size."""

    backend: str  # backend and decoding, e.g. "vllm (trie)"
    beams: int
    batch: int
    p50_s: float
    p99_s: float | None
    recs_per_s: float | None


@dataclass(frozen=True)
class ServingGrid:
    """A serving benchmark file: its latency points on one machine."""

    label: str
    machine: str
    points: tuple[Latency, ...]
    source: str


# Load-test columns: results key -> (table header, number format).
LOAD_COLUMNS = {
    "clients": ("clients", ".0f"),
    "seconds": ("seconds", ".0f"),
    "requests": ("requests", ",.0f"),
    "error_count": ("errors", ".0f"),
    "throughput_rps": ("req/s", ".2f"),
    "p50_s": ("p50 s", ".4f"),
    "p99_s": ("p99 s", ".4f"),
    "rss_growth_second_half_mib": ("RSS growth, 2nd half (MiB)", ".0f"),
}


@dataclass(frozen=True)
class LoadTest:
    """A load-test file: one backend's figures under concurrent clients."""

    backend: str
    figures: dict[str, float | None]  # LOAD_COLUMNS keys
    source: str


@dataclass(frozen=True)
class CanvasRow:
    """One variant of one canvas (base, adapter, fused, ...) with its held-out figures."""

    canvas: str
    variant: str
    metrics: dict[str, float | None]  # METRICS present + trainable_parameters, train_seconds


@dataclass(frozen=True)
class CanvasResults:
    """A canvas benchmark file: every canvas variant judged on one dataset."""

    dataset: str
    label: str
    rows: tuple[CanvasRow, ...]
    source: str


@dataclass(frozen=True)
class RefreshResult:
    """A catalog-refresh file: recall on new and old titles before and after the fine-tune."""

    dataset: str
    recall: dict[str, dict[str, float | None]]  # group (new_titles/old_titles) -> variant -> R@K
    members: dict[str, int]
    k: int
    source: str


@dataclass(frozen=True)
class HostTime:
    """Host time per training batch: collated per batch vs sliced from per-epoch tensors."""

    dataset: str
    batch_size: int
    collator_ms: float | None
    tensor_ms: float | None
    augmented_ms: float | None
    source: str


@dataclass(frozen=True)
class Figures:
    """A results file shown as one row of named figures (embedding probes, batch vs server)."""

    kind: str  # a key of ``eval.report._section_figures``'s titles
    dataset: str
    figures: dict[str, float | None]
    source: str


@dataclass(frozen=True)
class HomeRow:
    """The home row of one ``sidrec eval`` file and its parts, each with the history excluded."""

    dataset: str
    split: str
    members: int | None
    parts: dict[str, dict[str, float | None]]  # HOME_PARTS keys found in the file -> FIGURES
    fusion_weight: float | None
    title_weight: float | None
    recent_titles: int | None
    as_served: bool  # history excluded and the fusion weight chosen on validation
    source: str


@dataclass
class Results:
    """Everything the report shows, by kind of results file."""

    retrieval: list[Retrieval] = field(default_factory=list)
    home_rows: list[HomeRow] = field(default_factory=list)  # gen_fm files that record the home row
    ids: list[IDStats] = field(default_factory=list)
    grids: list[ServingGrid] = field(default_factory=list)
    loads: list[LoadTest] = field(default_factory=list)
    canvases: list[CanvasResults] = field(default_factory=list)
    refreshes: list[RefreshResult] = field(default_factory=list)
    host_times: list[HostTime] = field(default_factory=list)
    figures: list[Figures] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # shown name -> sha256
    skipped: dict[str, str] = field(default_factory=dict)  # shown name -> why


def finite(value: Any, what: str) -> float | None:
    """``value`` as a float (None stays None); a ValueError naming ``what`` if it is no finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is not a finite number: {value!r}")
    return float(value)


def metric_values(d: dict[str, Any], keys: tuple[str, ...] = METRICS) -> dict[str, float | None]:
    """``keys`` of ``d`` as finite numbers or None; a ValueError if ``d`` holds none of them."""
    out = {k: finite(d.get(k), k) for k in keys}
    if all(v is None for v in out.values()):
        raise ValueError(f"no figures among {', '.join(keys)}")
    return out


def parse_home_row(d: dict, name: str) -> HomeRow | None:
    """The home row of a gen_fm results file (None for a file written before it was recorded)."""
    home = d.get("home_row")
    if home is None:
        return None
    if not isinstance(home, dict):
        raise ValueError("home_row is not an object")
    parts = {}
    for part, key in HOME_PARTS.items():
        src = home if key is None else home.get(key)
        if src is None:
            continue
        if not isinstance(src, dict):
            raise ValueError(f"home_row.{key} is not an object")
        parts[part] = {f: finite(src.get(f), f"home_row {part} {f}") for f in FIGURES}
    if all(v is None for v in parts["served"].values()):
        raise ValueError(f"home_row holds none of {', '.join(FIGURES)}")
    recent = home.get("recent_titles")
    return HomeRow(
        dataset=str(d["dataset"]),
        split=str(d.get("split", "test")),
        members=int(d["num_users"]) if isinstance(d.get("num_users"), int) else None,
        parts=parts,
        fusion_weight=finite(home.get("fusion_weight"), "fusion_weight"),
        title_weight=finite(home.get("title_weight"), "title_weight"),
        recent_titles=int(recent) if isinstance(recent, int) else None,
        as_served=home.get("history_excluded") is True
        and CHOSEN_ON_VALIDATION in str(home.get("fusion_source", "")),
        source=name,
    )


def row_label(r: Retrieval) -> str:
    return r.model if r.split == "test" else f"{r.model} [{r.split}]"
