"""``sidrec pretrain`` and ``sidrec eval``: the foundation model of stage 2 and its offline metrics."""

from __future__ import annotations

from core.data import load_data
from core.overrides import parse_overrides
from core.sequences import SequenceConfig
from eval.config import EvalConfig
from eval.next_title import choose_fusion, describe_fusion, evaluate_model
from gen_fm.config import PretrainConfig
from gen_fm.train import pretrain
from prompt_tuning.canvases import pretraining_mixture
from sidrec.arguments import console, data_config, set_threads


def cmd_pretrain(args) -> None:
    set_threads(args)
    overrides = parse_overrides(args.config, args.set)
    try:
        config = PretrainConfig.from_preset(args.preset, **overrides)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: invalid PretrainConfig: {e}") from e
    seq = SequenceConfig(max_history=args.max_history)
    data, extra = data_config(args), None
    if config.augment.canvas_mix:  # the canvas stage builds the mixture's rows (gen_fm does not know it)
        data = load_data(data)
        extra = pretraining_mixture(data, seq, args.ids, config)
    model_dir = pretrain(
        data, seq, args.ids, args.out, config, resume=args.resume, init_from=args.init_from, extra_rows=extra
    )
    console.print(f"model folder: {model_dir}")
    if not args.no_fusion:
        show_fusion(choose_fusion(model_dir, data_config(args)))


def show_fusion(fusion: dict) -> None:
    for line in describe_fusion(fusion):
        console.print(line)


def cmd_eval(args) -> None:
    set_threads(args)
    if args.choose_fusion:
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
            ranks_out=args.ranks_out,
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
