"""`sidrec report`: every results file as one markdown page with PNG plots.

    python -m eval.report [--results results] [--out report]

Reads each JSON file under the results folder (semantic IDs, baselines, the generative model,
per-canvas soft prompts, serving grids and load tests) and writes ``README.md``, the plots and a
``manifest.json`` naming the sha256 of every file read. A file it cannot interpret is listed in
the report and skipped, never fatal. The folder is written through ``sidrec.artifacts.atomic_dir``,
so a failed build leaves an earlier report as it was, and it is deterministic: files are read in
sorted order and the PNGs carry neither a date nor a library version. Needs matplotlib
(``pip install 'sidrec[report]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.anchors import PROTOCOL, published
from sidrec.artifacts import SCHEMA_VERSION, atomic_dir, file_sha256, package_version, read_json, \
    write_json

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
PLOTTED = ("recall@10", "ndcg@10")
GROUP_COLORS = {"ours": "#1f77b4", "baseline": "#8c8c8c", "published": "#ff7f0e"}
# Per-canvas variants in plotting order; other entries that carry metrics are plotted after them,
# entries without metrics (the canvas's "data", "config") are not variants.
VARIANTS = {"adapter": "soft prompt (adapter)", "base": "frozen base",
            "base_home_prompt": "frozen base, home prompt", "full_finetune": "full fine-tune"}
CANVAS_EXTRAS = ("trainable_parameters", "train_seconds")


class ReportError(RuntimeError):
    """The results folder cannot make a report (missing, no JSON) or the output folder is unsafe."""


# --------------------------------------------------------------------------- what the files hold


@dataclass(frozen=True)
class Retrieval:
    dataset: str
    group: str  # "ours" | "baseline" | "published"
    model: str
    split: str
    metrics: dict[str, float | None]
    params: float | None
    source: str  # a results file, or the publication


@dataclass(frozen=True)
class IDStats:
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
    backend: str  # backend and decoding, e.g. "vllm (trie)"
    beams: int
    batch: int
    p50_s: float
    p99_s: float | None
    recs_per_s: float | None


@dataclass(frozen=True)
class ServingGrid:
    label: str
    machine: str
    points: tuple[Latency, ...]
    source: str


# Load-test columns: results key -> (table header, number format).
LOAD_COLUMNS = {"clients": ("clients", ".0f"), "seconds": ("seconds", ".0f"),
                "requests": ("requests", ",.0f"), "error_count": ("errors", ".0f"),
                "throughput_rps": ("req/s", ".2f"), "p50_s": ("p50 s", ".4f"),
                "p99_s": ("p99 s", ".4f"),
                "rss_growth_second_half_mib": ("RSS growth, 2nd half (MiB)", ".0f")}


@dataclass(frozen=True)
class LoadTest:
    backend: str
    figures: dict[str, float | None]  # LOAD_COLUMNS keys
    source: str


@dataclass(frozen=True)
class CanvasRow:
    canvas: str
    variant: str
    metrics: dict[str, float | None]  # METRICS present + trainable_parameters, train_seconds


@dataclass(frozen=True)
class CanvasResults:
    dataset: str
    label: str
    rows: tuple[CanvasRow, ...]
    source: str


@dataclass(frozen=True)
class RefreshResult:
    dataset: str
    recall: dict[str, dict[str, float | None]]  # group (new_titles/old_titles) -> variant -> R@K
    members: dict[str, int]
    k: int
    source: str


@dataclass
class Results:
    retrieval: list[Retrieval] = field(default_factory=list)
    ids: list[IDStats] = field(default_factory=list)
    grids: list[ServingGrid] = field(default_factory=list)
    loads: list[LoadTest] = field(default_factory=list)
    canvases: list[CanvasResults] = field(default_factory=list)
    refreshes: list[RefreshResult] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # shown name -> sha256
    skipped: dict[str, str] = field(default_factory=dict)  # shown name -> why


def _num(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is not a finite number: {value!r}")
    return float(value)


def _metrics(d: dict[str, Any], keys: tuple[str, ...] = METRICS) -> dict[str, float | None]:
    out = {k: _num(d.get(k), k) for k in keys}
    if all(v is None for v in out.values()):
        raise ValueError(f"no figures among {', '.join(keys)}")
    return out


def _tag(stem: str, dataset: str) -> str:
    return stem[len(dataset):].strip("-_") if stem.startswith(dataset) else stem


def _parse_baseline(d: dict, name: str, stem: str, res: Results) -> None:
    split = (d.get("eval_config") or {}).get("split", "test")
    m = d["metrics"]
    m = m[split] if isinstance(m.get(split), dict) else m
    res.retrieval.append(Retrieval(str(d["dataset"]), "baseline", str(d.get("baseline", stem)),
                                   str(split), _metrics(m), _num(d.get("params"), "params"), name))


def _parse_gen_fm(d: dict, name: str, stem: str, res: Results) -> None:
    dataset = str(d["dataset"])
    tag = _tag(stem, dataset)
    res.retrieval.append(Retrieval(dataset, "ours", f"gen-fm ({tag})" if tag else "gen-fm",
                                   str(d.get("split", "test")), _metrics(d),
                                   _num(d.get("parameters"), "parameters"), name))


def _parse_ids(d: dict, name: str, stem: str, res: Results) -> None:
    stats, config = d["stats"], d.get("config") or {}
    util, perp = stats.get("codebook_utilization"), stats.get("perplexity")
    if util is None or perp is None:  # older files: per-level records only
        util = [lv["codebook_utilization"] for lv in stats["levels"]]
        perp = [lv["perplexity"] for lv in stats["levels"]]
    res.ids.append(IDStats(
        stem, str(d["dataset"]), str(config.get("quantizer", "?")),
        _num(stats.get("num_items"), "num_items"), _num(stats.get("collision_rate"), "collision"),
        _num(stats.get("max_collision_group"), "max_collision_group"),
        config.get("codebook_size"), tuple(_num(u, "utilization") for u in util),
        tuple(_num(p, "perplexity") for p in perp), name))


def _machine(d: dict) -> str:
    m = d.get("machine") or {}
    cpus = m.get("usable_cpus", m.get("cpu_count", "?"))
    gpu = m.get("cuda") or "no GPU"
    return f"{m.get('processor', '?')}, {cpus} CPUs, {gpu}, torch {m.get('torch', '?')}"


def _parse_serving(d: dict, name: str, stem: str, res: Results) -> None:
    points = []
    for row in d["figures"]:
        decoding = "trie" if row.get("constrained", True) else "built-in, no trie"
        points.append(Latency(f"{row['backend']} ({decoding})", int(row["beams"]),
                              int(row["batch"]), _num(row["p50_s"], "p50_s"),
                              _num(row.get("p99_s"), "p99_s"),
                              _num(row.get("recs_per_s"), "recs_per_s")))
    if not points:
        raise ValueError("no figures in the serving grid")
    res.grids.append(ServingGrid(stem, _machine(d), tuple(points), name))


def _parse_load(d: dict, name: str, stem: str, res: Results) -> None:
    _num(d["throughput_rps"], "throughput_rps")  # the one figure a load test must have
    res.loads.append(LoadTest(str(d.get("backend", "?")),
                              {k: _num(d.get(k), k) for k in LOAD_COLUMNS}, name))


def _parse_canvases(d: dict, name: str, stem: str, res: Results) -> None:
    rows = []
    for canvas, entries in d["canvases"].items():
        variants = {k: v for k, v in entries.items() if isinstance(v, dict)
                    and any(str(m).startswith(("recall@", "ndcg@")) for m in v)}
        order = [v for v in VARIANTS if v in variants] + [v for v in variants if v not in VARIANTS]
        for v in order:
            extra = {k: _num(variants[v].get(k), k) for k in CANVAS_EXTRAS}
            rows.append(CanvasRow(str(canvas), v, {**_metrics(variants[v]), **extra}))
    if not rows:
        raise ValueError("no canvases")
    res.canvases.append(CanvasResults(str(d["dataset"]), stem, tuple(rows), name))


def _parse_refresh(d: dict, name: str, stem: str, res: Results) -> None:
    k = int(d["k"])
    recall = {g: {v: _num(x, f"{g}/{v}") for v, x in variants.items()}
              for g, variants in d[f"recall@{k}"].items()}
    res.refreshes.append(RefreshResult(str(d["dataset"]), recall,
                                       {g: int(n) for g, n in d["members"].items()}, k, name))


PARSERS: dict[str, Callable[[dict, str, str, Results], None]] = {
    "baseline": _parse_baseline, "gen_fm": _parse_gen_fm, "semantic_ids": _parse_ids,
    "serving": _parse_serving, "serving_load": _parse_load, "prompt_tuning": _parse_canvases,
    "refresh": _parse_refresh,
}
REFRESH_VARIANTS = {"before": "before (old model, old IDs)", "old_model_new_trie": "old model + new IDs",
                    "after": "after the fine-tune"}


def load_results(results_dir: str | Path, exclude: str | Path | None = None) -> Results:
    """Every JSON file under ``results_dir`` (sorted), interpreted or listed as skipped.

    Hidden folders and ``exclude`` (a report written inside the results folder) are not read.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ReportError(f"results folder {root} does not exist or is not a folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    files = sorted(p for p in root.rglob("*.json") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])
                   and (skip is None or skip not in p.resolve().parents))
    if not files:
        raise ReportError(f"results folder {root} holds no JSON results files; run the "
                          f"benchmarks first (sidrec eval / baseline, python -m eval.bench_*)")
    res = Results()
    for path in files:
        name = f"{root.resolve().name}/{path.relative_to(root).as_posix()}"
        try:
            res.hashes[name] = file_sha256(path)
            d = read_json(path)
            if not isinstance(d, dict):
                raise ValueError("the top level is not a JSON object")
            kind = d.get("benchmark") or d.get("kind")
            if kind not in PARSERS:
                raise ValueError(f"unknown results kind {kind!r} (no 'benchmark' or 'kind' key "
                                 f"this report knows)")
            PARSERS[kind](d, name, path.stem, res)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            why = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            res.skipped[name] = f"{type(e).__name__}: {why}".replace("\n", " ")[:300]
    return res


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    # No "Software" text chunk: the PNG bytes depend only on the figures, not on the version.
    fig.savefig(path, dpi=110, metadata={"Software": None})


