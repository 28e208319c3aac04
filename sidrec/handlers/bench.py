"""``sidrec bench ...`` (all but ``bench ids``) and ``sidrec baseline``: thin wrappers over ``eval``.

Each calls a public function of ``eval`` (``eval.bench_serving.bench_serving``,
``eval.baselines.run_baseline`` ...), which does the work and writes the results file; the handler
passes its own command line in, for the file to record, and turns the report into an exit status
(1 when a benchmark's own check fails).
"""

from __future__ import annotations

from core.artifacts import write_json
from core.overrides import parse_overrides
from core.sequences import SequenceConfig
from eval.baselines import run_baseline
from eval.bench_batch import bench_batch
from eval.bench_canvases import bench_canvases
from eval.bench_embeddings import bench_embeddings
from eval.bench_load import bench_load
from eval.bench_serving import bench_serving
from eval.config import EvalConfig
from eval.member_ranks import compare_member_ranks, side_label
from eval.new_titles import bench_new_title_pool
from eval.unseen_titles import UnseenConfig
from gen_fm.config import PretrainConfig
from sidrec.arguments import call_with_args, command_line, data_config, set_threads
from sidrec.unseen_titles import run_unseen_titles


def cmd_bench_serving(args) -> int:
    report = call_with_args(bench_serving, args, torch_compile=args.compile)
    return 0 if report["invalid_ids"] == 0 and report["rule_violations"] == 0 else 1


def cmd_bench_load(args) -> int:
    report = call_with_args(bench_load, args)
    return 0 if report["error_count"] == 0 and report["health_after"] == 200 else 1


def cmd_bench_batch(args) -> int:
    report = call_with_args(bench_batch, args)
    return 0 if report["identical_lists"] == report["members"] else 1


def cmd_bench_new_title_pool(args) -> int:
    call_with_args(bench_new_title_pool, args, cutoff_counts=tuple(args.cutoffs))
    return 0


def cmd_bench_unseen_titles(args) -> int:
    set_threads(args)
    try:
        pretrain_config = PretrainConfig.from_preset(args.preset, **parse_overrides(None, args.set))
        config = UnseenConfig(
            share=args.share,
            seed=args.seed,
            ks=tuple(args.ks),
            beams=args.beams,
            fresh_shares=tuple(args.fresh_shares),
            warm_users=args.warm_users,
            batch_size=args.batch_size,
        )
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    run_unseen_titles(
        data_config(args),
        SequenceConfig(max_history=args.max_history),
        pretrain_config,
        config,
        work=args.work or f"runs/unseen-{args.dataset}-s{args.seed}",
        out=args.out,
        command=command_line(args),
    )
    return 0


def cmd_bench_embeddings(args) -> int:
    call_with_args(bench_embeddings, args)
    return 0


def cmd_bench_canvases(args) -> int:
    set_threads(args)
    call_with_args(
        bench_canvases,
        args,
        canvases=[c.strip() for c in args.canvases.split(",") if c.strip()],
        overrides=parse_overrides(None, args.set),
        full_finetune=not args.no_full_finetune,
        title_tags=not args.no_tags,
    )
    return 0


def cmd_baseline(args) -> int:
    set_threads(args)
    report = run_baseline(
        args.kind,
        data_config(args),
        SequenceConfig(max_history=args.max_history),
        args.out,
        EvalConfig(ks=tuple(args.ks), batch_size=args.batch_size, device=args.device),
        command=["sidrec", *getattr(args, "argv", [])],
        ids_dir=args.ids,
        ranks_out=args.ranks_out,
        **parse_overrides(None, args.set),
    )
    for split, m in report["metrics"].items():
        print(f"{split}: " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    print(f"params {report['params']:,}  train {report['train_seconds']:.1f}s  -> {args.out}")
    return 0


def cmd_compare(args) -> int:
    try:
        result = compare_member_ranks(args.a, args.b, tuple(args.ks))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from e
    print(
        f"{result['dataset']} {result['split']}: a = {side_label(result['a'])}, b = {side_label(result['b'])}"
    )
    for k in args.ks:
        f = result[f"@{k}"]
        for m in ("recall", "ndcg"):
            key = f"{m}@{k}"
            print(
                f"  {key:<10} a {f[key + '_a']:.4f}  b {f[key + '_b']:.4f}  "
                f"a - b {f[key + '_diff']:+.4f} (paired SE {f[key + '_diff_se']:.4f}, {f['members']:,} members)"
            )
            for side in ("a", "b"):
                if key + f"_{side}_runs" in f:
                    runs = "  ".join(f"{x:.4f}" for x in f[key + f"_{side}_runs"])
                    print(f"             {side}, run by run: {runs}")
            if key + "_diff_seed_se" in f:
                print(f"             SE of a - b over the runs' figures {f[key + '_diff_seed_se']:.4f}")
            elif key + "_a_runs" in f or key + "_b_runs" in f:
                print("             (no SE over the runs: it needs two runs or more on both sides)")
    if args.out:
        write_json(args.out, {**result, "command": command_line(args)})
    return 0
