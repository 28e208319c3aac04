"""``sidrec serve``: the OpenAI-compatible HTTP server of stage 4.

Its own module because ``serving.server`` imports fastapi (the serving extra): no other command
needs it installed.
"""

from __future__ import annotations

from core.overrides import parse_overrides
from serving.server import serve
from sidrec.arguments import call_with_args


def cmd_serve(args) -> None:
    extra = parse_overrides(None, args.set)
    if args.enforce_eager:
        extra["enforce_eager"] = True
    call_with_args(serve, args, model_dir=args.model, **extra)