def plot_retrieval(dataset: str, rows: list[Retrieval], path: Path) -> None:
    """Recall@10 and NDCG@10 of our model, our baselines and the published rows, one bar each."""
    from matplotlib.patches import Patch

    fig = _figure(11, 1.4 + 0.42 * len(rows))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric in zip(axes, PLOTTED):
        top = max([r.metrics.get(metric) or 0.0 for r in rows] + [1e-9])
        for i, r in enumerate(rows):
            v = r.metrics.get(metric)
            if v is None:
                ax.text(0, i, " not reported", va="center", fontsize=8, color="gray")
                continue
            ax.barh(i, v, color=GROUP_COLORS.get(r.group, "#333333"), edgecolor="white",
                    hatch="//" if r.group == "published" else None)
            ax.text(v, i, f" {v:.4f}", va="center", fontsize=8)
        ax.set_xlim(0, top * 1.28)
        ax.set_title(metric)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), [_row_label(r) for r in rows])
    axes[0].invert_yaxis()
    groups = [g for g in GROUP_COLORS if any(r.group == g for r in rows)]
    fig.legend(handles=[Patch(color=GROUP_COLORS[g], label=g) for g in groups],
               loc="outside lower center", ncol=len(groups), fontsize=8)
    fig.suptitle(f"{dataset}: next-title retrieval, full-catalog ranking")
    _save(fig, path)


