"""Each request's ids: X-Request-ID and X-Correlation-ID, bound to every log line of the
request, echoed back, and carried by the command side into event metadata."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import msgspec
import structlog
from litestar import Request
from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from services.http.headers import add_missing, security_headers, served_over_https

REQUEST_ID_HEADER = "x-request-id"
CORRELATION_ID_HEADER = "x-correlation-id"
# scope["state"] key of the request's RequestIds.
REQUEST_IDS_KEY = "request_ids"
_REQUEST_ID_BYTES = REQUEST_ID_HEADER.encode()
_CORRELATION_ID_BYTES = CORRELATION_ID_HEADER.encode()
# Client-supplied ids end up in logs and stored metadata: accept only plain tokens.
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
log = structlog.get_logger("http.request")


class RequestIds(msgspec.Struct, frozen=True):
    request_id: str
    correlation_id: str

    @classmethod
    def from_headers(cls, headers: Headers) -> RequestIds:
        return cls.from_raw(headers.get(REQUEST_ID_HEADER), headers.get(CORRELATION_ID_HEADER))

    @classmethod
    def from_raw(cls, request_id: str | None, correlation_id: str | None) -> RequestIds:
        """The client's (or the gateway's) ids when they are plain tokens, else new ones; the
        correlation id defaults to the request id."""
        request_id = _token(request_id) or uuid.uuid4().hex
        return cls(request_id, _token(correlation_id) or request_id)


def _token(value: str | None) -> str | None:
    return value if value is not None and _TOKEN.fullmatch(value) else None


def _ids_from_scope(scope: Scope) -> RequestIds:
    # Read raw: Headers.from_scope would cache the headers before CallerCheckMiddleware
    # (services/http/auth.py) has put the token's user in them.
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        key = name.lower()
        if key in (_REQUEST_ID_BYTES, _CORRELATION_ID_BYTES) and key not in found:
            found[key] = value.decode("latin-1")
    return RequestIds.from_raw(found.get(_REQUEST_ID_BYTES), found.get(_CORRELATION_ID_BYTES))


def request_ids(request: Request[Any, Any, Any]) -> RequestIds:
    """The ids RequestContextMiddleware gave this request (a dependency's provider)."""
    ids = request.scope.get("state", {}).get(REQUEST_IDS_KEY)
    return ids if isinstance(ids, RequestIds) else RequestIds.from_headers(request.headers)


class RequestContextMiddleware(ASGIMiddleware):
    """Binds request_id and correlation_id to the request's log lines (and nothing of an
    earlier request's), echoes X-Request-ID, adds the security headers
    (services/http/headers.py), and logs one `http_request` line when the
    request ends. Streams (SSE) pass through unbuffered: only `send` is observed."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        ids = _ids_from_scope(scope)
        scope.setdefault("state", {})[REQUEST_IDS_KEY] = ids  # type: ignore[typeddict-item]
        status = 500
        started = time.perf_counter()
        hardening = security_headers(ui=False, https=served_over_https(scope))  # type: ignore[arg-type]

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                MutableScopeHeaders.from_message(message)[REQUEST_ID_HEADER] = ids.request_id
                message["headers"] = add_missing(list(message["headers"]), hardening)
            await send(message)

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=ids.request_id,
                                               correlation_id=ids.correlation_id)
        try:
            await next_app(scope, receive, send_with_id)
        finally:
            log.info("http_request", method=scope.get("method"), path=scope.get("path"),
                     status=status, duration_ms=round((time.perf_counter() - started) * 1000, 2))
            structlog.contextvars.clear_contextvars()
