"""``sidrec report``: every results file as one markdown page with PNG plots (``eval.report``).

Its own module so that the report imports no torch (matplotlib only, inside ``eval.report``).
"""

from __future__ import annotations

import json
import sys

from eval.report import ReportError, build_report


def cmd_report(args) -> int:
    try:
        path = build_report(args.results, args.out)
    except ReportError as e:
        print(f"sidrec report: error: {e}", file=sys.stderr)
        return 2
    skipped = json.loads((path.parent / "manifest.json").read_text()).get("skipped") or {}
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    print(f"report written to {path}")
    return 0