def plot_codebooks(rows: list[IDStats], path: Path) -> None:
    """Codebook utilization and perplexity per level, one bar series per ID build."""
    fig = _figure(11, 4.6)
    axes = fig.subplots(1, 2)
    width = 0.8 / len(rows)
    for j, r in enumerate(rows):
        offset = (j - (len(rows) - 1) / 2) * width
        for ax, values in zip(axes, ([100 * u for u in r.utilization], r.perplexity)):
            ax.bar([lv + offset for lv in range(len(values))], values, width, label=r.label,
                   color=f"C{j % 10}")
    levels = max(len(r.perplexity) for r in rows)
    sizes = {r.codebook_size for r in rows if isinstance(r.codebook_size, int)}
    if len(sizes) == 1:
        axes[1].axhline(sizes.pop(), color="black", ls="--", lw=1, label="codebook size")
    for ax, title in zip(axes, ("codes used (% of codebook)", "perplexity of code usage")):
        ax.set_xticks(range(levels), [f"level {lv}" for lv in range(levels)])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 105)
    fig.legend(*axes[1].get_legend_handles_labels(), loc="outside lower center", ncol=5,
               fontsize=8)
    fig.suptitle("semantic IDs: codebook usage per level")
    _save(fig, path)


def plot_latency(grid: ServingGrid, path: Path) -> None:
    """p50 batch latency against beam width and against batch size, per backend."""
    from matplotlib.lines import Line2D

    fig = _figure(11, 4.8)
    axes = fig.subplots(1, 2)
    backends = list(dict.fromkeys(p.backend for p in grid.points))
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v"]
    for ax, (xkey, other) in zip(axes, (("beams", "batch"), ("batch", "beams"))):
        others = sorted({getattr(p, other) for p in grid.points})
        for b, backend in enumerate(backends):
            for o, value in enumerate(others):
                pts = sorted((getattr(p, xkey), p.p50_s) for p in grid.points
                             if p.backend == backend and getattr(p, other) == value)
                if pts:
                    ax.plot(*zip(*pts), color=f"C{b % 10}", ls=styles[o % 4],
                            marker=markers[o % 5])
        xs = sorted({getattr(p, xkey) for p in grid.points})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("beam width" if xkey == "beams" else "batch size (requests)")
        ax.set_ylabel("p50 batch latency (s)")
        ax.grid(alpha=0.3, which="both")
        handles = [Line2D([], [], color=f"C{b % 10}", label=n) for b, n in enumerate(backends)]
        handles += [Line2D([], [], color="black", ls=styles[o % 4], marker=markers[o % 5],
                           label=f"{other} {v}") for o, v in enumerate(others)]
        ax.legend(handles=handles, fontsize=7)
    fig.suptitle(f"serving latency ({grid.label}; {grid.machine})", fontsize=10)
    _save(fig, path)


