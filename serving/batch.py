"""Precomputed lists for every member: ``sidrec batch`` writes top-K per member (and per context) to Parquet.

The same ``Recommender`` as the server (constrained decoding, business rules, canvas contexts and
their candidate sets), asked many members at a time. Histories are each member's latest events in
the data (the most recent ``max_history`` form the prompt; all are excluded unless ``exclude_history``
is off). Output: ``part-00000.parquet ...`` (one shard per ``shard_size`` members x contexts, written
atomically) and ``manifest.json`` (model and its hash, canvas, contexts, k, rules, data fingerprint,
shards, rows and throughput; written when the job ends).
Columns: ``user_id``, ``context`` (the query or theme; "" for home), ``rank`` (1 = best),
``item_id``, ``title``, ``score``, ``semantic_id``; a member whose list came back short has fewer
rows. A killed job resumes: shards on disk are kept when the job is the same (model, data, canvas,
contexts, k, rules, shard size), and a different job in the same folder is refused. Two engines
write the same shards and resume each other's folder: ``run_batch``, a loop in this process, and
``run_batch_ray`` (``--engine ray``), a Ray Data pipeline whose actors each hold a ``Recommender``,
on a local Ray or the cluster ``ray.init`` finds."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.artifacts import manifest_hash, write_json
from core.sequences import build_sequences
from gen_fm.dataset import catalog_to_sid_rows, to_sid_rows
from gen_fm.model import load_model
from prompt_tuning.canvases import get_canvas
from serving.backends.registry import DEFAULT_BACKEND
from serving.ray_data import ray_map, start_ray
from serving.recommender import Recommender
from serving.requests import RecommendationRequest

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
        spec = get_canvas(self.canvas)
        if spec.requires_context and not self.contexts:
            raise ValueError(
                f"the {self.canvas} canvas needs contexts (--context): one list is made "
                f"per member and {spec.context_field}"
            )
        if not spec.requires_context and self.contexts:
            raise ValueError(f"the {self.canvas} canvas takes no contexts, got {list(self.contexts)}")


def member_histories(
    data, ids, seq_config, max_users: int | None = None
) -> tuple[list[str], list[list[str]]]:
    """Every member's events as title ids, oldest first (the whole history; prompts keep the tail)."""
    seqs = build_sequences(data, seq_config)
    sid_rows = catalog_to_sid_rows(data, ids)
    n = len(seqs) if max_users is None else min(max_users, len(seqs))
    users, hists = [], []
    for u in range(n):
        rows = to_sid_rows(seqs.items(u), sid_rows)
        users.append(seqs.user_ids[u])
        hists.append([ids.item_ids[r] for r in rows])
    return users, hists


@dataclass
class _Plan:
    """A job cut into shards, checked against what its folder already holds."""

    out: Path
    job: dict[str, Any]
    members: int
    pairs: list[tuple[str, list[str], str | None]]  # (user, history, context) per list
    shards: list[list[tuple[str, list[str], str | None]]]

    def path(self, s: int) -> Path:
        return shard_path(self.out, s)


def shard_path(out: Path, s: int) -> Path:
    return out / f"part-{s:05d}.parquet"


def _plan(model_dir: str | Path, ids, seq_config, data, config: BatchConfig, out_dir: str | Path) -> _Plan:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    users, hists = member_histories(data, ids, seq_config, config.max_users)
    job = {
        "model": str(model_dir),
        "model_manifest": manifest_hash(model_dir),
        "data_fingerprint": data.fingerprint,
        "dataset": data.name,
        "config": asdict(config),
    }
    job_path = out / _JOB_FILE
    if job_path.is_file():
        before = json.loads(job_path.read_text())
        if before != json.loads(json.dumps(job)):
            raise ValueError(
                f"{out} holds shards of another batch job (model, data or settings "
                f"differ): use a new --out, or delete it to start over"
            )
    elif any(out.glob("part-*.parquet")):
        raise ValueError(f"{out} holds Parquet shards of an unknown job: use a new --out")
    else:
        write_json(job_path, job)
    contexts: Sequence[str | None] = config.contexts or (None,)
    pairs = [(u, h, c) for c in contexts for u, h in zip(users, hists)]
    shards = [pairs[i : i + config.shard_size] for i in range(0, len(pairs), config.shard_size)]
    return _Plan(out, job, len(users), pairs, shards)


