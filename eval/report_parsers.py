"""Reading the results folder: ``load_results`` interprets every JSON file that ``sidrec report``
reads with the parser of its kind (``PARSERS``, one per benchmark) into ``eval.report_results``'s
records; a file it cannot interpret is recorded as skipped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.artifacts import file_sha256, read_json
from eval.member_ranks import side_label
from eval.report_results import (
    CANVAS_EXTRAS,
    LOAD_COLUMNS,
    VARIANTS,
    CanvasResults,
    CanvasRow,
    Figures,
    HostTime,
    IDStats,
    Latency,
    LoadTest,
    RefreshResult,
    ReportError,
    Results,
    Retrieval,
    ServingGrid,
    finite,
    metric_values,
    parse_home_row,
)


def _tag(stem: str, dataset: str) -> str:
    return stem[len(dataset) :].strip("-_") if stem.startswith(dataset) else stem


def _parse_baseline(d: dict, name: str, stem: str, res: Results) -> None:
    split = (d.get("eval_config") or {}).get("split", "test")
    m = d["metrics"]
    m = m[split] if isinstance(m.get(split), dict) else m
    excluded = d.get("history_excluded")
    if isinstance(excluded, dict) and isinstance(excluded.get(split), dict):
        excluded = excluded[split]
    members = (d.get("num_users") or {}).get(split) if isinstance(d.get("num_users"), dict) else None
    res.retrieval.append(
        Retrieval(
            str(d["dataset"]),
            "baseline",
            str(d.get("baseline", stem)),
            str(split),
            metric_values(m),
            finite(d.get("params"), "params"),
            name,
            metric_values(excluded) if isinstance(excluded, dict) else None,
            int(members) if isinstance(members, int) else None,
        )
    )


def _parse_gen_fm(d: dict, name: str, stem: str, res: Results) -> None:
    dataset = str(d["dataset"])
    tag = _tag(stem, dataset)
    home = parse_home_row(d, name)  # first: a file whose home row cannot be read adds no row
    res.retrieval.append(
        Retrieval(
            dataset,
            "ours",
            f"gen-fm ({tag})" if tag else "gen-fm",
            str(d.get("split", "test")),
            metric_values(d),
            finite(d.get("parameters"), "parameters"),
            name,
        )
    )
    if home is not None:
        res.home_rows.append(home)


def _parse_ids(d: dict, name: str, stem: str, res: Results) -> None:
    stats, config = d["stats"], d.get("config") or {}
    config = config.get("codes") or config  # SemanticIDConfig, grouped (codes.quantizer) or flat (older)
    util, perp = stats.get("codebook_utilization"), stats.get("perplexity")
    if util is None or perp is None:  # older files: per-level records only
        util = [lv["codebook_utilization"] for lv in stats["levels"]]
        perp = [lv["perplexity"] for lv in stats["levels"]]
    res.ids.append(
        IDStats(
            stem,
            str(d["dataset"]),
            str(config.get("quantizer", "?")),
            finite(stats.get("num_items"), "num_items"),
            finite(stats.get("collision_rate"), "collision"),
            finite(stats.get("max_collision_group"), "max_collision_group"),
            config.get("codebook_size"),
            tuple(finite(u, "utilization") for u in util),
            tuple(finite(p, "perplexity") for p in perp),
            name,
        )
    )


def _machine(d: dict) -> str:
    m = d.get("machine") or {}
    cpus = m.get("usable_cpus", m.get("cpu_count", "?"))
    gpu = m.get("cuda") or "no GPU"
    return f"{m.get('processor', '?')}, {cpus} CPUs, {gpu}, torch {m.get('torch', '?')}"


def _parse_serving(d: dict, name: str, stem: str, res: Results) -> None:
    points = []
    for row in d["figures"]:
        decoding = "trie" if row.get("constrained", True) else "built-in, no trie"
        points.append(
            Latency(
                f"{row['backend']} ({decoding})",
                int(row["beams"]),
                int(row["batch"]),
                finite(row["p50_s"], "p50_s"),
                finite(row.get("p99_s"), "p99_s"),
                finite(row.get("recs_per_s"), "recs_per_s"),
            )
        )
    if not points:
        raise ValueError("no figures in the serving grid")
    res.grids.append(ServingGrid(stem, _machine(d), tuple(points), name))


def _parse_load(d: dict, name: str, stem: str, res: Results) -> None:
    finite(d["throughput_rps"], "throughput_rps")  # the one figure a load test must have
    res.loads.append(
        LoadTest(str(d.get("backend", "?")), {k: finite(d.get(k), k) for k in LOAD_COLUMNS}, name)
    )


def _parse_canvases(d: dict, name: str, stem: str, res: Results) -> None:
    rows = []
    for canvas, entries in d["canvases"].items():
        variants = {
            k: v
            for k, v in entries.items()
            if isinstance(v, dict) and any(str(m).startswith(("recall@", "ndcg@")) for m in v)
        }
        order = [v for v in VARIANTS if v in variants] + [v for v in variants if v not in VARIANTS]
        for v in order:
            extra = {k: finite(variants[v].get(k), k) for k in CANVAS_EXTRAS}
            rows.append(CanvasRow(str(canvas), v, {**metric_values(variants[v]), **extra}))
    if not rows:
        raise ValueError("no canvases")
    res.canvases.append(CanvasResults(str(d["dataset"]), stem, tuple(rows), name))


def _parse_refresh(d: dict, name: str, stem: str, res: Results) -> None:
    k = int(d["k"])
    recall = {
        g: {v: finite(x, f"{g}/{v}") for v, x in variants.items()} for g, variants in d[f"recall@{k}"].items()
    }
    res.refreshes.append(
        RefreshResult(str(d["dataset"]), recall, {g: int(n) for g, n in d["members"].items()}, k, name)
    )


def _parse_host(d: dict, name: str, stem: str, res: Results) -> None:
    res.host_times.append(
        HostTime(
            str(d["dataset"]),
            int(d["batch_size"]),
            finite(d["collator_ms_per_batch"], "collator_ms_per_batch"),
            finite(d["tensor_slice_ms_per_batch"], "tensor_slice_ms_per_batch"),
            finite(
                d.get("augmented_ms_per_batch_with_cut_and_build"),
                "augmented_ms_per_batch_with_cut_and_build",
            ),
            name,
        )
    )


def _parse_sweep(d: dict, name: str, stem: str, res: Results) -> None:
    """A recipe sweep: one retrieval row per evaluated run (runs cut before evaluation are left out)."""
    runs = [r for r in d["runs"] if "recall@10" in r]
    if not runs:
        raise ValueError("no evaluated runs")
    for r in runs:
        res.retrieval.append(
            Retrieval(
                str(d["dataset"]),
                "ours",
                f"gen-fm sweep ({r['name']})",
                "test",
                metric_values(r),
                finite(r.get("parameters"), "parameters"),
                name,
            )
        )


def _parse_embeddings(d: dict, name: str, stem: str, res: Results) -> None:
    nn = d["neighbours"]["share_co_engaged"]
    probe = d["next_category_probe"]["accuracy_5fold"]
    figures = {f"neighbours co-engaged: {k}": finite(v, k) for k, v in nn.items()}
    figures.update({f"next-theme accuracy: {k}": finite(v, k) for k, v in probe.items()})
    res.figures.append(
        Figures("embeddings", f"{d['dataset']} ({d.get('pooling', 'last')} pooling)", figures, name)
    )


def _parse_export(d: dict, name: str, stem: str, res: Results) -> None:
    keys = ("members", "titles", "dim", "seconds")
    res.figures.append(
        Figures("embeddings_export", str(d["dataset"]), {k: finite(d[k], k) for k in keys}, name)
    )


def _parse_batch(d: dict, name: str, stem: str, res: Results) -> None:
    keys = ("members", "batch_lists_per_second", "server_lists_per_second", "speedup", "identical_lists")
    res.figures.append(
        Figures("batch_vs_server", str(d["dataset"]), {k: finite(d[k], k) for k in keys}, name)
    )


def _parse_batch_lists(d: dict, name: str, stem: str, res: Results) -> None:
    keys = ("members", "lists", "rows", "seconds", "lists_per_second")
    res.figures.append(
        Figures(
            "batch_lists",
            f"{d['dataset']} ({d['engine']['name']} engine)",
            {k: finite(d[k], k) for k in keys},
            name,
        )
    )


def _parse_pool(d: dict, name: str, stem: str, res: Results) -> None:
    figures = {}
    for r in d["rows"]:
        n = int(r["cutoffs"])
        figures[f"{n} cutoffs: pairs"] = finite(r["pairs_next_is_new"], "pairs_next_is_new")
        figures[f"{n} cutoffs: members"] = finite(r["distinct_members_next_is_new"], "distinct members")
    res.figures.append(Figures("new_title_pool", str(d["dataset"]), figures, name))


def _parse_unseen(d: dict, name: str, stem: str, res: Results) -> None:
    k = max(int(x) for x in d["config"]["ks"])
    figures = {}
    for way, groups in d["results"].items():
        for group in ("cold", "warm", "all"):
            figures[f"{way}, {group}: R@{k}"] = finite(groups[group].get(f"recall@{k}"), f"{way}/{group}")
    res.figures.append(Figures("unseen_titles", str(d["dataset"]), figures, name))


def _parse_catalog_update(d: dict, name: str, stem: str, res: Results) -> None:
    figures = {key: finite(d[key], key) for key in ("trained_titles", "added_titles", "seconds")}
    res.figures.append(Figures("catalog_update", str(d.get("dataset", "")), figures, name))


def _parse_quickstart(d: dict, name: str, stem: str, res: Results) -> None:
    # the quickstart's own run record holds its test report whole; older files its home row alone
    home = d["test"]["home_row"] if "test" in d else d["home_row"]
    if "seconds_with_install" in d:  # the README's command, install included
        figures = {
            "minutes, with the install": finite(d["seconds_with_install"], "seconds_with_install") / 60
        }
    else:  # the quickstart alone, into an installed environment
        figures = {"minutes": finite(d["seconds"], "seconds") / 60}
    figures.update({f"{stage}, s": finite(s, stage) for stage, s in d["stage_seconds"].items()})
    for label, row in (
        ("model", home["model_history_excluded"]),
        ("counts", home["co_engaged_alone"]),
        ("served", home),
    ):
        figures[f"test R@10, {label}"] = finite(row["recall@10"], f"{label} recall@10")
    res.figures.append(Figures("quickstart", str(d["dataset"]), figures, name))


def _parse_paired(d: dict, name: str, stem: str, res: Results) -> None:
    # `sidrec compare --out`: ranking a against ranking b on the same members, at each K
    figures: dict[str, float | None] = {}
    for key, f in d.items():
        if not key.startswith("@"):
            continue
        k = key[1:]
        for m, short in (("recall", "R"), ("ndcg", "N")):
            figures[f"{short}@{k} a"] = finite(f[f"{m}@{k}_a"], f"{m}@{k}_a")
            figures[f"{short}@{k} b"] = finite(f[f"{m}@{k}_b"], f"{m}@{k}_b")
            figures[f"{short}@{k} a - b"] = finite(f[f"{m}@{k}_diff"], f"{m}@{k}_diff")
            figures[f"{short}@{k} a - b, paired SE"] = finite(f[f"{m}@{k}_diff_se"], f"{m}@{k}_diff_se")
            if f"{m}@{k}_diff_seed_se" in f:
                figures[f"{short}@{k} a - b, SE over runs"] = finite(
                    f[f"{m}@{k}_diff_seed_se"], f"{m}@{k}_diff_seed_se"
                )
    if not figures:
        raise ValueError("a paired comparison with no K")
    label = f"{d['dataset']} {d['split']}: a = {side_label(d['a'])}, b = {side_label(d['b'])}"
    res.figures.append(Figures("paired_comparison", label, figures, name))


PARSERS: dict[str, Callable[[dict, str, str, Results], None]] = {
    "baseline": _parse_baseline,
    "gen_fm": _parse_gen_fm,
    "semantic_ids": _parse_ids,
    "serving": _parse_serving,
    "serving_load": _parse_load,
    "prompt_tuning": _parse_canvases,
    "refresh": _parse_refresh,
    "host_batches": _parse_host,
    "gen_fm recipe sweep": _parse_sweep,
    "embeddings": _parse_embeddings,
    "batch_vs_server": _parse_batch,
    "embeddings_export": _parse_export,
    "batch_lists": _parse_batch_lists,
    "new_title_pool": _parse_pool,
    "unseen_titles": _parse_unseen,
    "catalog_update": _parse_catalog_update,
    "quickstart": _parse_quickstart,
    "paired_comparison": _parse_paired,
}


def load_results(results_dir: str | Path, exclude: str | Path | None = None) -> Results:
    """Every JSON file under ``results_dir`` (sorted), interpreted or listed as skipped.

    Hidden folders and ``exclude`` (a report written inside the results folder) are not read.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ReportError(f"results folder {root} does not exist or is not a folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    files = sorted(
        p
        for p in root.rglob("*.json")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])
        and (skip is None or skip not in p.resolve().parents)
    )
    if not files:
        raise ReportError(
            f"results folder {root} holds no JSON results files; run the "
            f"benchmarks first (sidrec eval, sidrec baseline, sidrec bench ...)"
        )
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
                raise ValueError(
                    f"unknown results kind {kind!r} (no 'benchmark' or 'kind' key this report knows)"
                )
            PARSERS[kind](d, name, path.stem, res)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            why = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            res.skipped[name] = f"{type(e).__name__}: {why}".replace("\n", " ")[:300]
    return res
