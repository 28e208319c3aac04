"""The serving process's life: engine loading, readiness, engine death, and a clean stop.

States of the engine behind a server: ``loading`` (the port is open, the model is being loaded:
liveness 200, readiness 503), ``ready``, ``draining`` (a stop signal came: finish what was accepted,
readiness 503 so a load balancer stops sending), ``dead`` (the engine is gone, e.g. its vLLM
``EngineCore`` process was killed: readiness 503 with the reason, requests 503, and the server exits
non-zero so its supervisor restarts it) and ``failed`` (loading raised).

Why SIGTERM needs care: uvicorn catches SIGTERM and SIGINT, shuts down, then re-raises the signal
it caught. For SIGINT that is a KeyboardInterrupt that runs the ``finally`` that closes the engine;
for SIGTERM the default action kills the process on the spot, so the engine's child process was
left behind (reparented to init). ``serve`` therefore installs a SIGTERM handler that raises
``Stopped``, so both signals unwind through the same cleanup; ``reap_children`` then ends any child
process still running after the engine's own shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("sidrec.serving")
WATCH_SECONDS = 0.5  # how often the server asks the engine whether it is alive


class EngineUnavailable(RuntimeError):
    """The engine cannot answer (loading, stopped, or its process died): HTTP 503, not 500."""


class Stopped(SystemExit):
    """Raised by the SIGTERM handler once uvicorn has drained: unwinds like Ctrl-C, exit code 0."""

    def __init__(self) -> None:
        super().__init__(0)


class EngineState:
    """Where the engine is in its life; read by the probes and by every request handler."""

    def __init__(self, status: str = "loading") -> None:
        self._lock = threading.Lock()
        self.status = status
        self.reason: str | None = None

    def set(self, status: str, reason: str | None = None) -> None:
        with self._lock:
            if self.status in ("dead", "failed"):  # terminal: a later drain does not hide the cause
                return
            self.status, self.reason = status, reason

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def unavailable(self) -> EngineUnavailable:
        why = {
            "loading": "the engine is still loading; retry shortly",
            "draining": "the server is shutting down",
            "dead": f"the engine is gone ({self.reason}); the server is restarting",
            "failed": f"the engine failed to load ({self.reason})",
        }.get(self.status, self.status)
        return EngineUnavailable(why)


async def watch_engine(
    failure: Callable[[], str | None],
    state: EngineState,
    on_death: Callable[[str], None],
    every: float = WATCH_SECONDS,
) -> None:
    """Poll the engine; on its death mark the state dead and call `on_death` (which stops the server)."""
    while True:
        await asyncio.sleep(every)
        if state.status != "ready":
            continue
        reason = failure()
        if reason is not None:
            state.set("dead", reason)
            log.error(
                "engine died: %s; stopping the server (exit code 1) for the supervisor to restart it", reason
            )
            on_death(reason)
            return


def install_sigterm_handler() -> Callable[[], None]:
    """SIGTERM raises ``Stopped`` (see the module doc); returns a function restoring the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame) -> None:
        raise Stopped()

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def reap_children(timeout: float = 10.0) -> list[int]:
    """Terminate (then kill) child processes that outlived the engine's shutdown; returns their pids."""
    for p in multiprocessing.active_children():
        p.join(2.0)  # a process the engine's shutdown already ended only needs reaping
    left = [p for p in multiprocessing.active_children() if p.is_alive()]
    for p in left:
        p.terminate()
    for p in left:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join(timeout)
    if left:
        log.warning("ended %d engine process(es) left after shutdown: %s", len(left), [p.pid for p in left])
    return [p.pid for p in left]


# Seconds a stopping server keeps accepting what the kernel already queued (after new connection
# attempts are refused) before it closes its listening sockets.
ACCEPT_QUEUE_DRAIN = 0.5


def refuse_new_connections(sock) -> bool:
    """Make a listening TCP socket drop new connection attempts while it stays open (Linux).

    Why by hand: closing a listening socket resets every connection the kernel has already
    completed but the server has not accepted yet; their clients sent a request and see it
    dropped. A one-instruction BPF socket filter ("drop every packet") on the listener stops new
    handshakes instead, so the server can still accept and answer the queued connections and
    only then close (clients that connect after it see the connection refused). Connections
    accepted before the filter are separate sockets and are not filtered. No library does this;
    returns False where the platform lacks socket filters (the plain close then applies).
    """
    import ctypes
    import socket
    import struct
    import sys

    if not sys.platform.startswith("linux"):
        return False
    so_attach_filter = getattr(socket, "SO_ATTACH_FILTER", 26)
    drop = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET|BPF_K, k=0
    program = struct.pack("HL", 1, ctypes.addressof(drop))  # struct sock_fprog {len; filter*}
    try:
        sock.setsockopt(socket.SOL_SOCKET, so_attach_filter, program)
    except OSError as e:
        log.warning("could not stop new connections before closing the listener: %s", e)
        return False
    return True


def draining_server(config):
    """A ``uvicorn.Server`` whose stop first refuses new connections, accepts and answers what the
    kernel already queued (``ACCEPT_QUEUE_DRAIN`` seconds), then shuts down as uvicorn does."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            listeners = [s for server in self.servers for s in server.sockets] + list(sockets or [])
            if listeners and all([refuse_new_connections(s) for s in listeners]):
                await asyncio.sleep(ACCEPT_QUEUE_DRAIN)
            await super().shutdown(sockets)

    return DrainingServer(config)


def run_in_thread(
    app: FastAPI, sockets: Sequence[Any], log_level: str = "warning"
) -> tuple[Any, threading.Thread]:
    """Start uvicorn on already-bound sockets in a background thread (tests, notebooks); returns
    (server, thread): set ``server.should_exit = True`` and join the thread to stop it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": list(sockets)}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    return server, thread
