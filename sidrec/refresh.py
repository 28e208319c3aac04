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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from core.artifacts import jsonable, manifest_hash, read_manifest, write_json
from core.data import DataConfig, RecData, load_data
from core.overrides import merged, nest_keys, override, overrides_of
from core.timeline import old_world
from eval.machine import machine_info
from eval.new_titles import BASELINES, GROUPS, VARIANTS, judge
from gen_fm.beams import JudgeConfig
from gen_fm.config import PretrainConfig
from gen_fm.model import load_model
from gen_fm.train import pretrain
from prompt_tuning.canvases import canvas_names
from prompt_tuning.config import PromptTuningStageConfig
from semantic_ids.builder import assign_new
from semantic_ids.config import SemanticIDConfig
from semantic_ids.ids import SemanticIDs
from sidrec.quickstart import (
    QuickstartConfig,
    prompts_default,
    same_build,
    stage_ids,
    stage_pretrain,
    stage_prompts,
)

console = Console()


def _old_world_pretrain() -> PretrainConfig:
    """The quickstart's recipe for 8 epochs, validated on 300 members (simulation only)."""
    return PretrainConfig.from_preset(
        "small",
        optim=dict(epochs=8, lr=2e-3, batch_size=64),
        validation=dict(judge=dict(eval_users=300), eval_every=1, patience=0),
    )


# The fine-tune's recipe, as overrides of the parent model's PretrainConfig (whose architecture,
# regularisation and batch size it keeps): a few epochs (the model already knows the old titles)
# at half of pretraining's peak learning rate (the old weights are a good start) with a longer
# warm-up; every epoch validated on 300 members and the best kept, no early stop. The seed draws
# the data order, the validation sample and the replayed events.
FINETUNE: dict[str, Any] = {
    "seed": 0,
    "optim": {"epochs": 3, "lr": 1e-3, "warmup_ratio": 0.1, "max_steps": None},
    "validation": {"judge": {"eval_users": 300}, "eval_every": 1, "patience": 0},
}


