"""Loopback load test of the HTTP server: concurrent clients for a fixed time, errors and memory.

    sidrec bench load --model runs/beauty-small/model --backend vllm --clients 8 --seconds 180 \
        --out results/serving/load-amazon-beauty-small-cpu.json

The server runs in this process on 127.0.0.1 (an ephemeral port); each client is a thread with its
own ``httpx`` connection sending ``POST /v1/recommendations`` with real test-split histories, a
share of them with rules. Bounded by time and by request count; it stops by itself. Reports
requests, errors by status, p50/p99 latency, throughput, and the resident memory of the server
and its vLLM engine processes sampled over the run (flat memory = no leak under load).
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from pathlib import Path

import numpy as np

from core.artifacts import write_json
from core.data import DataConfig, load_data
from core.sequences import build_sequences, leave_one_out
from eval.machine import machine_info
from gen_fm.model import load_model
from serving.lifecycle import run_in_thread
from serving.recommender import Recommender


def _histories(model_dir: str, n: int, seed: int) -> list[dict]:
    gen = load_model(model_dir, verify=False)
    data = load_data(DataConfig(dataset=gen.manifest["data"]["dataset"]))
    split = leave_one_out(build_sequences(data, gen.seq_config), gen.seq_config)
    ex = split.examples("test")
    ids = data.catalog["item_id"]
    rng = random.Random(seed)
    picks = rng.sample(range(len(ex.users)), min(n, len(ex.users)))
    return [
        {"history": [ids[r] for r in ex.histories[i]], "user_id": split.sequences.user_ids[ex.users[i]]}
        for i in picks
    ]


def bench_load(
    *,
    model: str,
    out: str,
    backend: str = "vllm",
    clients: int = 8,
    seconds: float = 180.0,
    max_requests: int = 100_000,
    k: int = 10,
    command: str = "",
) -> dict:
    """``clients`` threads against the server for ``seconds`` (at most ``max_requests`` requests);
    writes ``out`` and returns the report (it passes with ``error_count`` 0 and ``health_after``
    200). ``command`` is recorded in it."""
    import httpx
    import psutil

    # fastapi and uvicorn (the serving extra): only this benchmark's own server needs them
    from serving.server import ServerSettings, create_app

    rec = Recommender.from_pretrained(model, backend=backend, enforce_eager=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # loopback only
    port = sock.getsockname()[1]
    server, thread = run_in_thread(create_app(rec, ServerSettings()), [sock])
    url = f"http://127.0.0.1:{port}/v1/recommendations"
    bodies = _histories(model, 500, seed=0)
    proc = psutil.Process(os.getpid())

    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    count = [0]
    stop_at = time.monotonic() + seconds

    def client(cid: int) -> None:
        rng = random.Random(cid)
        with httpx.Client(timeout=120.0) as http:
            while time.monotonic() < stop_at:
                with lock:
                    if count[0] >= max_requests:
                        return
                    count[0] += 1
                body = dict(rng.choice(bodies), k=k)
                if rng.random() < 0.3:
                    body["rules"] = {"diversity": {"max_per_group": 3, "group_by": "sid_prefix"}}
                t0 = time.perf_counter()
                try:
                    r = http.post(url, json=body)
                    key = (
                        None
                        if r.status_code == 200 and len(r.json()["items"]) == k
                        else f"http {r.status_code}"
                        if r.status_code != 200
                        else "short list"
                    )
                except httpx.HTTPError as e:
                    key = type(e).__name__
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if key:
                        errors[key] = errors.get(key, 0) + 1

    def total_rss() -> int:  # the server and vLLM's engine/worker processes
        rss = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return rss

    rss = [(0.0, total_rss())]
    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t_start = time.monotonic()
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        time.sleep(5)
        rss.append((time.monotonic() - t_start, total_rss()))
        print(
            f"[load] {rss[-1][0]:5.0f}s  {len(latencies)} requests  {sum(errors.values())} errors  "
            f"rss {rss[-1][1] / 2**20:.0f} MiB",
            flush=True,
        )
    wall = time.monotonic() - t_start
    health = httpx.get(f"http://127.0.0.1:{port}/health").status_code
    server.should_exit = True
    thread.join(timeout=30)

    lat = np.asarray(latencies)
    mid = [m for t, m in rss if t >= wall / 2] or [rss[-1][1]]
    report = {
        "benchmark": "serving_load",
        "command": command,
        "machine": machine_info(),
        "backend": backend,
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": int(len(lat)),
        "errors": errors,
        "error_count": int(sum(errors.values())),
        "health_after": health,
        "throughput_rps": round(len(lat) / wall, 2),
        "p50_s": round(float(np.percentile(lat, 50)), 4) if len(lat) else None,
        "p99_s": round(float(np.percentile(lat, 99)), 4) if len(lat) else None,
        "rss_mib": [[round(t, 1), round(m / 2**20, 1)] for t, m in rss],
        "rss_growth_second_half_mib": round((max(mid) - min(mid)) / 2**20, 1),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(
        f"wrote {out}: {len(lat)} requests, {report['error_count']} errors, "
        f"p50 {report['p50_s']}s p99 {report['p99_s']}s, rss growth (2nd half) "
        f"{report['rss_growth_second_half_mib']} MiB"
    )
    return report
