"""The stage commands of `sidrec`: thin wrappers over each stage's Python API.

ids, pretrain, eval, serve, prompts, quickstart, refresh, embed and batch; ``sidrec.cli`` puts them
in the one parser (``add_stage_commands``) beside the benchmark commands (``sidrec.bench_commands``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.table import Table

from core.artifacts import read_json, write_json
from core.data import load_data
from core.overrides import config_from_args, parse_overrides
from core.sequences import SequenceConfig
from serving.backends import DEFAULT_BACKEND, backend_names  # the registry alone: no torch
from sidrec.arguments import (
    add_config_args,
    add_data_args,
    add_engine_args,
    add_threads_arg,
    command_line,
    console,
    data_config,
    set_threads,
)

# Each command imports its stage (semantic_ids ... eval, sidrec.quickstart and the like) inside its
# function: `sidrec --help` and argument errors must answer without importing torch or transformers.
# The ground floor (core.data, core.artifacts, core.sequences) is light and imported here.


# --------------------------------------------------------------------------- ids


def cmd_ids_build(args) -> None:
    from semantic_ids.builder import build_ids
    from semantic_ids.config import SemanticIDConfig
    from sidrec.quickstart import show_stats

    config = config_from_args(SemanticIDConfig, args.preset, args.set, quantizer=args.quantizer)
    data = load_data(data_config(args))
    for line in data.report.lines():
        console.print(f"[dim]{line}[/dim]")
    ids = build_ids(data, config, args.out)
    console.print(f"wrote {args.out}")
    show_stats(ids)


def cmd_ids_assign(args) -> None:
    from semantic_ids.builder import assign_new

    data = load_data(data_config(args))
    ids, new = assign_new(args.ids, data, args.out)
    console.print(f"{len(new)} new title(s) got IDs; map version {ids.version} at {args.out or args.ids}")
    for iid in new[:10]:
        console.print(f"  {iid}  {ids.layout.sid_string(ids.sid(iid))}  {ids.title(iid)}")


def cmd_ids_inspect(args) -> None:
    from semantic_ids.ids import SemanticIDs
    from sidrec.quickstart import show_stats

    ids = SemanticIDs.load(args.dir)
    show_stats(ids)
    depth = args.depth if args.depth is not None else max(ids.sid_length - 2, 1)
    groups = [g for g in ids.prefix_groups(depth).items() if len(g[1]) >= 3]
    groups.sort(key=lambda kv: kv[0])
    step = max(len(groups) // max(args.groups, 1), 1)
    console.print(
        f"\nTitles sharing their first {depth} code(s) (every {step}th group of "
        f"{len(groups)} with 3+ titles):"
    )
    for prefix, members in groups[::step][: args.groups]:
        console.print(f"[bold]{'-'.join(map(str, prefix))}[/bold] ({len(members)} titles)")
        for iid in members[:5]:
            console.print(f"    {ids.layout.sid_string(ids.sid(iid))}  {ids.title(iid)}")


# --------------------------------------------------------------------------- gen_fm / eval


def cmd_pretrain(args) -> None:
    from gen_fm.config import PretrainConfig
    from gen_fm.train import pretrain

    set_threads(args)
    overrides = parse_overrides(args.config, args.set)
    try:
        config = PretrainConfig.from_preset(args.preset, **overrides)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: invalid PretrainConfig: {e}") from e
    seq = SequenceConfig(max_history=args.max_history)
    data, extra = data_config(args), None
    if config.canvas_mix:  # the canvas stage builds the mixture's rows (gen_fm does not know it)
        from prompt_tuning.canvases import pretraining_mixture

        data = load_data(data)
        extra = pretraining_mixture(data, seq, args.ids, config)
    model_dir = pretrain(
        data, seq, args.ids, args.out, config, resume=args.resume, init_from=args.init_from, extra_rows=extra
    )
    console.print(f"model folder: {model_dir}")
    if not args.no_fusion:
        from eval.next_title import choose_fusion

        show_fusion(choose_fusion(model_dir, data_config(args)))


def show_fusion(fusion: dict) -> None:
    from eval.next_title import describe_fusion

    for line in describe_fusion(fusion):
        console.print(line)


def cmd_eval(args) -> None:
    from eval.config import EvalConfig
    from eval.next_title import evaluate_model

    set_threads(args)
    if args.choose_fusion:
        from eval.next_title import choose_fusion

        show_fusion(
            choose_fusion(
                args.model,
                data_config(args),
                EvalConfig(split="valid", ks=(max(args.ks),), batch_size=args.batch_size, device=args.device),
                max_users=args.eval_users or 5000,
            )
        )
        return
    try:
        report = evaluate_model(
            args.model,
            data_config(args),
            EvalConfig(split=args.split, ks=tuple(args.ks), batch_size=args.batch_size, device=args.device),
            out=args.out,
            num_beams=args.beams,
            max_users=args.eval_users,
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    keys = [f"{m}@{k}" for k in args.ks for m in ("recall", "ndcg")]
    home = report["home_row"]
    console.print(
        f"{report['dataset']} {args.split} ({report['num_users']} members, beam {report['num_beams']}):"
    )

    def line(label: str, figures: dict, note: str = "") -> None:
        console.print(f"  {label:<21}" + "  ".join(f"{k} {figures[k]:.4f}" for k in keys) + note)

    console.print("  history excluded, as served:")
    tw = home.get("title_weight", 0.0)
    line(
        "the model alone",
        home["model_history_excluded"],
        f"  (beam + title head, weight {tw:g})" if tw else "",
    )
    for label, key in (("its beam", "beam_history_excluded"), ("its title head", "title_head_alone")):
        if key in home and tw:
            line(label, home[key])
    line("the counts alone", home["co_engaged_alone"])
    line(
        "the home row served",
        home,
        f"  (fused with the titles co-engaged with the {home['recent_titles']} newest, "
        f"k {home['fusion_k']}, weight {home['fusion_weight']:g})",
    )
    console.print(
        f"invalid IDs: constrained {report['invalid_rate']:.2%}, unconstrained "
        f"{report['invalid_rate_unconstrained']:.2%}" + (f"  -> {args.out}" if args.out else "")
    )


def cmd_serve(args) -> None:
    from serving.server import serve

    extra = parse_overrides(None, args.set)
    if args.enforce_eager:
        extra["enforce_eager"] = True
    serve(
        args.model,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        backend=args.backend,
        data_dir=args.data,
        dataset=args.dataset,
        drain_seconds=args.drain_seconds,
        **extra,
    )


def cmd_batch(args) -> None:
    import json

    from serving.batch import BatchConfig, run_batch
    from serving.recommender import Recommender

    set_threads(args)
    rules = json.loads(args.rules) if args.rules else None
    config = BatchConfig(
        canvas=args.canvas,
        k=args.k,
        contexts=tuple(args.context or ()),
        rules=rules,
        shard_size=args.shard_size,
        max_users=args.max_users,
        exclude_history=not args.keep_history,
    )
    serving = dict(
        backend=args.backend,
        num_beams=max(args.k, 10),
        max_k=max(args.k, 10),
        max_batch=args.shard_size,
        data_dir=args.data if rules else None,
        dataset=args.dataset,
    )
    import dataclasses

    # every member is read (the data's fingerprint is the model's); --max-users cuts the lists
    data = load_data(dataclasses.replace(data_config(args, args.model), max_users=None))
    if data.fingerprint != read_json(Path(args.model) / "manifest.json")["data"]["fingerprint"]:
        console.print(
            f"[yellow]{args.model} was trained on other data than {data.path}: titles it "
            f"has no ID for are an error[/yellow]"
        )
    if args.engine == "ray":
        from serving.batch import run_batch_ray

        m = run_batch_ray(args.model, serving, data, config, args.out, workers=args.workers)
    else:
        rec = Recommender.from_pretrained(args.model, **serving)
        try:
            m = run_batch(rec, data, config, args.out)
        finally:
            rec.close()
    console.print(
        f"{m['lists']:,} lists ({m['rows']:,} rows) in {args.out}: {m['seconds']} s"
        + (f", {m['lists_per_second']} lists/s" if m["lists_per_second"] else "")
    )


def cmd_embed(args) -> None:
    from serving.embeddings import export_embeddings

    set_threads(args)
    data = load_data(data_config(args, args.model))
    m = export_embeddings(
        args.model,
        data,
        args.out,
        device=args.device,
        batch_size=args.batch_size,
        max_users=args.max_users,
        engine=args.engine,
        workers=args.workers,
    )
    console.print(
        f"{m['members']:,} member and {m['titles']:,} title embeddings ({m['dim']}-d) in "
        f"{args.out}: {m['seconds']} s"
    )


def cmd_quickstart(args) -> None:
    from sidrec.quickstart import QuickstartConfig, quickstart

    set_threads(args)
    config = config_from_args(QuickstartConfig, args.preset, args.set, dataset=args.dataset, out=args.out)
    quickstart(config, data_dir=args.data)


def cmd_refresh(args) -> None:
    from sidrec.refresh import RefreshConfig, parse_since, refresh, simulate

    set_threads(args)
    if bool(args.model) == args.simulate:
        raise SystemExit(
            "error: give either --model DIR (refresh a trained model with newer data) "
            "or --simulate (hold out the newest titles, build the old world's model, "
            "then refresh it)"
        )
    config = config_from_args(RefreshConfig, args.preset, args.set)
    if args.since is not None:
        import dataclasses

        config = dataclasses.replace(config, **parse_since(args.since))
    if args.simulate:
        simulate(data_config(args), args.out, config, results=args.results)
    else:
        refresh(args.model, data_config(args), args.out, config, results=args.results)


def cmd_catalog_update(args) -> None:
    from eval.machine import machine_info
    from sidrec.catalog import update_catalog

    set_threads(args)
    report = update_catalog(args.model, data_config(args, args.model), args.out)
    console.print(
        f"{report['added_titles']:,} new title(s) servable in {report['model']} "
        f"({report['trained_titles']:,} trained, {report['titles']:,} in all; {report['seconds']} s)"
    )
    for line in report["examples"]:
        console.print(f"  {line}")
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        write_json(
            args.results,
            {"kind": "catalog_update", **report, "command": command_line(args), "machine": machine_info()},
        )


def cmd_prompts_train(args) -> None:
    from prompt_tuning.config import PromptTuningStageConfig
    from prompt_tuning.train import train_canvas

    set_threads(args)
    config = config_from_args(PromptTuningStageConfig, args.preset, args.set, canvas=args.canvas)
    train_canvas(args.model, data_config(args), args.out, config, evaluate=not args.no_eval)


def cmd_prompts_export(args) -> None:
    from prompt_tuning.export import export_adapters

    out = export_adapters(args.model, args.adapters, args.out)
    console.print(f"servable folder with {len(args.adapters)} adapter(s): {out}")


def cmd_prompts_list(args) -> None:
    from prompt_tuning.train import find_adapters

    rows = find_adapters(args.dir)
    if not rows:
        console.print(f"no adapters under {args.dir}")
        return
    table = Table(
        "canvas", "method", "path", "base model", "tokens", "trained params", "held-out R@10 adapter", "base"
    )
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for r in rows:
        table.add_row(
            r["canvas"],
            r["method"],
            r["path"],
            r["base_model"],
            str(r["virtual_tokens"]),
            f"{r['trainable_parameters']:,}",
            fmt(r["adapter_recall@10"]),
            fmt(r["base_recall@10"]),
        )
    console.print(table)


# --------------------------------------------------------------------------- parsers


def add_stage_commands(sub: argparse._SubParsersAction) -> None:
    """One subcommand per stage command on the top parser's ``sub``."""
    ids = sub.add_parser("ids", help="semantic IDs: build, assign new titles, inspect")
    ids_sub = ids.add_subparsers(dest="ids_command", required=True)
    p = ids_sub.add_parser("build", help="embed titles, train the quantizer, write an ID artifact")
    add_data_args(p)
    p.add_argument("--out", required=True, help="artifact directory to write (replaced atomically)")
    p.add_argument("--quantizer", help="a name in semantic_ids.quantizers.QUANTIZERS (default: rqkmeans)")
    add_config_args(p, "SemanticIDConfig")
    p.set_defaults(func=cmd_ids_build)

    p = ids_sub.add_parser("assign", help="give titles new to the catalog IDs without retraining")
    add_data_args(p)
    p.add_argument("--ids", required=True, help="existing ID artifact")
    p.add_argument("--out", help="write the new version here instead of in place")
    p.set_defaults(func=cmd_ids_assign)

    p = ids_sub.add_parser("inspect", help="stats and titles that share code prefixes")
    p.add_argument("dir")
    p.add_argument("--depth", type=int, help="prefix length to group by (default: semantic levels - 1)")
    p.add_argument("--groups", type=int, default=6, help="how many groups to show")
    p.set_defaults(func=cmd_ids_inspect)

    p = sub.add_parser("pretrain", help="pretrain the foundation model on semantic-ID sequences")
    add_data_args(p)
    p.add_argument("--ids", required=True, help="ID artifact (sidrec ids build)")
    p.add_argument("--out", required=True, help="run folder: checkpoints/ and the final model/")
    p.add_argument(
        "--preset", default="small", help="preset: tiny, small (sizes), base or large (GPU recipes)"
    )
    p.add_argument("--config", help="JSON file of PretrainConfig overrides")
    add_config_args(p, "PretrainConfig", preset=False)
    p.add_argument("--max-history", type=int, default=20, help="titles of history (benchmark: 20)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument(
        "--init-from",
        metavar="MODEL_DIR",
        help="start from this model folder's weights (same layout and sizes): a warm "
        "restart with a new schedule, or fine-tuning on new data",
    )
    p.add_argument(
        "--no-fusion",
        action="store_true",
        help="skip choosing the home row's fusion weight on the validation split",
    )
    add_threads_arg(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="leave-one-out Recall/NDCG of a model folder, full catalog")
    add_data_args(p)
    p.add_argument("--model", required=True, help="model folder (run/model)")
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "valid", "train"],
        help="train: the newest training event of each member (seen in training)",
    )
    p.add_argument("--out", help="JSON report to write")
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    p.add_argument("--beams", type=int, help="beam width (default max(K, 10); never below K)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per beam-search batch")
    p.add_argument("--eval-users", type=int, help="judge only the first N members (quick looks)")
    p.add_argument("--device", default="cpu", help="torch device for decoding: cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--choose-fusion",
        action="store_true",
        help="instead: choose the home row's fusion weight on the validation split and "
        "write it into the model folder (pretrain does this after training)",
    )
    add_threads_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (and /v1/recommendations)")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $SIDREC_API_KEY)")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=backend_names())
    p.add_argument(
        "--data",
        default=os.environ.get("SIDREC_DATA_DIR"),
        help="data directory: catalog attributes for attribute rules (default: $SIDREC_DATA_DIR)",
    )
    p.add_argument("--dataset", help="sub-folder of --data (default: the model's dataset)")
    p.add_argument("--enforce-eager", action="store_true", help="skip torch.compile (faster start)")
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, how long requests in flight may take to finish",
    )
    add_config_args(
        p, "ServingConfig", preset=False, set_help="ServingConfig field, e.g. num_beams=20, max_k=50"
    )
    p.set_defaults(func=cmd_serve)

    prompts = sub.add_parser("prompts", help="adapters per canvas (soft prompts, LoRA): train, export, list")
    prompts_sub = prompts.add_subparsers(dest="prompts_command", required=True)
    p = prompts_sub.add_parser(
        "train", help="train one canvas's adapter on the frozen model (its method: --set method=...)"
    )
    add_data_args(p)
    p.add_argument("--model", required=True, help="foundation model folder")
    p.add_argument("--canvas", required=True, help="home, search, t2t or collection")
    p.add_argument("--out", required=True, help="adapter folder to write (replaced atomically)")
    add_config_args(p, "PromptTuningStageConfig")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out comparison with the base")
    add_threads_arg(p, 1)
    p.set_defaults(func=cmd_prompts_train)
    p = prompts_sub.add_parser(
        "export", help="one servable folder: soft prompts as virtual tokens, LoRAs beside them"
    )
    p.add_argument("--model", required=True, help="the base model folder the adapters were trained on")
    p.add_argument("--adapters", required=True, nargs="+", help="adapter folders (one per canvas)")
    p.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    p.set_defaults(func=cmd_prompts_export)
    p = prompts_sub.add_parser("list", help="adapters under a folder, with their held-out figures")
    p.add_argument("dir")
    p.set_defaults(func=cmd_prompts_list)

    p = sub.add_parser("quickstart", help="the main job: every stage on a real dataset, end to end")
    add_data_args(p, dataset_help="sub-folder of --data (default: ml-latest-small)", max_users=False)
    p.add_argument("--out", help="run folder (default: runs/quickstart)")
    add_config_args(p, "QuickstartConfig")
    add_threads_arg(p, 1, "torch CPU threads (1 is fastest on a busy 2-core machine)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser(
        "refresh",
        help="new titles: IDs without retraining the quantizer, a short "
        "fine-tune from the model's weights, recall before/after",
    )
    add_data_args(p)
    p.add_argument("--model", help="model folder to refresh (its data plus newer titles in --data)")
    p.add_argument(
        "--simulate",
        action="store_true",
        help="instead of --model: hold out the newest titles (new_title_share) and the "
        "interactions after them, build IDs and a model on the rest, then refresh",
    )
    p.add_argument("--out", required=True, help="folder for ids/, finetune-*/model and report.json")
    p.add_argument("--results", help="also write the report to this JSON file (benchmarks)")
    p.add_argument(
        "--since",
        help="events after this are fresh: unix seconds, an ISO date (UTC) or "
        "'all' (every event); default: the newest event the model was built "
        "from, read from its manifest",
    )
    add_config_args(p, "RefreshConfig")
    add_threads_arg(p, 1)
    p.set_defaults(func=cmd_refresh)

    catalog = sub.add_parser("catalog", help="catalog updates of a served folder")
    csub = catalog.add_subparsers(dest="catalog_command", required=True, metavar="COMMAND")
    p = csub.add_parser(
        "update",
        help="IDs for the catalog's new titles and a servable copy of the folder, without a fine-tune",
        description="Give the titles of --data that the folder has no ID for IDs from the trained "
        "quantizer, and write a copy of the folder that serves them (fresh titles: "
        "ServingConfig.fresh_share). `sidrec refresh` fine-tunes afterwards.",
    )
    add_data_args(p, dataset_help="default: the dataset in the model's manifest", max_users=False)
    p.add_argument("--model", required=True, help="model or served folder (an export with its adapters)")
    p.add_argument("--out", required=True, help="the updated folder (written atomically; not --model)")
    p.add_argument("--results", help="also write what was done and how long it took to this JSON file")
    add_threads_arg(p, None)
    p.set_defaults(func=cmd_catalog_update)
    p = sub.add_parser("embed", help="member and title embeddings to Parquet, with a faiss title index")
    add_data_args(p)
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, ...")
    p.add_argument("--batch-size", type=int, default=256)
    add_engine_args(p, "model")
    add_threads_arg(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("batch", help="precompute top-K lists for every member to Parquet (resumable)")
    add_data_args(p)
    p.add_argument("--model", required=True, help="model folder (a pretrain model/ or an exported folder)")
    p.add_argument("--out", required=True, help="folder of Parquet shards and a manifest")
    p.add_argument("--canvas", default="home", help="home, search, t2t or collection")
    p.add_argument(
        "--context",
        action="append",
        metavar="TEXT",
        help="a search query or collection theme (repeatable): one list per member and context",
    )
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--rules", help="business rules as JSON, applied to every list (serving.rules)")
    p.add_argument("--keep-history", action="store_true", help="allow titles of the history")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=backend_names())
    p.add_argument("--shard-size", type=int, default=512, help="lists per Parquet shard and decoding call")
    add_engine_args(p, "engine")
    add_threads_arg(p)
    p.set_defaults(func=cmd_batch)
