"""`sidrec report`: every results file as one markdown page with PNG plots.

    sidrec report [--results results] [--out report]

Reads each JSON file under the results folder (semantic IDs, baselines, the generative model,
per-canvas soft prompts, serving grids and load tests) and writes ``README.md``, the plots and a
``manifest.json`` naming the sha256 of every file read. The page opens with each dataset's headline
(``eval.report_headline``: the served home row and its parts, our best SASRec, the anchor), then
every run. A file it cannot interpret is listed in the report and skipped, never fatal. The folder
is written through ``core.artifacts.atomic_dir``, so a failed build leaves an earlier report as it
was, and it is deterministic: files are read in sorted order and the PNGs carry neither a date nor
a library version. Needs matplotlib (``pip install 'sidrec[report]'``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from eval.published import PROTOCOL, published
from eval.report_headline import ANCHOR, HEADLINE_RULE, K, RECALL, SASREC_RULE, Headline, headline
from eval.report_plots import plot_canvases, plot_codebooks, plot_experiments, plot_latency, plot_retrieval
from eval.report_parsers import load_results
from eval.report_results import (
    LOAD_COLUMNS,
    METRICS,
    REFRESH_VARIANTS,
    VARIANTS,
    ReportError,
    Results,
    Retrieval,
)
from core.artifacts import SCHEMA_VERSION, atomic_dir, package_version, read_json, write_json

__all__ = ["ReportError", "build_report", "load_results"]


# --------------------------------------------------------------------------- markdown


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and spec:
        return format(v, spec)
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *["| " + " | ".join(cell(v) for v in row) + " |" for row in rows],
        "",
    ]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _retrieval_rows(res: Results) -> dict[str, list[Retrieval]]:
    by_dataset: dict[str, list[Retrieval]] = {}
    order = {"ours": 0, "baseline": 1}
    for r in sorted(res.retrieval, key=lambda r: (order[r.group], r.model, r.source)):
        by_dataset.setdefault(r.dataset, []).append(r)
    for dataset, rows in by_dataset.items():
        rows += [
            Retrieval(
                dataset, "published", model, "test", {k: row.get(k) for k in METRICS}, None, row["source"]
            )
            for model, row in published(dataset).items()
        ]
    return dict(sorted(by_dataset.items()))


def _headlines(res: Results) -> dict[str, Headline]:
    datasets = sorted({r.dataset for r in res.retrieval} | {h.dataset for h in res.home_rows})
    heads = {d: headline(res.home_rows, res.retrieval, d) for d in datasets}
    return {d: h for d, h in heads.items() if h.rows}


def _headline_table(head: Headline) -> list[str]:
    md = _table(
        ["row", f"R@{K}", "1 SE", f"N@{K}", "results file"],
        [
            [
                r.label,
                _fmt(r.recall),
                _fmt(r.se) + ("*" if r.se_computed and r.se is not None else ""),
                _fmt(r.ndcg),
                f"`{r.source}` `{r.key}`" if r.key else r.source,
            ]
            for r in head.rows
        ],
    )
    if not any(r.kind == "anchor" for r in head.rows):
        md += [f"No published anchor for {head.dataset} under this protocol (`eval/published.py`).", ""]
    return md


def _section_headline(heads: dict[str, Headline], out: Path) -> list[str]:
    md = [
        "## Headline: the home row and its parts",
        "",
        f"Test split; {PROTOCOL}. Every row but the published anchor leaves the member's history "
        'out, as served. "The model alone" is its own ranking, "the counts alone" the titles most '
        "co-engaged with the member's newest titles (the model folder's table), and \"served\" "
        "fuses the two by reciprocal rank, as `sidrec serve` does. 1 SE: one standard error of "
        f"R@{K} (`*`: the file records none, so it is sqrt(p (1 - p) / n) over the file's members, "
        "the formula `sidrec eval` uses).",
        "",
        f"How the rows are chosen. The model, counts and served rows come from one file: {HEADLINE_RULE}. "
        f"Our best SASRec: {SASREC_RULE}. The anchor: {ANCHOR} as published (`eval/published.py`). "
        "Every run is in the experiments table below.",
        "",
    ]
    if not heads:
        return md + ["No headline rows: no `gen_fm` file records a home row and no baseline was found.", ""]
    for dataset, head in heads.items():
        png = f"retrieval-{_slug(dataset)}.png"
        plot_retrieval(head, out / png)
        md += [f"### {dataset}", ""]
        if head.chosen is None:
            md += ["No `sidrec eval` file here records a home row scored as served.", ""]
        else:
            n, h = head.candidates, head.chosen
            members = f" ({h.members:,} members)" if h.members else ""
            pick = (
                f"the rule's pick among {n} files; picking on the test split flatters it by up to "
                "about one standard error"
                if n > 1
                else "the one file the rule admits"
            )
            md += [f"Headline file: `{h.source}`{members}, {pick}.", ""]
        md += [f"![{dataset}: the home row and its parts]({png})", "", *_headline_table(head)]
    return md


def _section_retrieval(res: Results, heads: dict[str, Headline], out: Path) -> list[str]:
    md = [
        "## Experiments: next-title retrieval of every run",
        "",
        f"Protocol of every row: {PROTOCOL}; a hit is the exact title; the history is not "
        "excluded here (TIGER's protocol), so these figures sit below the headline's. `ours` is "
        "the generative model's beam (`results/gen_fm`), with the served home row from the same "
        "file where it records one; `baseline` our runs of the baselines on the same split "
        "(`results/baselines`), `published` the numbers in `eval/published.py` (amazon-beauty "
        "only), each with its source.",
        "",
    ]
    by_dataset = _retrieval_rows(res)
    if not by_dataset:
        return md + ["No retrieval results (`gen_fm` or `baseline` files) were found.", ""]
    served = {h.source: h.parts["served"][RECALL] for h in res.home_rows}
    chosen = {h.chosen.source for h in heads.values() if h.chosen is not None}
    for dataset, rows in by_dataset.items():
        png = f"experiments-{_slug(dataset)}.png"
        plot_experiments(dataset, rows, out / png)
        md += [f"### {dataset}", "", f"![{dataset}: recall@10 and ndcg@10 of every run]({png})", ""]
        md += _table(
            ["group", "model", "split", *METRICS, f"served R@{K}", "params", "source"],
            [
                [
                    r.group,
                    r.model + (" (headline)" if r.source in chosen else ""),
                    r.split,
                    *(_fmt(r.metrics.get(k)) for k in METRICS),
                    _fmt(served.get(r.source)),
                    _fmt(r.params, ",.0f"),
                    f"`{r.source}`" if r.group != "published" else r.source,
                ]
                for r in rows
            ],
        )
    return md


def _section_canvases(res: Results, out: Path) -> list[str]:
    md = ["## Per-canvas soft prompts", ""]
    if not res.canvases:
        return md + ["No per-canvas results yet (`results/prompt_tuning/<dataset>.json`).", ""]
    for c in sorted(res.canvases, key=lambda c: (c.dataset, c.label)):
        png = f"canvases-{_slug(c.label)}.png"
        plot_canvases(c, out / png)
        keys = [k for k in METRICS if any(r.metrics.get(k) is not None for r in c.rows)]
        md += [f"### {c.dataset} (`{c.source}`)", "", f"![{c.dataset}: per-canvas metrics]({png})", ""]
        md += _table(
            ["canvas", "variant", *keys, "trainable parameters", "train s"],
            [
                [
                    r.canvas,
                    VARIANTS.get(r.variant, r.variant),
                    *(_fmt(r.metrics.get(k)) for k in keys),
                    _fmt(r.metrics.get("trainable_parameters"), ",.0f"),
                    _fmt(r.metrics.get("train_seconds"), ".1f"),
                ]
                for r in c.rows
            ],
        )
    return md


def _section_refresh(res: Results) -> list[str]:
    md = ["## Catalog refresh (new titles)", ""]
    if not res.refreshes:
        return md + ["No refresh results yet (`sidrec refresh --simulate ... --results FILE`).", ""]
    for r in sorted(res.refreshes, key=lambda r: (r.dataset, r.source)):
        variants = [v for v in REFRESH_VARIANTS if any(v in g for g in r.recall.values())]
        md += [f"### {r.dataset} (`{r.source}`), Recall@{r.k}", ""]
        md += _table(
            ["test targets", "members", *(REFRESH_VARIANTS[v] for v in variants)],
            [
                [g.replace("_", " "), r.members.get(g, "-"), *(_fmt(r.recall[g].get(v)) for v in variants)]
                for g in sorted(r.recall)
            ],
        )
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
        [
            "dataset",
            "quantizer",
            "titles",
            "collision rate",
            "largest group",
            "codebook size",
            "utilization per level",
            "perplexity per level",
            "source",
        ],
        [
            [
                r.dataset,
                r.quantizer,
                _fmt(r.num_items, ",.0f"),
                pct(r.collision_rate),
                _fmt(r.max_group, ".0f"),
                _fmt(r.codebook_size),
                " / ".join(pct(u) for u in r.utilization),
                " / ".join(_fmt(p, ".0f") for p in r.perplexity),
                f"`{r.source}`",
            ]
            for r in rows
        ],
    )


def _section_serving(res: Results, out: Path) -> list[str]:
    md = ["## Serving", ""]
    if not res.grids and not res.loads and not res.host_times:
        return md + ["No serving results (`results/serving`) were found.", ""]
    for g in sorted(res.grids, key=lambda g: g.label):
        png = f"latency-{_slug(g.label)}.png"
        plot_latency(g, out / png)
        md += [
            f"### Speed grid `{g.source}`",
            "",
            f"Machine: {g.machine}.",
            "",
            f"![latency against beam width and batch size]({png})",
            "",
        ]
        pts = sorted(g.points, key=lambda p: (p.backend, p.beams, p.batch))
        md += _table(
            ["backend (decoding)", "beams", "batch", "p50 s", "p99 s", "recs/s"],
            [
                [p.backend, p.beams, p.batch, _fmt(p.p50_s), _fmt(p.p99_s), _fmt(p.recs_per_s, ".1f")]
                for p in pts
            ],
        )
    if res.host_times:
        md += ["### Training host time per batch", ""]
        md += _table(
            [
                "source",
                "dataset",
                "batch",
                "collated per batch (ms)",
                "per-epoch tensors (ms)",
                "augmented, re-cut each epoch (ms)",
            ],
            [
                [
                    f"`{h.source}`",
                    h.dataset,
                    h.batch_size,
                    _fmt(h.collator_ms, ".2f"),
                    _fmt(h.tensor_ms, ".2f"),
                    _fmt(h.augmented_ms, ".2f"),
                ]
                for h in sorted(res.host_times, key=lambda h: h.source)
            ],
        )
    if res.loads:
        md += ["### Load tests", ""]
        md += _table(
            ["source", "backend", *(h for h, _ in LOAD_COLUMNS.values())],
            [
                [f"`{t.source}`", t.backend, *(_fmt(t.figures[k], f) for k, (_, f) in LOAD_COLUMNS.items())]
                for t in sorted(res.loads, key=lambda t: t.source)
            ],
        )
    return md


def _section_figures(res: Results) -> list[str]:
    md: list[str] = []
    titles = {
        "batch_vs_server": "## Batch lists against the server",
        "embeddings": "## Embedding probes",
        "embeddings_export": "## Embedding export",
        "batch_lists": "## Batch lists (full runs)",
        "new_title_pool": "## Members a rolling new-title evaluation can pool",
        "unseen_titles": "## Unseen titles (TIGER's protocol): test recall of each way, cold / warm / all",
        "catalog_update": "## Catalog updates",
        "quickstart": "## The main job: the README's quickstart, timed (test at its beam 10, history excluded)",
        "paired_comparison": "## Paired comparisons: two rankings of the same members (`sidrec compare`)",
    }
    for kind, title in titles.items():
        rows = sorted((f for f in res.figures if f.kind == kind), key=lambda f: f.source)
        if rows:
            md += [title, ""]
            for f in rows:
                md += [f"### {f.dataset} (`{f.source}`)", ""]
                fmt = ".4f" if kind == "paired_comparison" else ".3f"  # differences of a few thousandths
                md += _table(["figure", "value"], [[k, _fmt(v, fmt)] for k, v in f.figures.items()])
    return md


def _section_sources(res: Results) -> list[str]:
    md = ["## Results files read", ""]
    md += _table(
        ["file", "sha256 (first 16)", "status"],
        [
            [f"`{n}`", res.hashes.get(n, "–")[:16], "skipped" if n in res.skipped else "used"]
            for n in sorted({**res.hashes, **res.skipped})
        ],
    )
    if res.skipped:
        md += [
            "### Skipped files",
            "",
            "These files could not be interpreted and are left out:",
            "",
            *[f"- `{n}`: {why}" for n, why in res.skipped.items()],
            "",
        ]
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
            raise ReportError(
                f"output folder {out} exists and is not an earlier sidrec report; refusing to replace it"
            )


def build_report(results_dir: str | Path = "results", out_dir: str | Path = "report") -> Path:
    """Write ``out_dir/README.md``, plots and manifest from every results file; return the path."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - the report extra is missing
        raise ReportError("sidrec report needs matplotlib: pip install 'sidrec[report]'") from e
    _check_out(Path(out_dir), Path(results_dir))
    res = load_results(results_dir, exclude=out_dir)
    title = [
        "# sidrec results",
        "",
        f"Built by `sidrec report` from {len({**res.hashes, **res.skipped})} files under "
        f"`{Path(results_dir).resolve().name}/` ({len(res.skipped)} skipped). Every figure "
        "below comes from the results file named beside it; each file records the command, "
        "config, data fingerprint and machine that produced it. Rebuild with "
        "`sidrec report --results results --out report`.",
        "",
    ]
    style = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
    with atomic_dir(out_dir) as stage, matplotlib.rc_context(style):
        heads = _headlines(res)
        md = [
            *title,
            *_section_headline(heads, stage),
            *_section_retrieval(res, heads, stage),
            *_section_canvases(res, stage),
            *_section_refresh(res),
            *_section_ids(res, stage),
            *_section_serving(res, stage),
            *_section_figures(res),
            *_section_sources(res),
        ]
        (stage / "README.md").write_text("\n".join(md).rstrip("\n") + "\n")
        write_json(
            stage / "manifest.json",
            {
                "kind": "report",
                "schema_version": SCHEMA_VERSION,
                "config": {"results_dir": Path(results_dir).resolve().name},
                "versions": {"sidrec": package_version(), "matplotlib": matplotlib.__version__},
                "parents": res.hashes,
                "skipped": res.skipped,
                "files": sorted(p.name for p in stage.iterdir()),
            },
        )
    return Path(out_dir).resolve() / "README.md"
