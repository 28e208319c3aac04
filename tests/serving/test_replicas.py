"""The path past one machine: replicas hold no state, so a load balancer may send any request to any
of them. Two independent servers (each its own engine) behind a round-robin client must give every
request the same answer as one server, whatever the order, and a bad request on one hurts neither."""

from __future__ import annotations

import contextlib
import itertools

import httpx
import pytest

from serving.recommender import Recommender
from serving.server import ServerSettings, create_app
from tests.serving.servers import served_app

TITLES = [f"tt{i:03d}" for i in range(12)]


@pytest.fixture(scope="module")
def replicas(tiny_model_dir):
    with contextlib.ExitStack() as stack:
        bases = []
        for _ in range(2):
            rec = Recommender.from_pretrained(tiny_model_dir, backend="transformers", num_beams=5, max_k=10)
            stack.callback(rec.close)  # after its server has stopped
            base, _, _ = stack.enter_context(served_app(create_app(rec, ServerSettings())))
            bases.append(base)
        yield bases


def _ask(client: httpx.Client, base: str, history: list[str], user: str) -> list[str]:
    r = client.post(
        f"{base}/v1/recommendations", json={"history": history, "canvas": "home", "k": 5, "user_id": user}
    )
    assert r.status_code == 200, r.text
    return [it["item_id"] for it in r.json()["items"]]


def test_round_robin_replicas_agree_and_keep_no_state(replicas):
    requests = [(TITLES[i : i + 3], f"member-{i}") for i in range(8)]
    with httpx.Client(timeout=60) as client:
        alone = [_ask(client, replicas[0], h, u) for h, u in requests]
        rr = itertools.cycle(replicas[::-1])  # the other replica first, then alternate
        spread = [_ask(client, next(rr), h, u) for h, u in requests]
        again = [_ask(client, next(rr), h, u) for h, u in reversed(requests)][::-1]
        bad = client.post(f"{replicas[1]}/v1/recommendations", json={"history": ["no-such-title"], "k": 5})
        assert bad.status_code == 400
        after = [_ask(client, replicas[1], h, u) for h, u in requests]
    assert alone == spread == again == after
    assert all(len(x) == 5 for x in alone)
