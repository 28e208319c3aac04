"""What runs before routing: the API key, the body-size limit, request metrics, and the error shape.

The key is checked before the body is read, and the body is read (at most ``max_body_bytes``)
before FastAPI parses it, so neither an unauthenticated nor an oversized request costs parsing.
Errors use OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from serving.api import ErrorResponse
from serving.worker import Metrics

ENDPOINTS = (
    "/v1/models",
    "/v1/completions",
    "/v1/recommendations",
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    503: "overloaded_error",
}


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


def error_response(
    status: int, message: str, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = ErrorResponse(
        error={
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error"),
            "param": param,
            "code": status,
        }
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class Guard:
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
        endpoint = path if path in ENDPOINTS else "other"
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
        return error_response(
            401,
            "missing or invalid API key: send 'Authorization: Bearer KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def _read_body(self, scope: dict, receive: Any) -> tuple[bytes, JSONResponse | None]:
        limit = self.settings.max_body_bytes
        too_big = error_response(
            413, f"request body exceeds the {limit}-byte limit (ServerSettings.max_body_bytes)"
        )
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return b"", error_response(400, "invalid Content-Length header")
            if int(declared) > limit:
                return b"", too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", error_response(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None
