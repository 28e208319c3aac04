"""``sidrec batch`` and ``sidrec embed``: the platform jobs (every member's top-K lists, embeddings)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from core.artifacts import read_json
from core.data import load_data
from gen_fm.beams import beam_width
from serving.batch import BatchConfig, run_batch, run_batch_ray
from serving.embeddings import export_embeddings
from serving.recommender import Recommender
from sidrec.arguments import call_with_args, console, data_config, set_threads


def cmd_batch(args) -> None:
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
        num_beams=beam_width(args.k),
        max_k=beam_width(args.k),  # the beam's titles, all servable
        max_batch=args.shard_size,
        data_dir=args.data if rules else None,
        dataset=args.dataset,
    )
    # every member is read (the data's fingerprint is the model's); --max-users cuts the lists
    data = load_data(dataclasses.replace(data_config(args, args.model), max_users=None))
    if data.fingerprint != read_json(Path(args.model) / "manifest.json")["data"]["fingerprint"]:
        console.print(
            f"[yellow]{args.model} was trained on other data than {data.path}: titles it "
            f"has no ID for are an error[/yellow]"
        )
    if args.engine == "ray":
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
    set_threads(args)
    data = load_data(data_config(args, args.model))
    m = call_with_args(export_embeddings, args, model_dir=args.model, data=data, out_dir=args.out)
    console.print(
        f"{m['members']:,} member and {m['titles']:,} title embeddings ({m['dim']}-d) in "
        f"{args.out}: {m['seconds']} s"
    )
