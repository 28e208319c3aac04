"""What the serving tests share around a server: the backends an HTTP test runs on (vLLM marked and
skipped where it is not installed), a small vLLM engine, the app on a free loopback port, and the
check of a table of bad requests."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest

from serving.lifecycle import run_in_thread

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
VLLM_MARKS = (
    pytest.mark.vllm,
    pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (pip install -e '.[serving]')"),
)
BACKENDS = [pytest.param("transformers"), pytest.param("vllm", marks=VLLM_MARKS)]
# a vLLM engine that starts quickly and fits beside the tests: no compilation, a quarter GiB of KV cache
SMALL_VLLM = dict(enforce_eager=True, kv_cache_gib=0.25)


def needs_vllm(test):
    """Marked ``vllm``, and skipped where vLLM is not installed."""
    for mark in VLLM_MARKS:
        test = mark(test)
    return test


@contextmanager
def served_app(app, key: str | None = None) -> Iterator[tuple[str, httpx.Client, openai.OpenAI]]:
    """``app`` (``serving.server.create_app``) on a free loopback port until the block ends:
    (base URL, httpx client, openai client), both sending ``key`` as the bearer token."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # loopback only, a free port chosen by the OS
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server, thread = run_in_thread(app, [sock])
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60)
    try:
        yield base, http, openai.OpenAI(base_url=f"{base}/v1", api_key=key or "-", max_retries=0, timeout=60)
    finally:
        http.close()
        server.should_exit = True
        thread.join(30)


def assert_bad_requests(
    http: httpx.Client, cases: Sequence[tuple[str, dict[str, Any], int, str, str]]
) -> None:
    """Each (path, body, status, param, words): POSTed, answered ``status`` with an error naming
    ``param`` whose message holds ``words``."""
    for path, body, status, param, words in cases:
        r = http.post(path, json=body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert words in err["message"] and err["param"] == param, (body, err)
