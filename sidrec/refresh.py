"""Catalog refresh: new titles get IDs from the trained quantizer, the model is fine-tuned briefly
from its own weights, and recall is measured on new-title and old-title targets before and after.

    sidrec refresh --model RUN/model --data DIR --dataset NAME --out OUT
    sidrec refresh --simulate --data DIR --dataset ml-latest-small --out OUT

``--simulate`` holds out the newest titles by first interaction with every interaction at or after
the first of them (the cutoff), builds IDs and a model on that old world (the quickstart's stages),
then refreshes with the full data. The quantizer is never retrained (``assign_new`` encodes the new
titles; existing IDs and code tokens stay), so fine-tuning starts from the old weights, over the full
data's training sequences with the loss on fresh events plus a ``replay`` share of older ones (the
loss on all events drowns the new titles; on fresh ones alone it costs quality on old titles). Judged
on the test split by whether the target is new: ``before`` (old model and map: new titles cannot be
recommended), ``old_model_new_trie`` and ``after`` (the fine-tuned model). OUT holds ``ids/``,
``finetune-<hash>/model``, ``report.json`` (``old/`` too when simulating); matching stages are reused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from core.artifacts import jsonable, manifest_hash, read_manifest, write_json
from core.data import DataConfig, RecData, load_data
from core.overrides import merged, nest_keys, override
from core.timeline import old_world
from eval.machine import machine_info
from eval.new_titles import BASELINES, GROUPS, VARIANTS, judge
from gen_fm.config import PretrainConfig
from gen_fm.model import load_model
from gen_fm.train import pretrain
from semantic_ids.builder import assign_new
from semantic_ids.ids import SemanticIDs
from sidrec.quickstart import (
    QuickstartConfig,
    same_build,
    stage_ids,
    stage_pretrain,
    stage_prompts,
)

from sidrec.refresh_config import RefreshConfig, resolve_since

console = Console()


# --------------------------------------------------------------------------- refresh


def refresh(
    model_dir: str | Path,
    data_config: DataConfig | RecData,
    out_dir: str | Path,
    config: RefreshConfig,
    results: str | Path | None = None,
    simulation: dict | None = None,
) -> dict[str, Any]:
    """Assign IDs to the new titles, fine-tune from `model_dir`, judge before/after; returns the report."""
    t0 = time.perf_counter()
    out, model_dir = Path(out_dir), Path(model_dir)
    parent = load_model(model_dir)
    data = data_config if isinstance(data_config, RecData) else load_data(data_config)
    console.rule(f"[bold]refresh[/bold] {model_dir} with {data.name} -> {out}")
    if config.fresh_since is not None and not data.has_time:
        raise ValueError(
            f"fresh_since needs timestamps; {data.name} has sequence positions only: "
            f"fine-tune on every event instead (leave fresh_since unset)"
        )
    config, why = resolve_since(config, parent.manifest, data.has_time)
    if why:
        console.print(why)

    console.rule("refresh 1/3: IDs for the new titles (trained quantizer, existing IDs kept)")
    new_ids, new_titles = assign_new_titles(parent, data, out / "ids")
    console.print(
        f"{len(new_titles):,} new title(s) got IDs; map version {parent.ids.version} -> "
        f"{new_ids.version}; {parent.ids.num_items:,} existing IDs unchanged"
    )
    for iid in new_titles[:3]:
        console.print(f"  {new_ids.layout.sid_string(new_ids.sid(iid))}  {new_ids.title(iid)}")
    t_ids = time.perf_counter() - t0

    console.rule("refresh 2/3: fine-tune from the model's weights")
    refreshed_dir = _stage_finetune(parent, model_dir, data, out, config)
    refreshed = load_model(refreshed_dir)
    t_ft = time.perf_counter() - t0 - t_ids

    console.rule("refresh 3/3: recall on new-title and old-title targets, before and after")
    evaluations, members = judge(parent, new_ids, refreshed, data, set(new_titles), config.judge)
    t_eval = time.perf_counter() - t0 - t_ids - t_ft
    served = None
    if config.canvases:
        console.rule(f"refresh: soft prompts of {', '.join(config.canvases)} on the refreshed model")
        served = stage_prompts(refreshed_dir, data, config.canvases, config.prompts, out / "prompts")
    report = _report(
        parent,
        refreshed,
        new_ids,
        new_titles,
        data,
        evaluations,
        members,
        config,
        simulation,
        seconds={
            "ids": t_ids,
            "finetune": t_ft,
            "evaluate": t_eval,
            "prompts": time.perf_counter() - t0 - t_ids - t_ft - t_eval,
        },
    )
    report["served_model"] = str(served) if served is not None else str(refreshed_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    if results is not None:
        Path(results).parent.mkdir(parents=True, exist_ok=True)
        write_json(results, report)
    show(report)
    console.print(
        f"[dim]report: {out / 'report.json'}" + (f" and {results}" if results is not None else "") + "[/dim]"
    )
    return report


def check_ids_kept(old, new) -> None:
    """Every title of the old map keeps its exact ID in the new one, and the vocabulary is the same."""
    missing = [i for i in old.item_ids if i not in new]
    if missing:
        raise ValueError(f"the new ID map lost {len(missing)} title(s), e.g. {missing[:3]}")
    moved = np.flatnonzero((new.codes_for(old.item_ids) != old.codes).any(axis=1))
    if len(moved):
        raise ValueError(f"{len(moved)} existing ID(s) moved, e.g. title {old.item_ids[moved[0]]}")
    if new.codebook_sizes != old.codebook_sizes:
        raise ValueError(
            f"codebook sizes changed {old.codebook_sizes} -> {new.codebook_sizes}: the "
            f"model's vocabulary would change"
        )


def assign_new_titles(parent, data: RecData, ids_dir: Path):
    """IDs for the titles of `data` the model `parent` has none for, written to `ids_dir` (reused
    when it already holds them); returns (the ID map, the new title ids)."""
    catalog = list(data.catalog["item_id"])
    new_titles = [i for i in catalog if i not in parent.ids]
    if not new_titles:
        raise ValueError(
            f"every title of {data.name} already has an ID in {parent.path}: no new titles to refresh with"
        )
    try:
        ids = SemanticIDs.load(ids_dir)
        reuse = (
            ids.manifest["parents"].get("data") == data.fingerprint
            and ids.version == parent.ids.version + 1
            and set(ids.item_ids) == set(parent.ids.item_ids) | set(catalog)
        )
        check_ids_kept(parent.ids, ids)
    except Exception:
        reuse = False
    if reuse:
        console.print(f"reusing {ids_dir} (same data, built on this model's map)")
    else:
        ids, assigned = assign_new(parent.path / "semantic_ids", data, ids_dir)
        if sorted(assigned) != sorted(new_titles):
            raise RuntimeError("assign_new gave IDs to other titles than the catalog's new ones")
    check_ids_kept(parent.ids, ids)
    return ids, new_titles


def finetune_config(parent_config: PretrainConfig, config: RefreshConfig) -> PretrainConfig:
    """The parent's PretrainConfig (architecture, regularisation) with the refresh's fine-tune
    overrides, validated at the judge's K and beam width."""
    judged = {"validation": {"judge": {"k": config.judge.k, "num_beams": config.judge.num_beams}}}
    return override(parent_config, merged(nest_keys(PretrainConfig, config.finetune), judged))