def plot_canvases(result: CanvasResults, path: Path) -> None:
    """Per canvas: the soft prompt against the frozen base model and a full fine-tune."""
    canvases = list(dict.fromkeys(r.canvas for r in result.rows))
    variants = list(dict.fromkeys(r.variant for r in result.rows))
    fig = _figure(max(8.0, 1.6 * len(canvases) + 4), 4.6)
    axes = fig.subplots(1, 2)
    width = 0.8 / len(variants)
    for ax, metric in zip(axes, PLOTTED):
        for j, v in enumerate(variants):
            pts = [(c, r.metrics.get(metric)) for c, canvas in enumerate(canvases)
                   for r in result.rows if r.canvas == canvas and r.variant == v]
            pts = [(c + (j - (len(variants) - 1) / 2) * width, y) for c, y in pts if y is not None]
            if pts:
                ax.bar(*zip(*pts), width, label=VARIANTS.get(v, v), color=f"C{j % 10}")
        ax.set_xticks(range(len(canvases)), canvases)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncol=len(variants), fontsize=8)
    tag = "" if result.label == result.dataset else f" ({result.label})"
    fig.suptitle(f"{result.dataset}: per-canvas soft prompts{tag}")
    _save(fig, path)


# --------------------------------------------------------------------------- markdown


def _row_label(r: Retrieval) -> str:
    return r.model if r.split == "test" else f"{r.model} [{r.split}]"


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and spec:
        return format(v, spec)
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *["| " + " | ".join(cell(v) for v in row) + " |" for row in rows], ""]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _retrieval_rows(res: Results) -> dict[str, list[Retrieval]]:
    by_dataset: dict[str, list[Retrieval]] = {}
    order = {"ours": 0, "baseline": 1}
    for r in sorted(res.retrieval, key=lambda r: (order[r.group], r.model, r.source)):
        by_dataset.setdefault(r.dataset, []).append(r)
    for dataset, rows in by_dataset.items():
        rows += [Retrieval(dataset, "published", model, "test",
                           {k: row.get(k) for k in METRICS}, None, row["source"])
                 for model, row in published(dataset).items()]
    return dict(sorted(by_dataset.items()))


