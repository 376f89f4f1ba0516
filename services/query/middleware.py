"""Per-request log context: a request id bound for every log line, one line per request."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
CORRELATION_ID_HEADER = b"x-correlation-id"
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
log = structlog.get_logger("query.http")


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER and _SAFE_ID.match(value):
            return value.decode()
    return uuid.uuid4().hex


def _incoming_correlation_id(scope: Scope, request_id: str) -> str:
    """The client's X-Correlation-ID (as the command service takes it), else the request's."""
    for name, value in scope.get("headers", []):
        if name == CORRELATION_ID_HEADER and _SAFE_ID.match(value):
            return value.decode()
    return request_id


class RequestContextMiddleware(ASGIMiddleware):
    """Binds request_id (the gateway's X-Request-ID, else a new one), echoes it back, and
    logs the outcome. Streams (SSE) pass through unbuffered: only `send` is observed."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        request_id = _incoming_request_id(scope)
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}  # type: ignore[misc]
            await send(message)

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, correlation_id=_incoming_correlation_id(scope, request_id)
        )
        try:
            await next_app(scope, receive, send_wrapper)
        finally:
            log.info(
                "http_request",
                method=scope.get("method"),
                path=scope.get("path"),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()
