"""Who is calling, and under which request: the ids carried into logs and event metadata.

`X-User-ID` is trusted because the gateway sets it; we still refuse ids that were never
registered, so a typo cannot create orphan data.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec
import psycopg
import structlog
from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from psycopg_pool import AsyncConnectionPool

from services.command.errors import BadRequest, Unauthorized
from services.core.events import user_stream

USER_EXISTS = """
SELECT EXISTS (
    SELECT 1 FROM event_streams WHERE stream_id = %s AND stream_type = 'user' AND NOT deleted
)
"""

# Client-supplied ids end up in logs and stored metadata: accept only plain tokens.
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_IDS_KEY = "request_ids"


class RequestIds(msgspec.Struct, frozen=True):
    request_id: str
    correlation_id: str

    @classmethod
    def from_headers(cls, headers: Headers) -> RequestIds:
        request_id = _token(headers.get("x-request-id")) or uuid.uuid4().hex
        return cls(request_id, _token(headers.get("x-correlation-id")) or request_id)


class Caller(msgspec.Struct, frozen=True):
    user_id: uuid.UUID
    ids: RequestIds
    # False: the header's id was parsed but not yet checked against the registered users;
    # whoever takes such a caller checks it (POST /api/v1/chat does, in its own transaction).
    verified: bool = True

    def event_metadata(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user_id),
            "request_id": self.ids.request_id,
            "correlation_id": self.ids.correlation_id,
            "causation_id": None,  # a user's command is caused by no earlier event
        }


def _token(value: str | None) -> str | None:
    return value if value is not None and _TOKEN.fullmatch(value) else None


def parse_user_id(header: str | None) -> uuid.UUID:
    if header is None or not header.strip():
        raise Unauthorized("the X-User-ID header is required")
    try:
        return uuid.UUID(header.strip())
    except ValueError:
        raise BadRequest("X-User-ID is not a UUID", code="invalid_user_id") from None


async def authenticate(pool: AsyncConnectionPool[Any], header: str | None) -> uuid.UUID:
    """The caller's user id; 401 unless that user was registered."""
    user_id = parse_user_id(header)
    async with pool.connection() as conn:
        exists = await _user_exists(conn, user_id)
    known_user(user_id, exists)
    return user_id


def known_user(user_id: uuid.UUID, exists: bool) -> None:
    """401 unless the user is registered; else binds the user to the request's log lines."""
    if not exists:
        raise Unauthorized("unknown user", code="unknown_user")
    structlog.contextvars.bind_contextvars(user_id=str(user_id))


async def verified(pool: AsyncConnectionPool[Any], caller: Caller) -> Caller:
    """The caller, checked on its own pool checkout unless it already was (401 if unknown)."""
    if caller.verified:
        return caller
    async with pool.connection() as conn:
        exists = await _user_exists(conn, caller.user_id)
    known_user(caller.user_id, exists)
    return Caller(caller.user_id, caller.ids)


async def _user_exists(conn: psycopg.AsyncConnection[Any], user_id: uuid.UUID) -> bool:
    cur = await conn.execute(USER_EXISTS, (user_stream(user_id),))
    row = await cur.fetchone()
    return bool(row and row[0])


class RequestContextMiddleware(ASGIMiddleware):
    """Gives each request its ids: bound to every log line, echoed as X-Request-ID."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        ids = RequestIds.from_headers(Headers.from_scope(scope))
        scope.setdefault("state", {})[REQUEST_IDS_KEY] = ids  # type: ignore[typeddict-item]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                MutableScopeHeaders.from_message(message)["x-request-id"] = ids.request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(
            request_id=ids.request_id, correlation_id=ids.correlation_id
        ):
            await next_app(scope, receive, send_with_id)
