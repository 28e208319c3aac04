"""``sidrec bench unseen-titles``: TIGER's unseen-title protocol end to end (``eval.unseen_titles``).

Stages, each in the work folder and skipped when its artifact is already there for the same draw
(so a rerun resumes, a changed draw is refused): IDs fitted on the seen titles only (``ids-seen``),
the unseen titles given IDs by the new-title path without a refit (``ids``), a model trained on
what remains with its fusion weight chosen on validation (``run``), then the judgement.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.artifacts import jsonable, read_manifest, write_json
from core.data import DataConfig, load_data
from core.sequences import SequenceConfig
from eval.machine import machine_info
from eval.next_title import choose_fusion
from eval.unseen_titles import GROUPS, UnseenConfig, hold_out, judge
from gen_fm.config import PretrainConfig
from gen_fm.model import load_model
from gen_fm.train import pretrain
from semantic_ids.builder import assign_new, build_ids
from semantic_ids.config import SemanticIDConfig
from semantic_ids.ids import SemanticIDs
from sidrec.arguments import console


def _built_from(folder: Path, fingerprint: str, key: str) -> bool:
    """Whether `folder` holds an artifact, refusing one built from another draw."""
    if not (folder / "manifest.json").is_file():
        return False
    manifest = read_manifest(folder)
    have = manifest["parents"]["data"] if key == "ids" else manifest["data"]["fingerprint"]
    if have != fingerprint:
        raise ValueError(
            f"{folder} was built from another draw or dataset: remove it or choose another --work folder"
        )
    return True


def run_unseen_titles(
    data_config: DataConfig,
    seq: SequenceConfig,
    pretrain_config: PretrainConfig,
    config: UnseenConfig,
    work: str | Path,
    out: str | Path,
    ids_config: SemanticIDConfig | None = None,
    command: str = "",
) -> dict:
    ids_config = ids_config or SemanticIDConfig()
    if ids_config.modalities.collaborative_weight > 0:
        raise ValueError(
            "the unseen-title protocol needs content-only IDs: an unseen title has no events to "
            "give it a collaborative vector (set collaborative_weight=0)"
        )
    work = Path(work)
    data = load_data(data_config)
    held = hold_out(data, seq, config.share, config.seed)
    console.print(
        f"{len(held.unseen):,} unseen titles, {held.cold_members:,} cold members, "
        f"{held.removed_events:,} interaction rows held out"
    )
    seconds = {}
    seen_dir, ids_dir, run_dir = work / "ids-seen", work / "ids", work / "run"
    if not _built_from(seen_dir, held.seen.fingerprint, "ids"):
        t0 = time.perf_counter()
        build_ids(held.seen, ids_config, seen_dir, seq)
        seconds["ids_seen"] = round(time.perf_counter() - t0, 1)
    if not _built_from(ids_dir, held.data.fingerprint, "ids"):
        t0 = time.perf_counter()
        assign_new(seen_dir, held.data, out=ids_dir)
        seconds["assign_unseen"] = round(time.perf_counter() - t0, 1)
    model_dir = run_dir / "model"
    if not _built_from(model_dir, held.data.fingerprint, "model"):
        t0 = time.perf_counter()
        pretrain(held.data, seq, seen_dir, run_dir, pretrain_config, resume=True)
        choose_fusion(model_dir, held.data)
        seconds["pretrain_and_fusion"] = round(time.perf_counter() - t0, 1)
    gen = load_model(model_dir)
    if gen.fusion() is None:
        choose_fusion(model_dir, held.data)
        gen = load_model(model_dir)
    t0 = time.perf_counter()
    judged = judge(gen, SemanticIDs.load(ids_dir), held.data, held.unseen, config)
    seconds["judge"] = round(time.perf_counter() - t0, 1)
    report = {
        "kind": "unseen_titles",
        "dataset": data.name,
        "fingerprint": data.fingerprint,
        "protocol": "TIGER section 4.3: unseen titles drawn among the test targets, held out of "
        "training, validation, the co-engagement table and the quantizer; IDs by the new-title path",
        "config": jsonable(config),
        "held_out": held.describe(),
        "pretrain_config": jsonable(pretrain_config),
        "ids_config": jsonable(ids_config),
        "sequence_config": jsonable(seq),
        "model": str(model_dir),
        "training": {k: read_manifest(model_dir)["training"].get(k) for k in ("epochs_done", "chosen_epoch")},
        **judged,
        "seconds": seconds,
        "command": command,
        "machine": machine_info(),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    show(report)
    console.print(f"wrote {out}")
    return report


def show(report: dict) -> None:
    """The table a person reads: R@10 and N@10 per way, per group, with one standard error."""
    k = max(report["config"]["ks"])
    table = Table(title=f"{report['dataset']}: unseen titles, test R@{k}±SE / N@{k} (history excluded)")
    table.add_column("way", no_wrap=True)
    for g in GROUPS:
        n = report["results"]["model"][g]["num_users"]
        table.add_column(f"{g} ({n:,})", justify="right", no_wrap=True)
    table.add_column("unseen/list", justify="right", no_wrap=True)
    for name, groups in report["results"].items():
        cells = [
            f"{groups[g][f'recall@{k}']:.3f}±{groups[g][f'recall@{k}_se']:.3f} / {groups[g][f'ndcg@{k}']:.3f}"
            if groups[g]["num_users"]
            else "-"
            for g in GROUPS
        ]
        table.add_row(name, *cells, f"{report['unseen_titles_per_list'][name]:.2f}")
    Console(width=max(console.width, 130)).print(table)  # the rows are wider than a default terminal
