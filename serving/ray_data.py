"""The Ray Data pattern both platform jobs share (``sidrec batch`` and ``sidrec embed`` with
``--engine ray``): work items become a dataset, mapped one item at a time by actors that each load
the model once (a class-based ``map_batches``, as vLLM documents for batch inference)."""

from __future__ import annotations

from typing import Any


def start_ray() -> None:
    """Join the cluster ``ray.init`` finds (``RAY_ADDRESS``), else start a local one, quietly."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def ray_map(items: list[dict[str, Any]], actor: type, workers: int) -> list[dict[str, Any]]:
    """Every item through ``actor`` (a class whose instances map a batch of one item), on
    ``workers`` actors of one CPU each; the rows they return, in no particular order."""
    import ray

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    start_ray()
    return (
        ray.data.from_items(items, override_num_blocks=max(len(items), 1))
        .map_batches(actor, batch_size=1, concurrency=workers, num_cpus=1)
        .take_all()
    )
