"""The caller's session list: newest activity first, keyset-paged by an opaque cursor."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from psycopg import AsyncConnection
from psycopg.rows import class_row

from services.http.errors import ApiError

MAX_LIMIT = 100
DEFAULT_LIMIT = 10

# One index walk of sessions_user_activity_idx, under RLS (the caller's rows only).
LIST_SESSIONS = """
SELECT session_id, title, project_id, created_at, updated_at,
       last_message_at, is_active, message_count, preview
  FROM get_user_sessions(%s, %s, %s, %s)
"""


class SessionSummary(msgspec.Struct, frozen=True, kw_only=True):
    session_id: UUID
    title: str | None
    project_id: UUID | None
    created_at: datetime | None
    updated_at: datetime | None
    last_message_at: datetime | None
    is_active: bool | None
    message_count: int
    preview: str | None


class SessionPage(msgspec.Struct, frozen=True, kw_only=True):
    sessions: list[SessionSummary]
    # Pass as ?before= for the next page; null when there is none.
    next_cursor: str | None


class Cursor(msgspec.Struct, frozen=True, array_like=True):
    """Where a page ended: (last_message_at, session_id) of its last row."""

    last_message_at: Annotated[datetime, msgspec.Meta(tz=True)]
    session_id: UUID


_cursor_decoder = msgspec.json.Decoder(Cursor)
_MAX_CURSOR_CHARS = 200


def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(cursor)).rstrip(b"=").decode()


def decode_cursor(raw: str) -> Cursor:
    """Opaque to clients; anything we did not write is a 400, never a 500."""
    try:
        if len(raw) > _MAX_CURSOR_CHARS:
            raise ValueError("too long")
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        return _cursor_decoder.decode(data)
    except (ValueError, binascii.Error, msgspec.DecodeError):
        raise ApiError("invalid_cursor", "before is not a cursor this API returned") from None


async def list_sessions(
    conn: AsyncConnection[Any], user_id: UUID, limit: int, before: Cursor | None
) -> SessionPage:
    # One row more than asked says whether another page exists, so the last page carries
    # no cursor (and no client fetches an empty page to find out).
    args = (
        user_id,
        limit + 1,
        before.last_message_at if before else None,
        before.session_id if before else None,
    )
    async with conn.cursor(row_factory=class_row(SessionSummary)) as cur:
        await cur.execute(LIST_SESSIONS, args)
        rows = await cur.fetchall()
    page, more = rows[:limit], len(rows) > limit
    next_cursor = None
    if more and page[-1].last_message_at is not None:
        next_cursor = encode_cursor(Cursor(page[-1].last_message_at, page[-1].session_id))
    return SessionPage(sessions=page, next_cursor=next_cursor)