@dataclass(frozen=True)
class RefreshConfig:
    """How a refresh fine-tunes and judges; the simulation-only fields build the old world's model."""

    # ---- fine-tune (from the model's weights, on the full data's training sequences) ---------
    # Overrides of the parent's PretrainConfig, merged over ``FINETUNE`` (so the field holds the
    # whole recipe): ``--set finetune.optim.epochs=5``, or by a field's unique name
    # ``--set finetune.lr=0.002``; ``finetune.batch_size`` (default: the parent's). Validation
    # uses ``judge.k`` and ``judge.num_beams`` below. (``--set epochs=5`` alone names the
    # fine-tune's, the old world's and the prompts' epochs: refused, naming the three paths.)
    finetune: dict[str, Any] = overrides_of(PretrainConfig)
    # Events at or after this time (unix seconds) are fresh: the loss is on them (and on the replayed
    # share of the rest). None = just after the newest event of the data the model was built from
    # (its manifest's data.time_end), or every training event for a model folder without one or data
    # without timestamps. --simulate uses its cutoff.
    fresh_since: int | None = None
    # False: with fresh_since unset, fine-tune on every training event (ignore the manifest's time).
    since_from_model: bool = True
    replay: float = 0.2  # share of the older events kept as targets, so old titles are rehearsed

    # ---- soft prompts (retrained on the refreshed model, exported with it: out/prompts/served) ---
    # Canvases whose soft prompts are trained on the refreshed model and exported with it, so the
    # refresh ends with a servable folder; () = none (the refreshed model folder alone). A list or a
    # comma-separated string, e.g. "home,search,t2t,collection".
    canvases: tuple[str, ...] = ()
    # The prompt-tuning config of those prompts (the quickstart's; ``--set prompts.epochs=5``).
    prompts: PromptTuningStageConfig = field(default_factory=prompts_default)

    # ---- evaluation (full data, test split, split into new-title and old-title targets) -------
    # K, the beam, members per group (eval_users) and batch: ``--set judge.k=20`` (by its path: the
    # pretrain configs' validation has a judge too).
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    # ---- simulation only (--simulate): the old world and its model -------------------------------
    # Share of the titles that have interactions held out as "new": the newest by first interaction.
    new_title_share: float = 0.05
    # The old world's IDs and pretraining (the quickstart's recipe, 8 epochs, validation on 300
    # members); ``--set ids.quantizer=rqvae``, ``--set pretrain.epochs=12``.
    ids: SemanticIDConfig = field(default_factory=SemanticIDConfig)
    pretrain: PretrainConfig = field(default_factory=_old_world_pretrain)

    def __post_init__(self) -> None:
        CANVASES = canvas_names()  # the registry: built-in canvases and any registered since

        raw = self.canvases.split(",") if isinstance(self.canvases, str) else self.canvases
        object.__setattr__(self, "canvases", tuple(c.strip() for c in raw if c.strip()))
        unknown = [c for c in self.canvases if c not in CANVASES]
        if unknown or len(set(self.canvases)) != len(self.canvases):
            raise ValueError(f"canvases {list(self.canvases)}: each at most once, from {CANVASES}")
        if not 0.0 < self.new_title_share < 1.0:
            raise ValueError(f"new_title_share must be in (0, 1), got {self.new_title_share}")
        object.__setattr__(self, "judge", JudgeConfig.of(self.judge))
        self._check_finetune()
        if not 0.0 <= self.replay <= 1.0:
            raise ValueError(f"replay must be in [0, 1], got {self.replay}")

    def _check_finetune(self) -> None:
        """``finetune`` merged over the recipe, its keys placed (``lr`` -> ``optim.lr``) and each
        concern's values checked here; what spans concerns (and the architecture, which must be the
        parent's) is checked when it is applied to the parent's config (``finetune_config``)."""
        over = nest_keys(PretrainConfig, merged(FINETUNE, self.finetune), "RefreshConfig.finetune")
        judge = over.get("validation", {}).get("judge", {})
        fixed = [f"validation.judge.{k}" for k in ("k", "num_beams") if k in judge]
        if fixed:
            raise ValueError(
                f"finetune {fixed}: the fine-tune validates at the refresh's judge.k and judge.num_beams"
            )
        defaults = PretrainConfig()
        for key, value in over.items():
            concern = getattr(defaults, key)
            if dataclasses.is_dataclass(concern):
                override(concern, value)
        object.__setattr__(self, "finetune", over)


# --------------------------------------------------------------------------- refresh


def parse_since(value: str) -> dict:
    """--since: unix seconds, an ISO date/time (UTC), or "all" (fine-tune on every event)."""
    from datetime import datetime, timezone

    if value.strip().lower() == "all":
        return {"fresh_since": None, "since_from_model": False}
    if value.strip().lstrip("-").isdigit():
        return {"fresh_since": int(value)}
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"--since {value!r}: give unix seconds, an ISO date such as 2018-09-01, or 'all'"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return {"fresh_since": int(when.timestamp())}


def resolve_since(
    config: RefreshConfig, parent_manifest: dict, has_time: bool
) -> tuple[RefreshConfig, str | None]:
    """``fresh_since`` read from the parent model's manifest when the config leaves it unset: events
    after the newest one the model was built from are fresh. Returns the config and what was done."""
    if config.fresh_since is not None or not config.since_from_model or not has_time:
        return config, None
    end = (parent_manifest.get("data") or {}).get("time_end")
    if end is None:
        return config, (
            "the model folder does not record when its data ended (built before "
            "data.time_end existed): fine-tuning on every training event"
        )
    since = int(end) + 1
    return dataclasses.replace(config, fresh_since=since), (
        f"fresh events: after {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(int(end)))} UTC, the "
        f"newest event of the data the model was built from (its manifest)"
    )


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