def write_shard(
    rec, config: BatchConfig, shard: Sequence[tuple[str, list[str], str | None]], path: Path
) -> tuple[int, int]:
    """Decode one shard's lists with ``rec`` and write them atomically; (rows, short lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    field_name = get_canvas(config.canvas).context_field if config.contexts else None
    reqs = [
        RecommendationRequest(
            history=list(h),
            canvas=config.canvas,
            k=config.k,
            user_id=u,
            exclude_history=config.exclude_history,
            rules=config.rules,
            **({field_name: c} if field_name else {}),
        )
        for u, h, c in shard
    ]
    results = rec.recommend_batch(reqs)
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("context", pa.string()),
            ("rank", pa.int16()),
            ("item_id", pa.string()),
            ("title", pa.string()),
            ("score", pa.float32()),
            ("semantic_id", pa.string()),
        ]
    )
    cols: dict[str, list] = {name: [] for name in schema.names}
    short = 0
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
    return table.num_rows, short


def _run(
    plan: _Plan,
    config: BatchConfig,
    write: Callable[[list[int]], tuple[int, int]],
    backend: str,
    engine: dict[str, Any],
) -> dict[str, Any]:
    """The job around either engine: find the shards already on disk (an earlier run of the job),
    ``write`` the others (their indices -> rows and short lists written), then the manifest."""
    import pyarrow.parquet as pq

    on_disk = [plan.path(s).is_file() for s in range(len(plan.shards))]
    todo = [s for s, there in enumerate(on_disk) if not there]
    rows = sum(pq.read_metadata(plan.path(s)).num_rows for s, there in enumerate(on_disk) if there)
    t0 = time.perf_counter()
    written, short = write(todo)
    seconds = time.perf_counter() - t0
    done_now = sum(len(plan.shards[s]) for s in todo)
    manifest = {
        **plan.job,
        "kind": "batch_lists",
        "members": plan.members,
        "contexts": list(config.contexts),
        "lists": len(plan.pairs),
        "rows": rows + written,
        "shards": len(plan.shards),
        "shards_resumed": len(plan.shards) - len(todo),
        "short_lists_this_run": short,
        "backend": backend,
        "engine": engine,
        "seconds": round(seconds, 2),
        "lists_per_second": round(done_now / seconds, 2) if done_now and seconds > 0 else None,
    }
    write_json(plan.out / BATCH_MANIFEST, manifest)
    return manifest


def run_batch(rec, data, config: BatchConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Write the lists of ``config`` for every member of ``data`` with ``rec`` (a ``Recommender``),
    one shard after another in this process."""
    from tqdm.auto import tqdm

    plan = _plan(rec.config.model_dir, rec.ids, rec.seq_config, data, config, out_dir)

    def write(todo: list[int]) -> tuple[int, int]:
        rows, short = 0, 0
        bar = tqdm(total=len(plan.pairs), desc=f"batch {config.canvas}", unit="list", disable=not progress)
        bar.update(len(plan.pairs) - sum(len(plan.shards[s]) for s in todo))  # resumed shards
        for s in todo:
            n, sh = write_shard(rec, config, plan.shards[s], plan.path(s))
            rows, short = rows + n, short + sh
            bar.update(len(plan.shards[s]))
        bar.close()
        return rows, short

    return _run(plan, config, write, rec.config.engine.backend, {"name": "local"})


def run_batch_ray(
    model_dir: str | Path,
    serving: dict[str, Any],
    data,
    config: BatchConfig,
    out_dir: str | Path,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """The same job as ``run_batch`` as a Ray Data pipeline: the shards still to write are a
    dataset, mapped by ``workers`` actors that each hold one ``Recommender`` (built from
    ``model_dir`` and the ``serving`` keyword arguments of ``Recommender.from_pretrained``) and
    write each shard with ``write_shard``, so both engines leave the same Parquet files and resume
    each other's folders. This is the pattern vLLM documents for batch inference with Ray Data
    (a class-based ``map_batches`` holding the engine); the cluster is the one ``ray.init`` finds
    (``RAY_ADDRESS``), else a local one."""
    import ray

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    gm = load_model(model_dir)
    plan = _plan(model_dir, gm.ids, gm.seq_config, data, config, out_dir)
    del gm

    def write(todo: list[int]) -> tuple[int, int]:
        if not todo:
            return 0, 0
        start_ray()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        shards = ray.put(plan.shards)  # the actors read the requests from the object store
        model, folder = str(model_dir), plan.out
        import torch

        threads = torch.get_num_threads()  # Ray gives an actor 1 thread: keep the driver's sums

        class ShardWriter:  # one per actor: the engine is built once and reused for its shards
            def __init__(self) -> None:
                import torch

                torch.set_num_threads(threads)
                self.rec = Recommender.from_pretrained(model, **serving)
                self.shards = ray.get(shards)

            def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
                out: dict[str, list] = {"shard": [], "rows": [], "short": []}
                for s in batch["shard"].tolist():
                    n, sh = write_shard(self.rec, config, self.shards[s], shard_path(folder, s))
                    for key, value in (("shard", s), ("rows", n), ("short", sh)):
                        out[key].append(value)
                return out

        done = ray_map([{"shard": s} for s in todo], ShardWriter, workers)
        if sorted(d["shard"] for d in done) != todo:
            raise RuntimeError(f"the Ray pipeline wrote {len(done)} of {len(todo)} shards")
        return sum(d["rows"] for d in done), sum(d["short"] for d in done)

    engine = {"name": "ray", "workers": workers, "ray": ray.__version__}
    return _run(plan, config, write, serving.get("backend", DEFAULT_BACKEND), engine)


def read_lists(out_dir: str | Path):
    """All shards of a batch folder as one pyarrow table (user_id, context, rank, ...)."""
    import pyarrow.parquet as pq

    files = sorted(Path(out_dir).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no part-*.parquet shards in {out_dir}")
    return pq.ParquetDataset([str(f) for f in files]).read()


__all__ = [
    "BATCH_MANIFEST",
    "BatchConfig",
    "member_histories",
    "read_lists",
    "run_batch",
    "run_batch_ray",
    "write_shard",
]
