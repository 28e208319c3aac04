"""``sidrec prompts train | export | list``: the adapters per canvas of stage 3."""

from __future__ import annotations

from rich.table import Table

from core.overrides import config_from_args
from prompt_tuning.config import PromptTuningStageConfig
from prompt_tuning.export import export_adapters
from prompt_tuning.train import find_adapters, train_canvas
from sidrec.arguments import console, data_config, set_threads


def cmd_prompts_train(args) -> None:
    set_threads(args)
    config = config_from_args(PromptTuningStageConfig, args.preset, args.set, canvas=args.canvas)
    train_canvas(args.model, data_config(args), args.out, config, evaluate=not args.no_eval)


def cmd_prompts_export(args) -> None:
    out = export_adapters(args.model, args.adapters, args.out)
    console.print(f"servable folder with {len(args.adapters)} adapter(s): {out}")


def cmd_prompts_list(args) -> None:
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
