"""Run one baseline end to end and write its JSON report.

The report holds everything needed to trust or redo the figures: metrics on both splits, the data
fingerprint, every hyperparameter, the command line and the machine. Both splits are always reported
(validation drives early stopping, test is the figure to quote), so ``EvalConfig.split`` is not used
here; its cut-offs, batch size and device are.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.baselines.popular import evaluate_popular
from eval.baselines.sasrec import SASRecConfig, rank_histories, train_sasrec
from eval.baselines.sasrec_net import SASRec
from eval.config import EvalConfig
from eval.machine import machine_info
from eval.member_ranks import member_ranks_file
from gen_fm.co_engagement import co_engagement_of_split
from gen_fm.dataset import catalog_to_sid_rows
from semantic_ids.ids import SemanticIDs
from prompt_tuning.candidates import fuse_all
from core.metrics import RankingMetrics, metrics_from_ranks, ranking_metrics, target_ranks
from core.artifacts import jsonable, manifest_hash, write_json
from core.data import DataConfig, load_data
from core.sequences import SequenceConfig, Split, build_sequences, leave_one_out

BASELINES = ("popular", "sasrec", "sasrec-ce")
REPORT_SCHEMA = 1


def sasrec_config(kind: str, hyper: dict[str, Any]) -> SASRecConfig:
    """SASRecConfig for a kind ("sasrec" = BCE, "sasrec-ce" = full softmax); unknown keys fail loudly."""
    loss = "ce" if kind == "sasrec-ce" else "bce"
    if "loss" in hyper and hyper["loss"] != loss:
        raise ValueError(f"kind {kind!r} implies loss={loss!r}, but loss={hyper['loss']!r} was given")
    known = {f.name for f in dataclasses.fields(SASRecConfig)}
    unknown = sorted(set(hyper) - known)
    if unknown:
        raise ValueError(f"unknown SASRec hyperparameter(s) {unknown}; known: {sorted(known)}")
    return SASRecConfig(**{**hyper, "loss": loss})


def evaluate_sasrec(model: SASRec, split: Split, judged: str, config: EvalConfig) -> RankingMetrics:
    """Full-catalog ranking after each member's capped history; history titles are not removed."""
    ex = split.examples(judged)
    rows = rank_histories(model, ex.histories, config.max_k, config.batch_size)
    return ranking_metrics(rows, ex.targets, config.ks)


def fused_with_co_engagement(
    model: SASRec,
    split: Split,
    table,
    judged: str,
    config: EvalConfig,
    beam: int = 20,
    places: dict[str, np.ndarray] | None = None,
) -> dict[str, RankingMetrics]:
    """SASRec served as sidrec's home row is (``eval.next_title.served_home_row``), so a comparison
    of served rows gives SASRec the same help: ``history_excluded``, its full-catalog ranking with
    the member's history titles masked; ``fused``, its top ``beam`` (history masked) fused with the
    titles co-engaged with the member's newest titles (`table`, the split's
    ``gen_fm.co_engagement``; ``CoEngagement.of_recent``). A `places` dict is filled with each
    member's target place in both rankings (``eval.member_ranks``)."""
    ex = split.examples(judged)
    rows = rank_histories(
        model, ex.histories, max(beam, config.max_k), config.batch_size, exclude_history=True
    ).tolist()
    fused = fuse_all(rows, [table.of_recent(h) for h in ex.histories], config.max_k)
    ranks = {
        "history_excluded": target_ranks([r[: config.max_k] for r in rows], ex.targets),
        "fused": target_ranks(fused, ex.targets),
    }
    if places is not None:
        places.update(ranks)
    return {name: metrics_from_ranks(r, config.ks) for name, r in ranks.items()}


def command_line() -> list[str]:
    """sys.argv without the checkout's absolute path, so reports carry no personal paths."""
    argv = list(sys.argv)
    if argv and os.path.isabs(argv[0]):
        argv[0] = os.path.basename(argv[0])
    return argv


def catalog_codes(data, ids_dir: str | os.PathLike) -> np.ndarray:
    """(num_catalog, L) each catalog row's semantic-ID code tokens (each level its own range),
    counted from the first code token."""
    ids = SemanticIDs.load(ids_dir)
    rows = catalog_to_sid_rows(data, ids)
    if (rows < 0).any():
        raise ValueError(
            f"{int((rows < 0).sum())} catalog titles have no ID in {ids_dir}: "
            f"the ID artifact was built from another catalog"
        )
    return ids.layout.sids_to_ids(ids.codes)[rows] - ids.layout.offsets[0]