def _stage_finetune(parent, model_dir: Path, data: RecData, out: Path, config: RefreshConfig) -> Path:
    pcfg = finetune_config(parent.config, config)
    ids_hash, parent_hash = manifest_hash(out / "ids"), manifest_hash(model_dir)
    since = config.fresh_since
    targets = None if since is None else {"since": int(since), "replay": config.replay}
    # one run folder per (config, IDs, parent, targets): a rerun resumes it, a change trains beside it
    # (the config in its flat form, as before it was grouped by concern: earlier folders are found)
    key = json.dumps([pcfg.by_name(), ids_hash, parent_hash, targets], sort_keys=True)
    run_dir = out / f"finetune-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    target = run_dir / "model"
    if same_build(target, "gen_fm", pcfg, data.fingerprint):
        m = read_manifest(target)
        if (
            m["parents"].get("semantic_ids") == ids_hash
            and m["parents"].get("init_from") == parent_hash
            and m["training"].get("targets") == targets
        ):
            console.print(f"reusing {target} (same data, IDs, parent and config)")
            return target
    what = (
        "every training event"
        if since is None
        else f"the events since {time.strftime('%Y-%m-%d %H:%M', time.gmtime(since))} UTC plus "
        f"{config.replay:.0%} of the older ones (the rest is context)"
    )
    console.print(f"{pcfg.optim.epochs} epoch(s) at lr {pcfg.optim.lr:g} from {model_dir}; loss on {what}")
    return pretrain(
        data,
        parent.seq_config,
        out / "ids",
        run_dir,
        pcfg,
        resume=True,
        init_from=model_dir,
        targets_since=since,
        replay=config.replay if since is not None else 0.0,
    )