def _section_retrieval(res: Results, out: Path) -> list[str]:
    md = ["## Next-title retrieval", "",
          f"Protocol of every row: {PROTOCOL}; a hit is the exact title. `ours` is the generative "
          "model (`results/gen_fm`), `baseline` our runs of the baselines on the same split "
          "(`results/baselines`), `published` the numbers in `eval/anchors.py` (amazon-beauty "
          "only), each with its source.", ""]
    by_dataset = _retrieval_rows(res)
    if not by_dataset:
        return md + ["No retrieval results (`gen_fm` or `baseline` files) were found.", ""]
    for dataset, rows in by_dataset.items():
        png = f"retrieval-{_slug(dataset)}.png"
        plot_retrieval(dataset, rows, out / png)
        md += [f"### {dataset}", "", f"![{dataset}: recall@10 and ndcg@10]({png})", ""]
        md += _table(["group", "model", "split", *METRICS, "params", "source"],
                     [[r.group, r.model, r.split, *(_fmt(r.metrics.get(k)) for k in METRICS),
                       _fmt(r.params, ",.0f"), f"`{r.source}`" if r.group != "published"
                       else r.source] for r in rows])
    return md


def _section_canvases(res: Results, out: Path) -> list[str]:
    md = ["## Per-canvas soft prompts", ""]
    if not res.canvases:
        return md + ["No per-canvas results yet (`results/prompt_tuning/<dataset>.json`).", ""]
    for c in sorted(res.canvases, key=lambda c: (c.dataset, c.label)):
        png = f"canvases-{_slug(c.label)}.png"
        plot_canvases(c, out / png)
        keys = [k for k in METRICS if any(r.metrics.get(k) is not None for r in c.rows)]
        md += [f"### {c.dataset} (`{c.source}`)", "", f"![{c.dataset}: per-canvas metrics]({png})",
               ""]
        md += _table(["canvas", "variant", *keys, "trainable parameters", "train s"],
                     [[r.canvas, VARIANTS.get(r.variant, r.variant),
                       *(_fmt(r.metrics.get(k)) for k in keys),
                       _fmt(r.metrics.get("trainable_parameters"), ",.0f"),
                       _fmt(r.metrics.get("train_seconds"), ".1f")] for r in c.rows])
    return md


def _section_refresh(res: Results) -> list[str]:
    md = ["## Catalog refresh (new titles)", ""]
    if not res.refreshes:
        return md + ["No refresh results yet (`sidrec refresh --simulate ... --results FILE`).", ""]
    for r in sorted(res.refreshes, key=lambda r: (r.dataset, r.source)):
        variants = [v for v in REFRESH_VARIANTS if any(v in g for g in r.recall.values())]
        md += [f"### {r.dataset} (`{r.source}`), Recall@{r.k}", ""]
        md += _table(["test targets", "members", *(REFRESH_VARIANTS[v] for v in variants)],
                     [[g.replace("_", " "), r.members.get(g, "-"),
                       *(_fmt(r.recall[g].get(v)) for v in variants)] for g in sorted(r.recall)])
    return md


def _section_ids(res: Results, out: Path) -> list[str]:
    md = ["## Semantic IDs", ""]
    if not res.ids:
        return md + ["No semantic-ID results (`results/semantic_ids`) were found.", ""]
    rows = sorted(res.ids, key=lambda r: (r.dataset, r.quantizer, r.label))
    plot_codebooks(rows, out / "codebooks.png")
    md += ["![codebook utilization and perplexity per level](codebooks.png)", ""]
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    return md + _table(
        ["dataset", "quantizer", "titles", "collision rate", "largest group", "codebook size",
         "utilization per level", "perplexity per level", "source"],
        [[r.dataset, r.quantizer, _fmt(r.num_items, ",.0f"), pct(r.collision_rate),
          _fmt(r.max_group, ".0f"), _fmt(r.codebook_size),
          " / ".join(pct(u) for u in r.utilization),
          " / ".join(_fmt(p, ".0f") for p in r.perplexity), f"`{r.source}`"] for r in rows])


