"""``sidrec ids build | assign | inspect``: the semantic-ID artifact of stage 1."""

from __future__ import annotations

from core.data import load_data
from core.overrides import config_from_args
from semantic_ids.builder import assign_new, build_ids
from semantic_ids.config import SemanticIDConfig
from semantic_ids.ids import SemanticIDs
from sidrec.arguments import console, data_config
from sidrec.quickstart import show_stats


def cmd_ids_build(args) -> None:
    config = config_from_args(SemanticIDConfig, args.preset, args.set, quantizer=args.quantizer)
    data = load_data(data_config(args))
    for line in data.report.lines():
        console.print(f"[dim]{line}[/dim]")
    ids = build_ids(data, config, args.out)
    console.print(f"wrote {args.out}")
    show_stats(ids)


def cmd_ids_assign(args) -> None:
    data = load_data(data_config(args))
    ids, new = assign_new(args.ids, data, args.out)
    console.print(f"{len(new)} new title(s) got IDs; map version {ids.version} at {args.out or args.ids}")
    for iid in new[:10]:
        console.print(f"  {iid}  {ids.layout.sid_string(ids.sid(iid))}  {ids.title(iid)}")


def cmd_ids_inspect(args) -> None:
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
