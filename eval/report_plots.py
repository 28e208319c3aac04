"""The report's PNG plots (matplotlib, Agg canvas: no display, no date or version in the files)."""

from __future__ import annotations

from pathlib import Path

from eval.report_headline import Headline
from eval.report_results import VARIANTS, CanvasResults, IDStats, Retrieval, ServingGrid, row_label

PLOTTED = ("recall@10", "ndcg@10")
GROUP_COLORS = {"ours": "#1f77b4", "baseline": "#8c8c8c", "published": "#ff7f0e"}
HEADLINE_COLORS = {
    "model": "#1f77b4",
    "beam": "#9ecae1",
    "title_head": "#9ecae1",
    "counts": "#2ca02c",
    "served": "#08306b",
    "sasrec": "#8c8c8c",
    "anchor": "#ff7f0e",
}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    # No "Software" text chunk: the PNG bytes depend only on the figures, not on the version.
    fig.savefig(path, dpi=110, metadata={"Software": None})


def plot_retrieval(head: Headline, path: Path) -> None:
    """The headline rows of one dataset, the served row among them: R@10 with one standard error
    either side where known, and N@10."""
    rows = head.rows
    fig = _figure(11, 1.5 + 0.42 * len(rows))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric in zip(axes, ("recall", "ndcg")):
        tops = [(getattr(r, metric) or 0.0) + (r.se or 0.0) * (metric == "recall") for r in rows]
        for i, r in enumerate(rows):
            v = getattr(r, metric)
            if v is None:
                ax.text(0, i, " not reported", va="center", fontsize=8, color="gray")
                continue
            se = r.se if metric == "recall" else None
            ax.barh(
                i,
                v,
                xerr=se,
                capsize=3 if se else 0,
                color=HEADLINE_COLORS.get(r.kind, "#333333"),
                edgecolor="white",
                hatch="//" if r.kind == "anchor" else None,
            )
            ax.text(v + (se or 0.0), i, f" {v:.4f}", va="center", fontsize=8)
        ax.set_xlim(0, max(tops + [1e-9]) * 1.3)
        ax.set_title(
            f"{metric}@10" + (" (bars: one standard error either side)" if metric == "recall" else "")
        )
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), [r.short for r in rows])
    axes[0].invert_yaxis()
    fig.suptitle(
        f"{head.dataset}: the home row and its parts (test split, history excluded; the anchor as published)"
    )
    _save(fig, path)


def plot_experiments(dataset: str, rows: list[Retrieval], path: Path) -> None:
    """Recall@10 and NDCG@10 of every run, our baselines and the published rows, one bar each."""
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
            ax.barh(
                i,
                v,
                color=GROUP_COLORS.get(r.group, "#333333"),
                edgecolor="white",
                hatch="//" if r.group == "published" else None,
            )
            ax.text(v, i, f" {v:.4f}", va="center", fontsize=8)
        ax.set_xlim(0, top * 1.28)
        ax.set_title(metric)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), [row_label(r) for r in rows])
    axes[0].invert_yaxis()
    groups = [g for g in GROUP_COLORS if any(r.group == g for r in rows)]
    fig.legend(
        handles=[Patch(color=GROUP_COLORS[g], label=g) for g in groups],
        loc="outside lower center",
        ncol=len(groups),
        fontsize=8,
    )
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
            ax.bar(
                [lv + offset for lv in range(len(values))], values, width, label=r.label, color=f"C{j % 10}"
            )
    levels = max(len(r.perplexity) for r in rows)
    sizes = {r.codebook_size for r in rows if isinstance(r.codebook_size, int)}
    if len(sizes) == 1:
        axes[1].axhline(sizes.pop(), color="black", ls="--", lw=1, label="codebook size")
    for ax, title in zip(axes, ("codes used (% of codebook)", "perplexity of code usage")):
        ax.set_xticks(range(levels), [f"level {lv}" for lv in range(levels)])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 105)
    fig.legend(*axes[1].get_legend_handles_labels(), loc="outside lower center", ncol=5, fontsize=8)
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
                pts = sorted(
                    (getattr(p, xkey), p.p50_s)
                    for p in grid.points
                    if p.backend == backend and getattr(p, other) == value
                )
                if pts:
                    ax.plot(*zip(*pts), color=f"C{b % 10}", ls=styles[o % 4], marker=markers[o % 5])
        xs = sorted({getattr(p, xkey) for p in grid.points})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("beam width" if xkey == "beams" else "batch size (requests)")
        ax.set_ylabel("p50 batch latency (s)")
        ax.grid(alpha=0.3, which="both")
        handles = [Line2D([], [], color=f"C{b % 10}", label=n) for b, n in enumerate(backends)]
        handles += [
            Line2D([], [], color="black", ls=styles[o % 4], marker=markers[o % 5], label=f"{other} {v}")
            for o, v in enumerate(others)
        ]
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
            pts = [
                (c, r.metrics.get(metric))
                for c, canvas in enumerate(canvases)
                for r in result.rows
                if r.canvas == canvas and r.variant == v
            ]
            pts = [(c + (j - (len(variants) - 1) / 2) * width, y) for c, y in pts if y is not None]
            if pts:
                ax.bar(*zip(*pts), width, label=VARIANTS.get(v, v), color=f"C{j % 10}")
        ax.set_xticks(range(len(canvases)), canvases)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=len(variants), fontsize=8
    )
    tag = "" if result.label == result.dataset else f" ({result.label})"
    fig.suptitle(f"{result.dataset}: per-canvas soft prompts{tag}")
    _save(fig, path)