# --------------------------------------------------------------------------- report


def _report(
    parent, refreshed, new_ids, new_titles, data, evaluations, members, config, simulation, seconds
) -> dict[str, Any]:
    k = config.judge.k
    summary = {g: {v: evaluations[v][g][f"recall@{k}"] for v in VARIANTS + BASELINES} for g in GROUPS}
    stats = new_ids.stats()
    return {
        "benchmark": "refresh",
        "dataset": data.name,
        "split": "test",
        "k": k,
        "num_beams": config.judge.beams,
        f"recall@{k}": summary,
        "members": members,
        "members_judged": {g: evaluations["after"][g]["num_users"] for g in GROUPS},
        "evaluations": evaluations,
        "ids": {
            "parent_map_version": parent.ids.version,
            "map_version": new_ids.version,
            "existing_titles": parent.ids.num_items,
            "new_titles": len(new_titles),
            "existing_ids_unchanged": True,
            "vocab_unchanged": refreshed.layout.to_json() == parent.layout.to_json(),
            "new_titles_spilled": stats.get("new_titles_spilled"),
            "collision_rate": stats.get("collision_rate"),
        },
        "simulation": simulation,
        "finetune": {
            k2: refreshed.manifest["training"].get(k2)
            for k2 in (
                "steps",
                "epochs_done",
                "best_epoch",
                "weights",
                "stop_reason",
                f"best_val_recall@{k}",
                "train_windows",
                "targets",
                "history",
                "init_from",
            )
        },
        "config": jsonable(config),
        "artifacts": {
            "parent_model": str(parent.path),
            "parent_manifest": manifest_hash(parent.path),
            "parent_data_fingerprint": parent.manifest.get("data", {}).get("fingerprint"),
            "model": str(refreshed.path),
            "model_manifest": manifest_hash(refreshed.path),
            "semantic_ids": str(new_ids.path),
            "semantic_ids_manifest": manifest_hash(new_ids.path),
            "data_fingerprint": data.fingerprint,
        },
        "seconds": {s: round(v, 1) for s, v in seconds.items()},
        "command": " ".join(["sidrec", *sys.argv[1:]]),
        "machine": machine_info(),
    }


def show(report: dict) -> None:
    k = report["k"]
    t = Table(title=f"{report['dataset']} test, Recall@{k} (beam {report['num_beams']})")
    t.add_column("targets")
    t.add_column("members")
    shown = [v for v in VARIANTS + BASELINES if v in report[f"recall@{k}"][GROUPS[0]]]
    for v in shown:
        t.add_column(v.replace("_", " "))
    for g in GROUPS:
        cells = [report[f"recall@{k}"][g][v] for v in shown]
        t.add_row(
            g.replace("_", " "),
            str(report["members_judged"][g]),
            *("-" if c is None else f"{c:.4f}" for c in cells),
        )
    console.print(t)
    if report.get("served_model"):
        console.print(f"serve it: sidrec serve --model {report['served_model']}")


# --------------------------------------------------------------------------- simulation


def simulate(
    data_config: DataConfig, out_dir: str | Path, config: RefreshConfig, results: str | Path | None = None
) -> dict[str, Any]:
    """Old world -> IDs and a model on it (the quickstart's stages) -> refresh with the full data."""
    out = Path(out_dir)
    full = load_data(data_config)
    world = old_world(full, config.new_title_share)
    info = world.to_json()
    console.rule(f"[bold]refresh simulation[/bold] on {full.name} -> {out}")
    console.print(
        f"cutoff {info['cutoff_utc']}: {info['new_titles']:,} new titles and "
        f"{info['held_out_interactions']:,} interactions held out; the old world keeps "
        f"{info['old_world_titles']:,} titles and {info['old_world_interactions']:,} "
        f"interactions"
    )
    qs = QuickstartConfig(dataset=full.name, out=str(out / "old"), ids=config.ids, pretrain=config.pretrain)
    stage_ids(qs, world.data, out / "old" / "ids")
    model_dir = stage_pretrain(qs, world.data, out / "old" / "ids", out / "old")
    if config.fresh_since is None:  # fresh = what the old world did not hold
        config = dataclasses.replace(config, fresh_since=world.cutoff)
    return refresh(
        model_dir,
        full,
        out,
        config,
        results=results,
        simulation={**info, "new_title_share": config.new_title_share, "old_model": str(model_dir)},
    )
