"""The HTTP server: an OpenAI-compatible completions endpoint and a plain JSON one over a Recommender.

Endpoints (bodies in ``serving.api``): ``GET /v1/models`` (one model per registered canvas,
``sidrec-home``, ..., with its soft prompt and context field); ``POST /v1/completions`` (OpenAI shape:
``model`` = canvas, ``prompt`` = a history, ``n`` = titles; context, ``rules``, ``user_id`` and
``exclude_history`` in the extra body; ``sidrec[i]`` says how list ``i`` was made);
``POST /v1/recommendations`` (the same as plain JSON); ``GET /health`` = ``/health/ready``,
``/health/live`` and ``/metrics`` (Prometheus). Errors take OpenAI's ``{"error": {...}}`` shape (400
bad values, 401 key, 404 unknown canvas, 413 body too large, 422 wrong types, 503 queue full).
One engine thread owns the Recommender (neither vLLM's ``LLM`` nor a torch model may be driven from
several threads): it takes everything queued, validates each request alone and decodes the rest in
one ``Recommender.run`` call; the queue is bounded (``max_queue``; full: 503 at once). The process
keeps no state between requests, so replicas can run behind a load balancer (``/metrics`` is per
process). Lifecycle (``serving.lifecycle``): the port opens at once while the engine loads; SIGTERM
and SIGINT drain and exit 0; a dead engine turns readiness 503 and the server exits with code 1."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from core.artifacts import read_manifest
from gen_fm.model import KIND
from prompt_tuning.canvases import canvas_names, context_fields
from serving.api import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Item,
    ModelList,
    RecommendationsRequest,
    RecommendationsResponse,
    RequestModels,
    Usage,
    canvas_of,
    model_card,
    model_id,
    parse_history,
    request_models,
    result_info,
)
from serving.guard import Guard, ServerSettings, error_response
from serving.lifecycle import (
    EngineState,
    EngineUnavailable,
    Stopped,
    draining_server,
    install_sigterm_handler,
    reap_children,
    watch_engine,
)
from serving.backends.registry import DEFAULT_BACKEND
from serving.config import ServingConfig
from serving.recommender import Recommender
from serving.requests import RecommendationList, RecommendationRequest
from serving.worker import EngineWorker, Metrics

log = logging.getLogger("sidrec.serving")
API_KEY_ENV = "SIDREC_API_KEY"


class _Rejected(HTTPException):
    """An HTTP error that names the request field at fault (OpenAI's ``param``)."""

    def __init__(self, status: int, detail: str, param: str | None = None) -> None:
        super().__init__(status, detail)
        self.param = param


def _taking(model: type) -> Callable[[Callable], Callable]:
    """Give an endpoint's ``body`` the model ``request_models`` built for this app: FastAPI reads the
    annotation for validation and the OpenAPI schema (the one written in the code is the base)."""

    def mark(endpoint: Callable) -> Callable:
        endpoint.__annotations__["body"] = model
        return endpoint

    return mark


def _unknown_field(name: str, bodies: RequestModels) -> str:
    """What a client should know about a body field the app refused: its context fields, or that
    the canvas taking it was registered after the app was built."""
    taken = list(bodies.completion.context_attributes)
    later = context_fields().get(name)
    if later and name not in taken:
        return (
            f" (the context field of canvas(es) {list(later)}, registered after this server started: "
            f"restart it to take {name})"
        )
    return f" (the canvases' context fields: {taken})"


def create_app(
    rec: Recommender | Callable[[], Recommender],
    settings: ServerSettings | None = None,
    on_engine_death: Callable[[str], None] | None = None,
) -> FastAPI:
    """A FastAPI app over a Recommender, or over a function that loads one (called in a background
    thread at start-up, so the port answers liveness probes while the engine loads). The engine
    thread runs while the app's lifespan does; `on_engine_death(reason)` is called if the engine
    dies (``serve`` stops the server with exit code 1 there). The request bodies take the context
    fields of the canvases registered now (``serving.api.request_models``)."""
    settings = settings or ServerSettings()
    metrics = Metrics()
    state = EngineState()
    holder: dict[str, Any] = {}  # "rec" and "worker", once loaded
    created = int(time.time())
    bodies = request_models()  # the context fields of the canvases registered now

    def become_ready(r: Recommender) -> None:
        r.encoder.decode_rows([])  # build the lazy token index now, not inside a request
        r.prompts.warm_up()  # and the query encoder the soft prompts need (it loads a sentence encoder)
        worker = EngineWorker(r, settings.max_queue, metrics)
        worker.start()
        holder.update(rec=r, worker=worker)
        state.set("ready")

    def die(reason: str) -> None:
        if "worker" in holder:
            holder["worker"].fail_queued(state.unavailable())
        if on_engine_death is not None:
            on_engine_death(reason)

    def load() -> None:
        try:
            r = rec()
            holder["rec"] = r  # closed by whoever stops the app, even if warming up fails
            become_ready(r)
        except Exception as e:
            log.exception("loading the engine failed")
            state.set("failed", f"{type(e).__name__}: {e}")
            die(state.reason or "load failed")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(rec, Recommender):
            become_ready(rec)
        else:
            app.state.loader = threading.Thread(target=load, name="sidrec-load", daemon=True)
            app.state.loader.start()
        watcher = asyncio.create_task(watch_engine(lambda: holder["rec"].failure(), state, die))
        try:
            yield
        finally:
            dead = state.status in ("dead", "failed")
            state.set("draining")
            watcher.cancel()
            if "worker" in holder and not dead:  # a dead engine's thread may never return: no join
                await asyncio.to_thread(holder["worker"].stop)

    def current() -> tuple[Recommender, EngineWorker]:
        if not state.ready:
            raise HTTPException(503, str(state.unavailable()), headers={"Retry-After": "1"})
        return holder["rec"], holder["worker"]

    app = FastAPI(title="sidrec", lifespan=lifespan)
    app.state.metrics, app.state.settings, app.state.engine, app.state.holder = (
        metrics,
        settings,
        state,
        holder,
    )
    app.state.loader = None

    @app.exception_handler(HTTPException)
    async def httperror_response(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(
            exc.status_code,
            str(exc.detail),
            param=getattr(exc, "param", None),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validationerror_response(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts, params = [], []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            params.append(loc)
            msg = str(err.get("msg")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                msg += _unknown_field(loc, bodies)
            parts.append(f"{loc or 'body'}: {msg}")
        return error_response(422, "; ".join(parts), param=params[0] if params else None)

    @app.exception_handler(Exception)
    async def servererror_response(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return error_response(500, "internal error (logged on the server)")

    async def decode(requests: list[RecommendationRequest]) -> list[RecommendationList]:
        _, worker = current()
        try:
            future = worker.submit(requests)
        except queue.Full:
            raise HTTPException(
                503, "server busy: the engine queue is full, retry later", headers={"Retry-After": "1"}
            ) from None
        try:
            return await asyncio.wrap_future(future)
        except EngineUnavailable as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        except asyncio.CancelledError:  # the stop's drain deadline passed (or the client left)
            raise HTTPException(
                503,
                "the server stopped before the engine answered; retry on another replica",
                headers={"Retry-After": "1"},
            ) from None
        except ValueError as e:
            raise _Rejected(400, str(e), getattr(e, "param", None)) from None

    def canvas_or_404(model: str) -> str:
        canvas = canvas_of(model)
        if canvas is None:
            raise HTTPException(
                404,
                f"the model {model!r} does not exist; served models: {[model_id(c) for c in canvas_names()]}",
            )
        return canvas

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        rec, _ = current()
        return ModelList(data=[model_card(rec.prompts, c, created) for c in canvas_names()])  # registered now

    @app.post("/v1/completions", response_model=CompletionResponse)
    @_taking(bodies.completion)
    async def completions(body: CompletionRequest) -> CompletionResponse:
        canvas = canvas_or_404(body.model)
        rec, _ = current()
        if body.stream:
            raise HTTPException(400, "stream=true is not supported: a recommendation list is returned whole")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not 1 <= len(prompts) <= settings.max_prompts:
            raise HTTPException(
                400, f"prompt must hold 1..{settings.max_prompts} histories, got {len(prompts)}"
            )
        histories = []
        for i, p in enumerate(prompts):
            try:
                histories.append(parse_history(p, rec.ids, rec.ids.layout))
            except ValueError as e:
                raise HTTPException(400, f"prompt {i}: {e}" if len(prompts) > 1 else str(e)) from None
        member = body.user_id if body.user_id is not None else body.user
        results = await decode(
            [
                RecommendationRequest(
                    h,
                    canvas,
                    body.n,
                    user_id=member,
                    rules=body.rules,
                    exclude_history=body.exclude_history,
                    fresh_share=body.fresh_share,
                    context=body.contexts(),
                )
                for h in histories
            ]
        )
        flat = [(i, r) for i, res in enumerate(results) for r in res]
        choices = [
            CompletionChoice(
                index=j,
                text=r.item_id,
                prompt_index=i,
                title=r.title,
                semantic_id=r.semantic_id,
                score=r.score,
                fresh=r.fresh,
            )
            for j, (i, r) in enumerate(flat)
        ]
        prompt_tokens = sum(res.prompt_tokens for res in results)
        sid_len = rec.ids.sid_length
        return CompletionResponse(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=body.model,
            choices=choices,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=len(choices) * sid_len,
                total_tokens=prompt_tokens + len(choices) * sid_len,
            ),
            sidrec=[result_info(i, res, body.exclude_history) for i, res in enumerate(results)],
        )

    @app.post("/v1/recommendations", response_model=RecommendationsResponse)
    @_taking(bodies.recommendations)
    async def recommendations(body: RecommendationsRequest) -> RecommendationsResponse:
        canvas = body.canvas
        if canvas not in canvas_names():
            raise HTTPException(404, f"unknown canvas {canvas!r}; canvases: {list(canvas_names())}")
        [res] = await decode(
            [
                RecommendationRequest(
                    body.history,
                    canvas,
                    body.k,
                    user_id=body.user_id,
                    rules=body.rules,
                    exclude_history=body.exclude_history,
                    fresh_share=body.fresh_share,
                    context=body.contexts(),
                )
            ]
        )
        items = [
            Item(
                rank=i + 1,
                item_id=r.item_id,
                title=r.title,
                semantic_id=r.semantic_id,
                score=r.score,
                fresh=r.fresh,
            )
            for i, r in enumerate(res)
        ]
        return RecommendationsResponse(
            **result_info(0, res, body.exclude_history).model_dump(),
            model=model_id(canvas),
            k=res.k,
            items=items,
        )

    @app.get("/health")
    @app.get("/health/ready")
    async def health() -> JSONResponse:
        """Readiness: 200 only while the engine serves (503 loading, draining, dead or failed)."""
        if not state.ready or holder["rec"].failure() is not None:
            return JSONResponse(
                {"status": state.status, "reason": state.reason or str(state.unavailable())}, status_code=503
            )
        rec, worker = holder["rec"], holder["worker"]
        ok = worker.alive
        return JSONResponse(
            {
                "status": "ok" if ok else "engine stopped",
                "backend": rec.config.engine.backend,
                "titles": rec.ids.num_items,
                "models": [model_id(c) for c in canvas_names()],
                "soft_prompts": sorted(rec.prompts.virtual),
                "loras": sorted(rec.prompts.loras),
                "attributes": list(rec.attributes.names) if rec.attributes else [],
                "max_k": rec.config.decoding.max_k,
                "queue_depth": worker.queue_depth,
            },
            status_code=200 if ok else 503,
        )

    @app.get("/health/live")
    async def live() -> JSONResponse:
        """Liveness: the process answers (also while the engine loads or drains)."""
        return JSONResponse({"status": "alive", "engine": state.status})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Guard, settings=settings, metrics=metrics)
    return app


def serve(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    backend: str = DEFAULT_BACKEND,
    data_dir: str | None = None,
    dataset: str | None = None,
    max_body_bytes: int = 1 << 20,
    max_queue: int = 256,
    log_level: str = "info",
    drain_seconds: float = 30.0,
    **config: Any,
) -> None:
    """Serve ``model_dir`` until SIGTERM / SIGINT (``sidrec serve``); see the module doc's lifecycle.

    ``api_key`` defaults to $SIDREC_API_KEY (keeps the key out of the process list); ``data_dir`` and
    ``dataset`` load the catalog attributes that attribute rules need; ``config`` holds further
    ``ServingConfig`` fields (num_beams, max_k, enforce_eager, ...). ``drain_seconds`` bounds how
    long a stop waits for requests in flight. Exits with code 1 (``SystemExit``) when the engine
    died or failed to load, so a supervisor restarts the server. Call it under
    ``if __name__ == "__main__":``: vLLM starts its workers with spawn.
    """
    import uvicorn

    settings = ServerSettings(
        api_key=api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=max_body_bytes,
        max_queue=max_queue,
    )
    if settings.api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can query it", host)
    if drain_seconds <= 0:
        raise ValueError(f"drain_seconds must be > 0, got {drain_seconds}")
    # a wrong folder or setting is one clear error now, not a failed engine load after start-up
    read_manifest(model_dir, KIND)
    try:
        ServingConfig.create(model_dir, backend=backend, **config)
    except TypeError as e:  # a misspelt field: the message lists the valid ones
        raise ValueError(str(e)) from None
    fatal: list[str] = []

    def on_engine_death(reason: str) -> None:
        fatal.append(reason)
        server.should_exit = True

    app = create_app(
        lambda: Recommender.from_pretrained(
            model_dir, backend=backend, data_dir=data_dir, dataset=dataset, **config
        ),
        settings,
        on_engine_death=on_engine_death,
    )
    server = draining_server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=int(max(drain_seconds, 1)),
        )
    )
    restore = install_sigterm_handler()
    try:
        server.run()
    except (Stopped, KeyboardInterrupt):
        pass  # a stop signal, after uvicorn drained: clean up below, exit 0
    finally:
        restore()
        loader = app.state.loader
        if loader is not None:
            loader.join(timeout=600)  # an engine still loading is closed once it exists
        rec = app.state.holder.get("rec")
        if rec is not None:
            rec.close()
        reap_children()
    if fatal:
        log.error("exiting with code 1: %s", fatal[0])
        raise SystemExit(1)
