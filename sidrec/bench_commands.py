"""The measuring commands of `sidrec` and their flags: ``sidrec bench ...``, ``sidrec baseline`` and
``sidrec report``.

Each command names its handler as a ``"module:function"`` string (``sidrec.handlers.bench`` and
its neighbours: thin wrappers over public functions of ``eval``), imported only when that command
runs: `sidrec --help` and argument errors answer without importing torch or transformers.
"""

from __future__ import annotations

import argparse

from serving.backends.registry import DEFAULT_BACKEND, backend_names  # the registry alone: no torch
from sidrec.arguments import PRETRAIN_SET_HELP, add_config_args, add_data_args, add_threads_arg

# eval.baselines.BASELINES, repeated so that building the parser does not import torch
# (tests/sidrec/test_cli.py keeps the two equal)
BASELINE_KINDS = ("popular", "sasrec", "sasrec-ce")
BENCHMARKS = ("serving", "load", "ids", "batch", "embeddings", "canvases", "new-title-pool", "unseen-titles")


def _add_bench_parsers(bench_sub: argparse._SubParsersAction) -> None:
    def add(
        name: str,
        help_text: str,
        *,
        module: str = "bench",
        model: str | None = None,
        out: str | None = "results JSON to write",
        out_required: bool = True,
    ) -> argparse.ArgumentParser:
        """A benchmark's parser, handled by ``sidrec.handlers.<module>:cmd_bench_<name>``; with
        `--model` (required; `model` is its help) when the benchmark reads a model folder, and
        `--out` (the results file; `out` is its help) unless it is None."""
        p = bench_sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=f"sidrec.handlers.{module}:cmd_bench_{name.replace('-', '_')}")
        if model is not None:
            p.add_argument("--model", required=True, help=model)
        if out is not None:
            p.add_argument("--out", required=out_required, help=out)
        return p

    p = add(
        "serving",
        "throughput and batch latency of the decoding backends on real member histories (eval.bench_serving)",
        model="model folder (gen_fm.model.save_model)",
        out="results JSON (e.g. results/serving/NAME.json)",
    )
    p.add_argument("--backend", choices=[*backend_names(), "both"], default="both")
    p.add_argument("--beams", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="timed batches per (backend, beams, batch)")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches before them")
    add_data_args(p, dataset_help="default: the dataset in the model's manifest", max_users=False)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument(
        "--compile",
        action="store_true",
        help="vLLM: torch.compile / CUDA graphs (default enforce_eager=True)",
    )
    p.add_argument(
        "--device", default=None, help="transformers backend device (default: cuda when available, else cpu)"
    )
    add_threads_arg(
        p,
        None,
        "torch threads of this process for the transformers backend (vLLM's CPU "
        "workers follow VLLM_CPU_OMP_THREADS_BIND)",
    )
    p.add_argument(
        "--no-unconstrained",
        dest="unconstrained",
        action="store_false",
        help="skip vLLM's built-in unconstrained beam search reference",
    )
    p.add_argument("--seed", type=int, default=0, help="member sample")

    p = add(
        "load",
        "loopback load test of the HTTP server: concurrent clients for a "
        "fixed time, errors and memory (eval.bench_load)",
        model="model folder",
    )
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=backend_names())
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--k", type=int, default=10)

    p = add(
        "ids",
        "semantic-ID building: quality figures of the codes and wall time "
        "(eval.bench_ids); writes RESULTS/<dataset>-<quantizer>[-<tag>].json",
        module="bench_ids",
        out=None,
    )
    add_data_args(p, dataset_required=True, max_users=False)
    p.add_argument(
        "--quantizer",
        default="rqvae",
        help="a name in semantic_ids.quantizers.QUANTIZERS (checked by SemanticIDConfig)",
    )
    add_config_args(p, "SemanticIDConfig", preset=False)
    p.add_argument("--tag", help="suffix of the results file for a variant (e.g. a modality mix)")
    p.add_argument("--runs", default="runs/bench", help="where the ID artifacts are written")
    p.add_argument("--results", default="results/semantic_ids")
    p.add_argument(
        "--warm",
        action="store_true",
        help="reuse the on-disk caches (default: a cold, empty cache, so the sentence "
        "encoder's time is measured)",
    )

    p = add(
        "batch",
        "batch lists against the server: the same members' top-K from "
        "`sidrec batch` and one by one over HTTP (eval.bench_batch)",
        model="model folder",
    )
    add_data_args(p, dataset=False, max_users=False)
    p.add_argument("--members", type=int, default=300)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=backend_names())
    p.add_argument("--shard-size", type=int, default=64)

    p = add(
        "embeddings",
        "do the model's embeddings carry signal? two probes "
        "against the content embedding (eval.bench_embeddings)",
        model="model folder",
    )
    add_data_args(p, dataset=False, max_users=False)
    p.add_argument("--min-members", type=int, default=20)
    p.add_argument("--max-members", type=int, default=5000, help="members in the category probe")
    p.add_argument("--pooling", default="last", help="serving.embeddings.POOLINGS")

    p = add(
        "canvases",
        "per-canvas soft prompt against the frozen base and full fine-tuning (eval.bench_canvases)",
        model="foundation model folder",
        out="results JSON (default results/prompt_tuning/<dataset>.json)",
        out_required=False,
    )
    add_data_args(p, dataset_help="dataset sub-folder (default: the model's)", max_users=False)
    p.add_argument("--canvases", default="home,search,t2t,collection")
    add_config_args(p, "PromptTuningStageConfig", preset=False)
    p.add_argument("--no-full-finetune", action="store_true")
    p.add_argument(
        "--candidates",
        action="store_true",
        help="also judge every variant inside the context's candidate set (search, "
        "collection, t2t; prompt_tuning.candidates), as the server decodes by default",
    )
    p.add_argument(
        "--neighbourhood",
        type=int,
        default=None,
        metavar="N",
        help="titles in a t2t source's candidate set (half co-engaged, then nearest by "
        "title text; default 100, as served)",
    )
    p.add_argument(
        "--no-tags",
        action="store_true",
        help="candidate sets without what members tagged titles with (the ablation; "
        "served search matches tags)",
    )
    add_threads_arg(p, 1)

    p = add(
        "new-title-pool",
        "how many members a rolling-cutoff new-title evaluation can pool: (member, cutoff) "
        "pairs whose next title is new (core.timeline.rolling_pool)",
        out="results JSON (default results/refresh/<dataset>-new-title-pool.json)",
        out_required=False,
    )
    add_data_args(p, dataset_required=True, max_users=False)
    p.add_argument(
        "--cutoffs",
        type=int,
        nargs="+",
        default=[10, 20, 40, 80],
        help="counts of cutoffs to try, each spread evenly over the time quantiles",
    )
    p.add_argument("--low", type=float, default=0.2, help="first cutoff's time quantile")
    p.add_argument("--high", type=float, default=0.98, help="last cutoff's time quantile")

    p = add(
        "unseen-titles",
        "TIGER's unseen-title protocol: hold a share of the test-target titles out of the IDs' fit "
        "and of training, give them IDs afterwards, judge cold, warm and all members "
        "(eval.unseen_titles)",
        out="results JSON (e.g. results/unseen/<dataset>-s0.json)",
    )
    add_data_args(p, dataset_required=True, max_users=False)
    p.add_argument("--share", type=float, default=0.05, help="of the distinct test-target titles held out")
    p.add_argument("--seed", type=int, default=0, help="the draw, the warm sample, the random baseline")
    p.add_argument("--preset", default="small", help="PretrainConfig preset of the model trained")
    add_config_args(p, "PretrainConfig", preset=False, set_help=PRETRAIN_SET_HELP)
    p.add_argument("--max-history", type=int, default=20, help="titles of history (benchmark: 20)")
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    p.add_argument("--beams", type=int, default=20, help="the model's beam (what the served row fuses)")
    p.add_argument("--fresh-shares", type=float, nargs="+", default=[0.1, 0.2], help="of the K slots")
    p.add_argument("--warm-users", type=int, help="a seeded sample of the warm members (default: all)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per beam-search batch")
    p.add_argument("--work", help="folder of the stages' artifacts (default runs/unseen-<dataset>-s<seed>)")
    add_threads_arg(p, 1)


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    """``bench`` (one subcommand per benchmark), ``baseline`` and ``report`` on the top parser's ``sub``."""
    bench = sub.add_parser(
        "bench",
        help="benchmarks, each writing one results file: " + ", ".join(BENCHMARKS),
        description="Benchmarks; each writes one JSON results file recording its "
        "command, config, data fingerprint and machine.",
    )
    _add_bench_parsers(bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK"))

    p = sub.add_parser("baseline", help="popular / SASRec baselines on the same split")
    p.add_argument("--kind", required=True, choices=BASELINE_KINDS)
    add_data_args(p, dataset_help="sub-folder of --data, e.g. amazon-beauty or ml-latest-small")
    p.add_argument("--max-history", type=int, default=20, help="history cap (benchmark: 20)")
    p.add_argument("--out", required=True, help="JSON report to write")
    p.add_argument("--ids", help="ID artifact whose codes represent titles (--set items=codes or both)")
    p.add_argument(
        "--ranks-out", help="also write each test member's target place (for `sidrec compare`; SASRec kinds)"
    )
    add_config_args(
        p,
        "SASRecConfig",
        preset=False,
        set_help="SASRec hyperparameter override (JSON value), repeatable; e.g. --set dropout=0.2",
    )
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    p.add_argument("--batch-size", type=int, default=256, help="members per scoring batch")
    p.add_argument("--device", default="cpu")
    add_threads_arg(p, None, "torch CPU threads (results can differ by thread count)")
    p.set_defaults(func="sidrec.handlers.bench:cmd_baseline")

    p = sub.add_parser(
        "compare",
        help="two rankings of the same members, compared member by member",
        description="The paired difference of two rankings (files written by `sidrec eval "
        "--ranks-out` or `sidrec baseline --ranks-out`, each as FILE or FILE:RANKING) with its "
        "standard error. A side may join several runs of one ranker (seeds) by commas: each "
        "member's score is its mean over them, and the runs' spread is reported beside it.",
    )
    p.add_argument(
        "a", help="FILE[:RANKING][,FILE[:RANKING]...], e.g. runs/fm-seed0.json:model,runs/fm-seed1.json:model"
    )
    p.add_argument("b", help="FILE[:RANKING][,...], e.g. runs/sasrec-test-ranks.json:history_excluded")
    p.add_argument("--ks", type=int, nargs="+", default=[10])
    p.add_argument("--out", help="JSON file to write the comparison to")
    p.set_defaults(func="sidrec.handlers.bench:cmd_compare")

    p = sub.add_parser(
        "report",
        help="results files -> a markdown page with PNG plots",
        description="Every results file as one markdown page with PNG plots "
        "(eval.report); a file it cannot read is listed and skipped.",
    )
    p.add_argument(
        "--results",
        default="results",
        metavar="DIR",
        help="folder of JSON results files, read recursively (default: results)",
    )
    p.add_argument(
        "--out", default="report", metavar="DIR", help="report folder, replaced as a whole (default: report)"
    )
    p.set_defaults(func="sidrec.handlers.report:cmd_report")
