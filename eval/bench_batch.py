"""Batch lists against the server: the same members' top-K from ``sidrec batch`` and one by one over HTTP.

    sidrec bench batch --model runs/ml/model --members 300 --k 10 --out results/serving/batch-vs-server.json

One engine (``--backend``, vLLM by default) is loaded once; then (1) ``serving.batch.run_batch``
writes the lists of the first ``--members`` members in shards, and (2) the same members are asked
one request at a time from the HTTP server (``serving.server`` on a loopback port, the app the
``sidrec serve`` command runs, a single client waiting for each answer). Both use the same
histories, rules and beam; the lists must be identical, and the report gives lists per second of
each and their ratio.
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

from core.artifacts import write_json
from core.data import DataConfig, load_data
from eval.machine import machine_info
from gen_fm.beams import beam_width
from serving.batch import BatchConfig, member_histories, read_lists, run_batch
from serving.lifecycle import run_in_thread
from serving.recommender import Recommender


def bench_batch(
    *,
    model: str,
    out: str,
    data_dir: str | None = None,
    members: int = 300,
    k: int = 10,
    backend: str = "vllm",
    shard_size: int = 64,
    command: str = "",
) -> dict:
    """Batch against one-by-one lists of the first ``members`` members; writes ``out``, returns the
    report (its ``identical_lists`` must equal its ``members``). ``command`` is recorded in it."""
    import httpx

    # fastapi and uvicorn (the serving extra): only this benchmark's own server needs them
    from serving.server import ServerSettings, create_app

    rec = Recommender.from_pretrained(
        model,
        backend=backend,
        num_beams=beam_width(k),
        max_k=beam_width(k),
        max_batch=shard_size,
        enforce_eager=True,
    )
    try:
        data = load_data(DataConfig(data_dir=data_dir, dataset=rec.manifest["data"]["dataset"]))
        users, hists = member_histories(data, rec.ids, rec.seq_config, members)
        rec.recommend(hists[0], k=k)  # warm-up: first-call compilation is not throughput
        with tempfile.TemporaryDirectory() as tmp:
            m = run_batch(
                rec,
                data,
                BatchConfig(k=k, shard_size=shard_size, max_users=members),
                Path(tmp) / "b",
                progress=False,
            )
            table = read_lists(Path(tmp) / "b").to_pylist()
        batch = {}
        for r in table:
            batch.setdefault(r["user_id"], []).append((r["rank"], r["item_id"]))
        batch = {u: [i for _, i in sorted(v)] for u, v in batch.items()}

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server, thread = run_in_thread(create_app(rec, ServerSettings()), [sock])
        try:
            client = httpx.Client(base_url=base, timeout=120)
            for _ in range(100):  # the engine thread starts with the app
                if client.get("/health").status_code == 200:
                    break
                time.sleep(0.2)
            served, t0 = {}, time.perf_counter()
            for u, h in zip(users, hists):
                r = client.post("/v1/recommendations", json={"history": h, "k": k, "user_id": u})
                r.raise_for_status()
                served[u] = [x["item_id"] for x in r.json()["items"]]
            server_seconds = time.perf_counter() - t0
        finally:
            server.should_exit = True
            thread.join(30)
    finally:
        rec.close()
    same = sum(batch.get(u, []) == served[u] for u in users)
    report = {
        "benchmark": "batch_vs_server",
        "model": model,
        "dataset": data.name,
        "members": len(users),
        "k": k,
        "backend": backend,
        "shard_size": shard_size,
        "batch_seconds": m["seconds"],
        "batch_lists_per_second": m["lists_per_second"],
        "server_one_by_one_seconds": round(server_seconds, 2),
        "server_lists_per_second": round(len(users) / server_seconds, 2),
        "speedup": round(m["lists_per_second"] * server_seconds / len(users), 2),
        "identical_lists": same,
        "command": command,
        "data_fingerprint": data.fingerprint,
        "machine": machine_info(),
    }
    write_json(out, report)
    print(
        f"{len(users)} members, k={k}, {backend}: batch {report['batch_lists_per_second']} "
        f"lists/s, server one by one {report['server_lists_per_second']} lists/s "
        f"({report['speedup']}x); identical lists: {same}/{len(users)}"
    )
    return report
