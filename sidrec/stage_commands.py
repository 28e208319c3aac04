"""The stage commands of `sidrec` and their flags: data, ids, pretrain, eval, serve, prompts,
quickstart, refresh, catalog, embed and batch.

``sidrec.cli`` puts them in the one parser (``add_stage_commands``) beside the benchmark commands
(``sidrec.bench_commands``). Each command names its handler as a ``"module:function"`` string in
``sidrec.handlers`` (thin wrappers over each stage's Python API), imported only when that command
runs: `sidrec --help` and argument errors answer without importing torch or transformers.
"""

from __future__ import annotations

import argparse
import os

from core.fetch import SOURCES  # the registry alone: no torch
from serving.backends.registry import DEFAULT_BACKEND, backend_names  # the registry alone: no torch
from sidrec.arguments import (
    PRETRAIN_SET_HELP,
    add_config_args,
    add_data_args,
    add_engine_args,
    add_threads_arg,
)


def add_stage_commands(sub: argparse._SubParsersAction) -> None:
    """One subcommand per stage command on the top parser's ``sub``."""
    data = sub.add_parser("data", help="the public datasets of the README: fetch, list")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "fetch",
        help="download, check and write one dataset into the data directory",
        description="Download a dataset's public files (resumable, checked), write its folder in the "
        "layout the loaders read, and record what was fetched in FETCHED.json.",
    )
    p.add_argument("name", choices=list(SOURCES), help="dataset to fetch")
    p.add_argument("--data", help="data directory to write into (default: $SIDREC_DATA_DIR)")
    p.add_argument("--force", action="store_true", help="fetch again even if the folder exists")
    p.add_argument("--mirror", metavar="URL", help="fetch the same file names from this base URL instead")
    p.set_defaults(func="sidrec.handlers.data:cmd_data_fetch")
    p = data_sub.add_parser("list", help="the registered datasets and whether each is present")
    p.add_argument("--data", help="data directory (default: $SIDREC_DATA_DIR)")
    p.set_defaults(func="sidrec.handlers.data:cmd_data_list")

    ids = sub.add_parser("ids", help="semantic IDs: build, assign new titles, inspect")
    ids_sub = ids.add_subparsers(dest="ids_command", required=True)
    p = ids_sub.add_parser("build", help="embed titles, train the quantizer, write an ID artifact")
    add_data_args(p)
    p.add_argument("--out", required=True, help="artifact directory to write (replaced atomically)")
    p.add_argument("--quantizer", help="a name in semantic_ids.quantizers.QUANTIZERS (default: rqkmeans)")
    add_config_args(p, "SemanticIDConfig")
    p.set_defaults(func="sidrec.handlers.ids:cmd_ids_build")

    p = ids_sub.add_parser("assign", help="give titles new to the catalog IDs without retraining")
    add_data_args(p)
    p.add_argument("--ids", required=True, help="existing ID artifact")
    p.add_argument("--out", help="write the new version here instead of in place")
    p.set_defaults(func="sidrec.handlers.ids:cmd_ids_assign")

    p = ids_sub.add_parser("inspect", help="stats and titles that share code prefixes")
    p.add_argument("dir")
    p.add_argument("--depth", type=int, help="prefix length to group by (default: semantic levels - 1)")
    p.add_argument("--groups", type=int, default=6, help="how many groups to show")
    p.set_defaults(func="sidrec.handlers.ids:cmd_ids_inspect")

    p = sub.add_parser("pretrain", help="pretrain the foundation model on semantic-ID sequences")
    add_data_args(p)
    p.add_argument("--ids", required=True, help="ID artifact (sidrec ids build)")
    p.add_argument("--out", required=True, help="run folder: checkpoints/ and the final model/")
    p.add_argument(
        "--preset", default="small", help="preset: tiny, small (sizes), base or large (GPU recipes)"
    )
    p.add_argument("--config", help="JSON file of PretrainConfig overrides (keys as --set takes them)")
    add_config_args(p, "PretrainConfig", preset=False, set_help=PRETRAIN_SET_HELP)
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
    p.set_defaults(func="sidrec.handlers.model:cmd_pretrain")

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
    p.add_argument(
        "--ranks-out", help="also write each member's target place in every ranking (for `sidrec compare`)"
    )
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    p.add_argument(
        "--beams", type=int, help="beam width (default gen_fm.beams.beam_width: max(K, 10); never below K)"
    )
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
    p.set_defaults(func="sidrec.handlers.model:cmd_eval")

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
        p,
        "ServingConfig",
        preset=False,
        set_help="ServingConfig field by name or dotted path, e.g. num_beams=20, engine.dtype=bfloat16",
    )
    p.set_defaults(func="sidrec.handlers.serve:cmd_serve")

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
    p.set_defaults(func="sidrec.handlers.prompts:cmd_prompts_train")
    p = prompts_sub.add_parser(
        "export", help="one servable folder: soft prompts as virtual tokens, LoRAs beside them"
    )
    p.add_argument("--model", required=True, help="the base model folder the adapters were trained on")
    p.add_argument("--adapters", required=True, nargs="+", help="adapter folders (one per canvas)")
    p.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    p.set_defaults(func="sidrec.handlers.prompts:cmd_prompts_export")
    p = prompts_sub.add_parser("list", help="adapters under a folder, with their held-out figures")
    p.add_argument("dir")
    p.set_defaults(func="sidrec.handlers.prompts:cmd_prompts_list")

    p = sub.add_parser("quickstart", help="the main job: every stage on a real dataset, end to end")
    add_data_args(p, dataset_help="sub-folder of --data (default: ml-latest-small)", max_users=False)
    p.add_argument("--out", help="run folder (default: runs/quickstart)")
    add_config_args(p, "QuickstartConfig")
    add_threads_arg(
        p, None, "torch CPU threads (default: torch's own, every core; 1 leaves a core to other work)"
    )
    p.set_defaults(func="sidrec.handlers.pipelines:cmd_quickstart")

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
    p.set_defaults(func="sidrec.handlers.pipelines:cmd_refresh")

    catalog = sub.add_parser("catalog", help="catalog updates of a served folder")
    csub = catalog.add_subparsers(dest="catalog_command", required=True, metavar="COMMAND")
    p = csub.add_parser(
        "update",
        help="IDs for the catalog's new titles and a servable copy of the folder, without a fine-tune",
        description="Give the titles of --data that the folder has no ID for IDs from the trained "
        "quantizer, and write a copy of the folder that serves them (fresh titles: "
        "ServingConfig.fresh.fresh_share). `sidrec refresh` fine-tunes afterwards.",
    )
    add_data_args(p, dataset_help="default: the dataset in the model's manifest", max_users=False)
    p.add_argument("--model", required=True, help="model or served folder (an export with its adapters)")
    p.add_argument("--out", required=True, help="the updated folder (written atomically; not --model)")
    p.add_argument("--results", help="also write what was done and how long it took to this JSON file")
    add_threads_arg(p, None)
    p.set_defaults(func="sidrec.handlers.pipelines:cmd_catalog_update")
    p = sub.add_parser("embed", help="member and title embeddings to Parquet, with a faiss title index")
    add_data_args(p)
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, ...")
    p.add_argument("--batch-size", type=int, default=256)
    add_engine_args(p, "model")
    add_threads_arg(p)
    p.set_defaults(func="sidrec.handlers.jobs:cmd_embed")

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
    p.set_defaults(func="sidrec.handlers.jobs:cmd_batch")