def run_baseline(
    kind: str,
    data_config: DataConfig | None,
    seq_config: SequenceConfig | None,
    out_path: str | os.PathLike,
    eval_config: EvalConfig | None = None,
    *,
    command: Sequence[str] | None = None,
    ids_dir: str | os.PathLike | None = None,
    ranks_out: str | os.PathLike | None = None,
    **hyper: Any,
) -> dict[str, Any]:
    """Train (if needed) and evaluate one baseline; write and return the JSON report.

    ``command``: the command line the report records (``sidrec baseline`` passes its own); default
    this process's ``sys.argv``. ``ids_dir``: the ID artifact whose codes represent titles when
    ``items`` is "codes" or "both". ``ranks_out``: a SASRec's test members' target places, history
    excluded and fused (``eval.member_ranks``). ``hyper``: SASRec hyperparameters (``SASRecConfig``
    fields).
    """
    if kind not in BASELINES:
        raise ValueError(f"kind must be one of {BASELINES}, got {kind!r}")
    if ranks_out is not None and kind == "popular":
        raise ValueError("ranks_out: the popular baseline keeps no per-member rankings; a SASRec does")
    data_config = data_config or DataConfig()
    seq_config = seq_config or SequenceConfig()
    eval_config = eval_config or EvalConfig()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    data = load_data(data_config)
    split = leave_one_out(build_sequences(data, seq_config), seq_config)
    num_items = len(data.catalog)
    training: dict[str, Any] | None = None
    served: dict[str, dict[str, RankingMetrics]] = {}  # split -> history_excluded / fused
    t0 = time.perf_counter()
    if kind == "popular":
        if hyper:
            raise ValueError(f"the popular baseline takes no hyperparameters, got {sorted(hyper)}")
        metrics = {s: evaluate_popular(split, num_items, s, eval_config.ks) for s in ("valid", "test")}
        train_seconds, params, hyperparameters = time.perf_counter() - t0, 0, {}
    else:
        config = sasrec_config(kind, hyper)
        k_stop = eval_config.max_k

        def validate(model: SASRec) -> float:
            return evaluate_sasrec(model, split, "valid", eval_config).recall[k_stop]

        if (config.items != "id") != (ids_dir is not None):
            raise ValueError(
                f"items {config.items!r}: pass the ID artifact (--ids) exactly when "
                f"titles are represented by their codes"
            )
        codes = catalog_codes(data, ids_dir) if ids_dir is not None else None
        result = train_sasrec(split, num_items, config, validate, device=eval_config.device, codes=codes)
        metrics = {s: evaluate_sasrec(result.model, split, s, eval_config) for s in ("valid", "test")}
        table = co_engagement_of_split(split, np.arange(num_items), num_items)  # catalog rows
        places: dict[str, np.ndarray] = {}
        served = {
            s: fused_with_co_engagement(
                result.model, split, table, s, eval_config, places=places if s == "test" else None
            )
            for s in ("valid", "test")
        }
        train_seconds = result.train_seconds
        params = sum(p.numel() for p in result.model.parameters())
        hyperparameters = dataclasses.asdict(config)
        training = {
            "early_stopping_metric": f"valid recall@{k_stop}",
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "converged": result.converged,
            "history": result.history,
        }

    report = {
        "schema": REPORT_SCHEMA,
        "kind": "baseline",
        "baseline": kind,
        "dataset": data.name,
        "data_fingerprint": data.fingerprint,
        "semantic_ids": None
        if ids_dir is None
        else {"path": str(ids_dir), "manifest": manifest_hash(ids_dir)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "num_items": num_items,
        "num_members": len(split.sequences),
        "num_users": {s: m.num_users for s, m in metrics.items()},
        "metrics": {
            s: {k: v for k, v in m.to_dict().items() if k != "num_users"} for s, m in metrics.items()
        },
        # as sidrec's home row is served: the history's titles masked, then the model's top 20 fused
        # with the titles co-engaged with the member's newest titles
        **{
            key: {
                s: {k: v for k, v in m[part].to_dict().items() if k != "num_users"} for s, m in served.items()
            }
            or None
            for key, part in (("history_excluded", "history_excluded"), ("fused_with_co_engagement", "fused"))
        },
        "params": params,
        "train_seconds": round(train_seconds, 2),
        "hyperparameters": hyperparameters,
        "training": training,
        "protocol": "leave-one-out; full-catalog ranking; history titles not excluded; "
        "ties broken by lower catalog row",
        "data_config": data_config,
        "sequence_config": seq_config,
        "eval_config": eval_config,
        "command": list(command) if command is not None else command_line(),
        "machine": machine_info(),
    }
    write_json(out_path, jsonable(report))
    if ranks_out is not None:
        test, item_ids = split.examples("test"), list(data.catalog["item_id"])
        member_ranks_file(
            ranks_out,
            ranks=places,
            users=[split.sequences.user_ids[u] for u in test.users],
            targets=[str(item_ids[int(t)]) for t in test.targets],
            dataset=data.name,
            split="test",
            data_fingerprint=data.fingerprint,
            list_length=eval_config.max_k,
            source={"baseline": kind, "report": str(out_path), "hyperparameters": hyperparameters},
        )
    return report
