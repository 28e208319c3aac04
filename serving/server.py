"""The HTTP server: an OpenAI-compatible completions endpoint and a plain JSON one over a Recommender.

    serve("runs/gen_fm/model", host="127.0.0.1", port=8000, api_key="...", backend="vllm",
          data_dir="data", dataset="ml-latest-small")

Endpoints (``serving.api`` holds the bodies):
- ``GET /v1/models``: one model per canvas adapter (``sidrec-home``, ``sidrec-search``, ...), each
  card saying whether a trained soft prompt serves it (``soft_prompt``, ``num_virtual_tokens``; else
  the canvas token alone) and which context field it reads (``context``: query, source or theme).
- ``POST /v1/completions``: OpenAI shape; ``model`` = canvas id, ``prompt`` = a history, ``n`` = titles;
  ``query`` / ``source`` / ``theme``, ``rules``, ``user_id``, ``exclude_history`` in the extra body.
  Each choice's ``text`` is a title id, with ``title``, ``semantic_id`` and ``score`` beside it;
  ``sidrec[i]`` says how list ``i`` was made (canvas, soft_prompt, context, warnings, ...).
- ``POST /v1/recommendations``: ``{history, canvas, k, rules, user_id, exclude_history, query,
  source, theme}`` -> ranked items and the same information.
- ``GET /health`` (503 when the engine thread is gone), ``GET /metrics`` (Prometheus text).

Errors use OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape: 400 bad values (unknown
titles, k above max_k, unknown attribute, a missing or misplaced query/source/theme: ``param`` names
the field), 401 missing/wrong key (``/v1/*`` only), 404 unknown model/canvas, 413 body above
``max_body_bytes``, 422 wrong types or malformed rules, 503 queue full.

Concurrency: one engine thread owns the Recommender (neither vLLM's ``LLM`` nor a torch model may be
driven from several threads). Handlers queue their requests; the thread takes everything queued,
validates each request alone (a bad one fails only itself) and decodes the rest in one
``Recommender.run`` call, so concurrent requests share engine steps. The queue is bounded
(``max_queue``); a full queue answers 503 at once rather than growing latency without limit.

Replicas: the process keeps no state between requests (no sessions, no caches a client depends on;
the API key and rules come with each request), so any number of replicas can run behind a load
balancer, each with its own engine; results are deterministic, so replicas agree. ``/metrics`` is
per process: scrape every replica. ``/health`` is the readiness probe (the model is loaded before the
port opens).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from gen_fm.tokenizer import CANVASES
from serving.api import (CompletionChoice, CompletionRequest, CompletionResponse, ErrorResponse, Item,
                         ModelCard, ModelList, RecommendationsRequest, RecommendationsResponse, ResultInfo,
                         Usage, canvas_of, model_id, parse_history)
from serving.contexts import CANVAS_FIELD
from serving.recommender import RecommendationList, RecommendationRequest, Recommender
from serving.worker import EngineWorker, Metrics

log = logging.getLogger("sidrec.serving")
API_KEY_ENV = "SIDREC_API_KEY"
_ENDPOINTS = ("/v1/models", "/v1/completions", "/v1/recommendations", "/health", "/metrics")
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "request_too_large", 422: "invalid_request_error", 503: "overloaded_error"}


@dataclass(frozen=True)
class ServerSettings:
    """What the HTTP layer enforces (the model's own limits, such as max_k, live in ServingConfig)."""

    api_key: str | None = None  # required as "Authorization: Bearer KEY" on /v1/* when set
    max_body_bytes: int = 1 << 20  # larger request bodies get 413 before they are parsed
    max_queue: int = 256  # engine jobs waiting at most; beyond it 503
    max_prompts: int = 64  # prompts in one completion request (a list prompt is a batch)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_queue", "max_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (use None for no key)")


class _Rejected(HTTPException):
    """An HTTP error that names the request field at fault (OpenAI's ``param``)."""

    def __init__(self, status: int, detail: str, param: str | None = None) -> None:
        super().__init__(status, detail)
        self.param = param


def _error(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = ErrorResponse(error={"message": message, "type": _ERROR_TYPES.get(status, "server_error"),
                                "param": param, "code": status})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class _Guard:
    """Pure ASGI middleware run before routing: API key, body size limit, and request metrics.

    The key is checked before the body is read, and the body is read (at most ``max_body_bytes``)
    before FastAPI parses it, so neither an unauthenticated nor an oversized request costs parsing.
    """

    def __init__(self, app: Any, settings: ServerSettings, metrics: Metrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in _ENDPOINTS else "other"
        status = [500]

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            rejection = self._check_key(scope) if path.startswith("/v1/") else None
            body = b""
            if rejection is None:
                body, rejection = await self._read_body(scope, receive)
            if rejection is not None:
                return await rejection(scope, receive, send_and_record)
            replayed = [False]

            async def replay() -> dict:
                if not replayed[0]:
                    replayed[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_and_record)
        finally:
            code = str(status[0])
            self.metrics.requests.labels(endpoint, code).inc()
            if status[0] >= 400:
                self.metrics.errors.labels(endpoint, code).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    def _check_key(self, scope: dict) -> JSONResponse | None:
        key = self.settings.api_key
        if key is None:
            return None
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
            return None
        return _error(401, "missing or invalid API key: send 'Authorization: Bearer KEY'",
                      headers={"WWW-Authenticate": "Bearer"})

    async def _read_body(self, scope: dict, receive: Any) -> tuple[bytes, JSONResponse | None]:
        limit = self.settings.max_body_bytes
        too_big = _error(413, f"request body exceeds the {limit}-byte limit (ServerSettings.max_body_bytes)")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return b"", _error(400, "invalid Content-Length header")
            if int(declared) > limit:
                return b"", too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", _error(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _info(i: int, res: RecommendationList, exclude_history: bool) -> ResultInfo:
    warnings = list(res.warnings)
    if res.cold_start:
        warnings.append("empty history: ranked from the canvas and member tokens alone (cold start), "
                        "a weak, popularity-like guess")
    if res.history_dropped:
        warnings.append(f"history has {res.history_used + res.history_dropped} titles; the prompt holds the "
                        f"most recent {res.history_used} ({res.history_dropped} older left out"
                        + (", still excluded)" if exclude_history else ")"))
    return ResultInfo(prompt_index=i, canvas=res.canvas, soft_prompt=res.soft_prompt, context=res.context,
                      cold_start=res.cold_start, history_used=res.history_used,
                      history_dropped=res.history_dropped, num_permitted=res.num_permitted,
                      reason=res.reason, rules_applied=list(res.rules_applied), warnings=warnings)


def _card(rec: Recommender, canvas: str, created: int) -> ModelCard:
    soft = canvas in rec.prompts.virtual
    field = CANVAS_FIELD.get(canvas)
    return ModelCard(id=model_id(canvas), created=created, canvas=canvas, soft_prompt=soft,
                     num_virtual_tokens=rec.prompts.num_virtual_tokens(canvas), context=field,
                     context_required=rec.prompts.context_required(canvas))


def create_app(rec: Recommender, settings: ServerSettings | None = None) -> FastAPI:
    """A FastAPI app over a loaded Recommender; the engine thread runs while the app's lifespan does."""
    settings = settings or ServerSettings()
    metrics = Metrics()
    worker = EngineWorker(rec, settings.max_queue, metrics)
    rec.encoder.decode_rows([])  # build the lazy token index now, not inside a request
    rec.prompts.warm_up()  # and the query encoder the soft prompts need (it loads a sentence encoder)
    created = int(time.time())
    sid_len = rec.ids.sid_length

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = FastAPI(title="sidrec", lifespan=lifespan)
    app.state.worker, app.state.metrics, app.state.settings = worker, metrics, settings

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), param=getattr(exc, "param", None),
                      headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts, params = [], []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            params.append(loc)
            parts.append(f"{loc or 'body'}: {str(err.get('msg')).removeprefix('Value error, ')}")
        return _error(422, "; ".join(parts), param=params[0] if params else None)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return _error(500, "internal error (logged on the server)")

    async def decode(requests: list[RecommendationRequest]) -> list[RecommendationList]:
        try:
            future = worker.submit(requests)
        except queue.Full:
            raise HTTPException(503, "server busy: the engine queue is full, retry later",
                                headers={"Retry-After": "1"}) from None
        try:
            return await asyncio.wrap_future(future)
        except ValueError as e:
            raise _Rejected(400, str(e), getattr(e, "param", None)) from None

    def canvas_or_404(model: str) -> str:
        canvas = canvas_of(model)
        if canvas is None:
            raise HTTPException(404, f"the model {model!r} does not exist; served models: "
                                     f"{[model_id(c) for c in CANVASES]}")
        return canvas

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[_card(rec, c, created) for c in CANVASES])

    @app.post("/v1/completions", response_model=CompletionResponse)
    async def completions(body: CompletionRequest) -> CompletionResponse:
        canvas = canvas_or_404(body.model)
        if body.stream:
            raise HTTPException(400, "stream=true is not supported: a recommendation list is returned whole")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not 1 <= len(prompts) <= settings.max_prompts:
            raise HTTPException(400, f"prompt must hold 1..{settings.max_prompts} histories, "
                                     f"got {len(prompts)}")
        histories = []
        for i, p in enumerate(prompts):
            try:
                histories.append(parse_history(p, rec.ids, rec.ids.layout))
            except ValueError as e:
                raise HTTPException(400, f"prompt {i}: {e}" if len(prompts) > 1 else str(e)) from None
        member = body.user_id if body.user_id is not None else body.user
        results = await decode([RecommendationRequest(h, canvas, body.n, user_id=member, rules=body.rules,
                                                      exclude_history=body.exclude_history,
                                                      query=body.query, source=body.source,
                                                      theme=body.theme)
                                for h in histories])
        flat = [(i, r) for i, res in enumerate(results) for r in res]
        choices = [CompletionChoice(index=j, text=r.item_id, prompt_index=i, title=r.title,
                                    semantic_id=r.semantic_id, score=r.score)
                   for j, (i, r) in enumerate(flat)]
        prompt_tokens = sum(res.prompt_tokens for res in results)
        return CompletionResponse(
            id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model, choices=choices,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=len(choices) * sid_len,
                        total_tokens=prompt_tokens + len(choices) * sid_len),
            sidrec=[_info(i, res, body.exclude_history) for i, res in enumerate(results)])

    @app.post("/v1/recommendations", response_model=RecommendationsResponse)
    async def recommendations(body: RecommendationsRequest) -> RecommendationsResponse:
        canvas = body.canvas
        if canvas not in CANVASES:
            raise HTTPException(404, f"unknown canvas {canvas!r}; canvases: {list(CANVASES)}")
        [res] = await decode([RecommendationRequest(body.history, canvas, body.k, user_id=body.user_id,
                                                    rules=body.rules, exclude_history=body.exclude_history,
                                                    query=body.query, source=body.source, theme=body.theme)])
        items = [Item(rank=i + 1, item_id=r.item_id, title=r.title, semantic_id=r.semantic_id, score=r.score)
                 for i, r in enumerate(res)]
        return RecommendationsResponse(**_info(0, res, body.exclude_history).model_dump(),
                                       model=model_id(canvas), k=res.k, items=items)

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = worker.alive
        return JSONResponse({"status": "ok" if ok else "engine stopped", "backend": rec.config.backend,
                             "titles": rec.ids.num_items, "models": [model_id(c) for c in CANVASES],
                             "soft_prompts": sorted(rec.prompts.virtual),
                             "attributes": list(rec.attributes.names) if rec.attributes else [],
                             "max_k": rec.config.max_k, "queue_depth": worker.queue_depth},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_Guard, settings=settings, metrics=metrics)
    return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          backend: str = "vllm", data_dir: str | None = None, dataset: str | None = None,
          max_body_bytes: int = 1 << 20, max_queue: int = 256, log_level: str = "info",
          **config: Any) -> None:
    """Load ``model_dir`` and serve it until interrupted (``sidrec serve``).

    ``api_key`` defaults to $SIDREC_API_KEY (keeps the key out of the process list); ``data_dir`` and
    ``dataset`` load the catalog attributes that attribute rules need; ``config`` holds further
    ``ServingConfig`` fields (num_beams, max_k, enforce_eager, ...). Call it under
    ``if __name__ == "__main__":``: vLLM starts its workers with spawn.
    """
    import uvicorn

    settings = ServerSettings(api_key=api_key or os.environ.get(API_KEY_ENV) or None,
                              max_body_bytes=max_body_bytes, max_queue=max_queue)
    if settings.api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can query it", host)
    rec = Recommender.from_pretrained(model_dir, backend=backend, data_dir=data_dir, dataset=dataset,
                                      **config)
    try:
        uvicorn.run(create_app(rec, settings), host=host, port=port, log_level=log_level)
    finally:
        rec.close()


def run_in_thread(app: FastAPI, sockets: Sequence[Any],
                  log_level: str = "warning") -> tuple[Any, threading.Thread]:
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
