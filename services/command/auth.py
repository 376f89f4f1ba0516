"""Who is calling the command service: the header's user (parsed by services/http/auth.py),
checked against the registered users, and the request's ids for event metadata.

We refuse ids that were never registered, so a typo cannot create orphan data.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from services.core.events import user_stream
from services.http.auth import parse_user_id, unknown_user
from services.http.context import RequestIds

USER_EXISTS = """
SELECT EXISTS (
    SELECT 1 FROM event_streams WHERE stream_id = %s AND stream_type = 'user' AND NOT deleted
)
"""


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
        raise unknown_user()
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
