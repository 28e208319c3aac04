"""The engine thread of the server and its Prometheus series.

One thread owns the Recommender because neither vLLM's ``LLM`` nor a torch model may be driven from
several threads. HTTP handlers queue jobs (one job = the requests of one HTTP call); the thread takes
everything queued (up to ``ServingConfig.engine.max_batch`` requests), validates each job alone, so a bad
request fails only itself, and decodes the rest in one ``Recommender.run`` call: concurrent requests
share engine steps instead of waiting for each other's.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.lifecycle import EngineUnavailable
from serving.recommender import Recommender
from serving.requests import RecommendationRequest

log = logging.getLogger("sidrec.serving")


class Metrics:
    """Prometheus series of one app (its own registry, so several apps in a process do not clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sidrec_http_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "code"],
            registry=r,
        )
        self.errors = Counter(
            "sidrec_http_errors", "HTTP answers with a 4xx or 5xx status", ["endpoint", "code"], registry=r
        )
        self.latency = Histogram(
            "sidrec_http_request_duration_seconds",
            "HTTP request latency",
            ["endpoint"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch = Histogram(
            "sidrec_engine_batch_requests",
            "requests decoded in one engine call",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.queue = Gauge("sidrec_engine_queue_depth", "engine jobs waiting", registry=r)


@dataclass
class _Job:
    requests: list[RecommendationRequest]
    future: concurrent.futures.Future  # -> list[RecommendationList]


class EngineWorker:
    """The one thread that drives the Recommender; see the module doc for the batching rule."""

    def __init__(self, rec: Recommender, max_queue: int, metrics: Metrics) -> None:
        self.rec = rec
        self.metrics = metrics
        self.max_batch = rec.config.engine.max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name="sidrec-engine", daemon=True)
        self._inflight: list[_Job] = []  # jobs inside the current engine call

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def fail_queued(self, error: Exception) -> None:
        """Answer every job in the engine call and still queued with `error` (the engine died: a
        call into a dead engine may never return, and its clients must not wait for it)."""
        for job in list(self._inflight):
            _settle(job.future, error=error)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs already queued, then end the thread."""
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                log.warning("engine queue still full at shutdown; the thread ends with the process")
                return
            self._thread.join(timeout)

    def submit(self, requests: list[RecommendationRequest]) -> concurrent.futures.Future:
        """Queue one HTTP request's recommendation requests; raises ``queue.Full`` when saturated."""
        job = _Job(requests, concurrent.futures.Future())
        self._queue.put_nowait(job)
        self.metrics.queue.set(self._queue.qsize())
        return job.future

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, stop = [job], False
            while sum(len(j.requests) for j in jobs) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            self.metrics.queue.set(self._queue.qsize())
            self._process(jobs)
            if stop:
                return

    def _process(self, jobs: list[_Job]) -> None:
        ready: list[tuple[_Job, list]] = []
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue  # the client went away while queued
            try:
                ready.append((job, [self.rec.prepare(r) for r in job.requests]))
            except Exception as e:  # ValueError: the client's mistake (400); anything else: ours (500)
                if not isinstance(e, ValueError):
                    log.exception("preparing a request failed")
                job.future.set_exception(e)
        if not ready:
            return
        self._inflight = [job for job, _ in ready]
        try:
            self._run(ready)
        finally:
            self._inflight = []

    def _run(self, ready: list[tuple[_Job, list]]) -> None:
        prepared = [p for _, ps in ready for p in ps]
        self.metrics.batch.observe(len(prepared))
        try:
            results = self.rec.run(prepared)
        except EngineUnavailable as e:  # the engine is gone: 503 for these, the watchdog stops us
            log.error("engine unavailable: %s", e)
            for job, _ in ready:
                _settle(job.future, error=e)
            return
        except Exception as e:  # an engine failure fails this batch, not the server
            log.exception("engine call failed")
            for job, _ in ready:
                _settle(job.future, error=RuntimeError(f"engine error: {e}"))
            return
        start = 0
        for job, ps in ready:
            _settle(job.future, result=results[start : start + len(ps)])
            start += len(ps)


def _settle(future: concurrent.futures.Future, result: Any = None, error: Exception | None = None) -> None:
    """Set a job's outcome unless it was settled already (the watchdog fails jobs of a dead engine)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


__all__ = ["EngineWorker", "Metrics"]
