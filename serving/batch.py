"""Precomputed lists for every member: ``sidrec batch`` writes top-K per member (and per context) to Parquet.

The same ``Recommender`` as the server (constrained decoding, business rules, canvas contexts and
their candidate sets), asked many members at a time instead of one request per member. Histories
are each member's latest events in the data (the most recent ``max_history`` form the prompt, the
whole history is excluded unless ``exclude_history`` is off).

Output folder::

    part-00000.parquet ...   one shard per ``shard_size`` members (x contexts), written atomically
    manifest.json            the job (model and its manifest hash, canvas, contexts, k, rules, data
                             fingerprint), shards, rows and throughput; written when the job ends

Columns: ``user_id``, ``context`` (the query or theme; "" for home), ``rank`` (1 = best),
``item_id``, ``title``, ``score``, ``semantic_id``; a member whose list came back short has fewer
rows (the manifest counts them). A killed job resumes: shards already on disk are kept when the job
is the same (same model, data, canvas, contexts, k, rules, shard size), and a different job in the
same folder is refused rather than mixed in.

Written by hand because the loop is sidrec's own (shards of requests through ``Recommender``); the
Parquet files are pyarrow's.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BATCH_MANIFEST = "manifest.json"
_JOB_FILE = ".job.json"  # the job a partly written folder belongs to (resume check)


@dataclass(frozen=True)
class BatchConfig:
    """One batch job: which lists, for whom, and how the work is cut."""

    canvas: str = "home"  # a registered canvas (prompt_tuning.canvases)
    k: int = 50
    # Contexts of the canvas: search queries or collection themes; one list per member and
    # context. () for canvases that need none (home; t2t uses each member's last title).
    contexts: tuple[str, ...] = ()
    rules: dict[str, Any] | None = None  # business rules (serving.rules JSON shape), every request
    exclude_history: bool = True
    shard_size: int = 512  # requests per Parquet shard (and per decoding call)
    max_users: int | None = None  # first N members only (quick runs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "contexts", tuple(self.contexts))
        if self.k < 1 or self.shard_size < 1:
            raise ValueError(f"k and shard_size must be >= 1, got k={self.k}, shard_size={self.shard_size}")
        from prompt_tuning.canvases import get_canvas

        spec = get_canvas(self.canvas)
        if spec.requires_context and not self.contexts:
            raise ValueError(f"the {self.canvas} canvas needs contexts (--context): one list is made "
                             f"per member and {spec.context_field}")
        if not spec.requires_context and self.contexts:
            raise ValueError(f"the {self.canvas} canvas takes no contexts, got {list(self.contexts)}")


def member_histories(data, ids, seq_config, max_users: int | None = None
                     ) -> tuple[list[str], list[list[str]]]:
    """Every member's events as title ids, oldest first (the whole history; prompts keep the tail)."""
    from gen_fm.dataset import catalog_to_sid_rows, to_sid_rows
    from core.sequences import build_sequences

    seqs = build_sequences(data, seq_config)
    sid_rows = catalog_to_sid_rows(data, ids)
    n = len(seqs) if max_users is None else min(max_users, len(seqs))
    users, hists = [], []
    for u in range(n):
        rows = to_sid_rows(seqs.items(u), sid_rows)
        users.append(seqs.user_ids[u])
        hists.append([ids.item_ids[r] for r in rows])
    return users, hists


def run_batch(rec, data, config: BatchConfig, out_dir: str | Path, progress: bool = True
              ) -> dict[str, Any]:
    """Write the lists of ``config`` for every member of ``data`` with ``rec`` (a ``Recommender``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from prompt_tuning.canvases import get_canvas
    from serving.recommender import RecommendationRequest
    from core.artifacts import manifest_hash, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    users, hists = member_histories(data, rec.ids, rec.seq_config, config.max_users)
    job = {"model": str(rec.config.model_dir), "model_manifest": manifest_hash(rec.config.model_dir),
           "data_fingerprint": data.fingerprint, "dataset": data.name, "config": asdict(config)}
    job_path = out / _JOB_FILE
    if job_path.is_file():
        before = json.loads(job_path.read_text())
        if before != json.loads(json.dumps(job)):
            raise ValueError(f"{out} holds shards of another batch job (model, data or settings "
                             f"differ): use a new --out, or delete it to start over")
    elif any(out.glob("part-*.parquet")):
        raise ValueError(f"{out} holds Parquet shards of an unknown job: use a new --out")
    else:
        write_json(job_path, job)
    contexts: Sequence[str | None] = config.contexts or (None,)
    field_name = get_canvas(config.canvas).context_field if config.contexts else None
    pairs = [(u, h, c) for c in contexts for u, h in zip(users, hists)]
    shards = [pairs[i:i + config.shard_size] for i in range(0, len(pairs), config.shard_size)]
    schema = pa.schema([("user_id", pa.string()), ("context", pa.string()), ("rank", pa.int16()),
                        ("item_id", pa.string()), ("title", pa.string()), ("score", pa.float32()),
                        ("semantic_id", pa.string())])
    t0 = time.perf_counter()
    done_now, rows_total, short, skipped_shards = 0, 0, 0, 0
    bar = tqdm(total=len(pairs), desc=f"batch {config.canvas}", unit="list", disable=not progress)
    for s, shard in enumerate(shards):
        path = out / f"part-{s:05d}.parquet"
        if path.is_file():  # resumed: this shard was written by an earlier run of the same job
            skipped_shards += 1
            rows_total += pq.read_metadata(path).num_rows
            bar.update(len(shard))
            continue
        reqs = [RecommendationRequest(history=h, canvas=config.canvas, k=config.k, user_id=u,
                                      exclude_history=config.exclude_history, rules=config.rules,
                                      **({field_name: c} if field_name else {}))
                for u, h, c in shard]
        results = rec.recommend_batch(reqs)
        cols: dict[str, list] = {name: [] for name in schema.names}
        for (u, _, c), res in zip(shard, results):
            short += len(res) < config.k
            for rank, item in enumerate(res, 1):
                cols["user_id"].append(u)
                cols["context"].append(c or "")
                cols["rank"].append(rank)
                cols["item_id"].append(item.item_id)
                cols["title"].append(item.title)
                cols["score"].append(item.score)
                cols["semantic_id"].append(item.semantic_id)
        table = pa.table(cols, schema=schema)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)  # a killed job never leaves half a shard under the final name
        rows_total += table.num_rows
        done_now += len(shard)
        bar.update(len(shard))
    bar.close()
    seconds = time.perf_counter() - t0
    manifest = {**job, "kind": "batch_lists", "members": len(users), "contexts": list(config.contexts),
                "lists": len(pairs), "rows": rows_total, "shards": len(shards),
                "shards_resumed": skipped_shards, "short_lists_this_run": short,
                "backend": rec.config.backend, "seconds": round(seconds, 2),
                "lists_per_second": round(done_now / seconds, 2) if done_now and seconds > 0 else None}
    write_json(out / BATCH_MANIFEST, manifest)
    return manifest


def read_lists(out_dir: str | Path):
    """All shards of a batch folder as one pyarrow table (user_id, context, rank, ...)."""
    import pyarrow.parquet as pq

    files = sorted(Path(out_dir).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no part-*.parquet shards in {out_dir}")
    return pq.ParquetDataset([str(f) for f in files]).read()


__all__ = ["BATCH_MANIFEST", "BatchConfig", "member_histories", "read_lists", "run_batch"]