def _section_serving(res: Results, out: Path) -> list[str]:
    md = ["## Serving", ""]
    if not res.grids and not res.loads:
        return md + ["No serving results (`results/serving`) were found.", ""]
    for g in sorted(res.grids, key=lambda g: g.label):
        png = f"latency-{_slug(g.label)}.png"
        plot_latency(g, out / png)
        md += [f"### Speed grid `{g.source}`", "", f"Machine: {g.machine}.", "",
               f"![latency against beam width and batch size]({png})", ""]
        pts = sorted(g.points, key=lambda p: (p.backend, p.beams, p.batch))
        md += _table(["backend (decoding)", "beams", "batch", "p50 s", "p99 s", "recs/s"],
                     [[p.backend, p.beams, p.batch, _fmt(p.p50_s), _fmt(p.p99_s),
                       _fmt(p.recs_per_s, ".1f")] for p in pts])
    if res.loads:
        md += ["### Load tests", ""]
        md += _table(["source", "backend", *(h for h, _ in LOAD_COLUMNS.values())],
                     [[f"`{t.source}`", t.backend,
                       *(_fmt(t.figures[k], f) for k, (_, f) in LOAD_COLUMNS.items())]
                      for t in sorted(res.loads, key=lambda t: t.source)])
    return md


def _section_sources(res: Results) -> list[str]:
    md = ["## Results files read", ""]
    md += _table(["file", "sha256 (first 16)", "status"],
                 [[f"`{n}`", res.hashes.get(n, "–")[:16],
                   "skipped" if n in res.skipped else "used"]
                  for n in sorted({**res.hashes, **res.skipped})])
    if res.skipped:
        md += ["### Skipped files", "", "These files could not be interpreted and are left out:",
               "", *[f"- `{n}`: {why}" for n, why in res.skipped.items()], ""]
    return md


# --------------------------------------------------------------------------- build


def _check_out(out: Path, results: Path) -> None:
    """Refuse to replace a folder that is not an earlier report (atomic_dir replaces it whole)."""
    out, results = out.resolve(), results.resolve()
    if out == results or out in results.parents:
        raise ReportError(f"output folder {out} would replace the results folder {results}")
    if out.exists() and not out.is_dir():
        raise ReportError(f"output folder {out} exists and is a file")
    if out.exists() and any(out.iterdir()):
        try:
            kind = read_json(out / "manifest.json").get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != "report":
            raise ReportError(f"output folder {out} exists and is not an earlier sidrec report; "
                              f"refusing to replace it")


def build_report(results_dir: str | Path = "results", out_dir: str | Path = "report") -> Path:
    """Write ``out_dir/README.md``, plots and manifest from every results file; return the path."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - the report extra is missing
        raise ReportError("sidrec report needs matplotlib: pip install 'sidrec[report]'") from e
    _check_out(Path(out_dir), Path(results_dir))
    res = load_results(results_dir, exclude=out_dir)
    title = ["# sidrec results", "",
             f"Built by `sidrec report` from {len({**res.hashes, **res.skipped})} files under "
             f"`{Path(results_dir).resolve().name}/` ({len(res.skipped)} skipped). Every figure "
             "below comes from the results file named beside it; each file records the command, "
             "config, data fingerprint and machine that produced it. Rebuild with "
             "`sidrec report --results results --out report`.", ""]
    style = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
    with atomic_dir(out_dir) as stage, matplotlib.rc_context(style):
        md = [*title, *_section_retrieval(res, stage), *_section_canvases(res, stage),
              *_section_refresh(res), *_section_ids(res, stage), *_section_serving(res, stage), *_section_sources(res)]
        (stage / "README.md").write_text("\n".join(md).rstrip("\n") + "\n")
        write_json(stage / "manifest.json", {
            "kind": "report", "schema_version": SCHEMA_VERSION,
            "config": {"results_dir": Path(results_dir).resolve().name},
            "versions": {"sidrec": package_version(), "matplotlib": matplotlib.__version__},
            "parents": res.hashes, "skipped": res.skipped,
            "files": sorted(p.name for p in stage.iterdir()),
        })
    return Path(out_dir).resolve() / "README.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sidrec report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", metavar="DIR",
                    help="folder of JSON results files, read recursively (default: results)")
    ap.add_argument("--out", default="report", metavar="DIR",
                    help="report folder, replaced as a whole (default: report)")
    args = ap.parse_args(argv)
    try:
        path = build_report(args.results, args.out)
    except ReportError as e:
        print(f"sidrec report: error: {e}", file=sys.stderr)
        return 2
    skipped = json.loads((path.parent / "manifest.json").read_text()).get("skipped") or {}
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
