"""``sidrec bench ids``: semantic-ID building, timed (``eval.bench_ids``).

Its own module, apart from ``sidrec.handlers.bench``: a cold run's wall time includes importing the
sentence encoder's libraries (transformers), which the other benchmarks' imports would load first.
"""

from __future__ import annotations

from core.overrides import config_from_args
from eval.bench_ids import bench_ids
from semantic_ids.config import SemanticIDConfig
from sidrec.arguments import call_with_args


def cmd_bench_ids(args) -> int:
    config = config_from_args(SemanticIDConfig, None, args.set, quantizer=args.quantizer)
    call_with_args(bench_ids, args, config=config)
    return 0
