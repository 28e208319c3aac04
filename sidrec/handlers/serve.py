"""``sidrec serve``: the OpenAI-compatible HTTP server of stage 4.

Its own module because ``serving.server`` imports fastapi (the serving extra): no other command
needs it installed.
"""

from __future__ import annotations

from core.overrides import parse_overrides
from serving.server import serve


def cmd_serve(args) -> None:
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
