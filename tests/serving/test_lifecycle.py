"""The server as a process manager treats it: SIGTERM under load drains and leaves no engine process
behind; a killed engine turns readiness 503 and the server exits non-zero, never answering 500.

Each test starts the real ``serve`` in a subprocess on a loopback port, as ``sidrec serve`` does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.servers import BACKENDS, needs_vllm
from tests.serving.tiny_model import NUM_TITLES

TITLES = [f"tt{i:03d}" for i in range(NUM_TITLES)]
DRAIN = 20  # drain_seconds given to the server


def children(pid: int) -> list[int]:
    """Every descendant of `pid`, read from /proc (no psutil needed)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start(model_dir: Path, backend: str, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:  # a free loopback port (released just before the server binds it)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    extra = ", enforce_eager=True, kv_cache_gib=0.25" if backend == "vllm" else ""
    code = (
        f"from serving.server import serve\n"
        f"if __name__ == '__main__':\n"
        f"    serve({str(model_dir)!r}, host='127.0.0.1', port={port}, backend={backend!r}, "
        f"log_level='warning', drain_seconds={DRAIN}, num_beams=5, max_k=10{extra})\n"
    )
    env = dict(
        os.environ,
        SIDREC_CACHE_DIR=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    env.pop("SIDREC_API_KEY", None)
    script = tmp_path / "serve_it.py"
    script.write_text(code)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    live = False
    for _ in range(480):  # at most ~240 s for imports and engine start on a busy machine
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}: {(tmp_path / 'server.log').read_text()}")
        try:
            live = live or httpx.get(f"{base}/health/live", timeout=2).status_code == 200
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("server did not become ready")
    return proc, base


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def ask(base: str, i: int) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/recommendations",
        timeout=60,
        json={"history": [TITLES[i % NUM_TITLES], TITLES[(3 * i + 1) % NUM_TITLES]], "k": 5},
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_under_load_answers_every_accepted_request_and_leaves_no_process(
    backend, tiny_model_dir, tmp_path
):
    proc, base = start(tiny_model_dir, backend, tmp_path)
    try:
        assert httpx.get(f"{base}/health/live").json()["engine"] == "ready"
        assert ask(base, 0).status_code == 200  # a warm engine, as in service (the first call is slow)
        family = children(proc.pid)
        if backend == "vllm":
            assert family, "the vLLM engine runs in a child process"
        answered, refused, broken = [], [], []
        halt = threading.Event()

        def client(c: int) -> None:  # 8 clients on loopback, each sending until the server is gone
            i = c
            while not halt.is_set():
                try:
                    answered.append(ask(base, i).status_code)
                except httpx.ConnectError:
                    refused.append(i)  # not accepted: the listening socket is closed
                    return
                except httpx.TransportError as e:  # accepted, then dropped: what must not happen
                    broken.append(repr(e))
                    return
                i += 8

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # requests in flight
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(DRAIN + 60)
        took = time.monotonic() - t0
        halt.set()
        for t in threads:
            t.join(60)
        log = (tmp_path / "server.log").read_text()
        assert code == 0, log
        assert took < DRAIN + 30, f"stop took {took:.1f}s"
        assert answered and set(answered) <= {200, 503}, (answered, log)
        assert not broken, broken
        time.sleep(1.0)
        assert [p for p in family if running(p)] == [], "a child process outlived the server"
    finally:
        stop(proc)


@needs_vllm
def test_a_killed_engine_turns_readiness_503_and_the_server_exits_non_zero(tiny_model_dir, tmp_path):
    proc, base = start(tiny_model_dir, "vllm", tmp_path)
    try:
        engines = [
            p
            for p in children(proc.pid)
            if "EngineCore" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
            or "EngineCore" in Path(f"/proc/{p}/comm").read_text()
        ]
        assert engines, "no VLLM::EngineCore child found"
        assert ask(base, 1).status_code == 200
        os.kill(engines[0], signal.SIGKILL)
        t0, seen = time.monotonic(), []
        while time.monotonic() - t0 < 30 and proc.poll() is None:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                seen.append((round(time.monotonic() - t0, 2), health.status_code, ask(base, 2).status_code))
            except httpx.TransportError:
                break  # the server is gone
            time.sleep(0.2)
        first_503 = next((t for t, h, _ in seen if h == 503), None)
        assert first_503 is None or first_503 <= 5.0, seen
        assert all(r in (200, 503) for _, _, r in seen), seen  # never a 500
        assert proc.wait(30) == 1, (tmp_path / "server.log").read_text()
        assert "engine died" in (tmp_path / "server.log").read_text()
    finally:
        stop(proc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="socket filters are Linux's")
def test_a_stopping_listener_refuses_new_connections_but_keeps_the_queued_ones():
    """What a stop does before closing: no new handshakes, and what the kernel queued still talks."""
    from serving.lifecycle import refuse_new_connections

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port))  # completed, not yet accepted
    late = socket.socket()
    late.settimeout(0.5)
    try:
        assert refuse_new_connections(listener)
        with pytest.raises(OSError):  # its handshake is never answered (timeout)
            late.connect(("127.0.0.1", port))
        conn, _ = listener.accept()
        queued.sendall(b"GET")
        assert conn.recv(3) == b"GET"  # the queued connection was not reset
        conn.close()
    finally:
        for s in (queued, late, listener):
            s.close()
