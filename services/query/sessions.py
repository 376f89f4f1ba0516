"""The caller's session list: newest activity first, keyset-paged by an opaque cursor."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
from psycopg import AsyncConnection
from psycopg.rows import class_row

from services.http.errors import ApiError
from services.query.params import UUID_PATTERN

MAX_LIMIT = 100
DEFAULT_LIMIT = 10

# One index walk of sessions_user_activity_idx, under RLS (the caller's rows only),
# active or archived ones, of one project or all (0040_session_list_filters.sql).
LIST_SESSIONS = """
SELECT session_id, title, project_id, created_at, updated_at,
       last_message_at, is_active, message_count, preview
  FROM list_user_sessions(%s, %s, %s, %s, %s, %s)
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


class Cursor(msgspec.Struct, frozen=True):
    """Where a page ended: (last_message_at, session_id) of its last row."""

    last_message_at: datetime
    session_id: UUID


# On the wire: "<last_message_at in microseconds since the epoch>_<session id>". Every string
# of that shape names a place in the list, so the document's pattern is exactly what is
# accepted (the bounds keep the time within what a datetime holds).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CURSOR_PATTERN = r"^(-[0-9]{1,16}|[0-9]{1,17})_" + UUID_PATTERN.removeprefix("^")
CURSOR_SCHEMA: dict[str, Any] = {"oneOf": None, "type": "string", "pattern": CURSOR_PATTERN}
_CURSOR = re.compile(CURSOR_PATTERN)


def encode_cursor(cursor: Cursor) -> str:
    micros = (cursor.last_message_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{cursor.session_id}"


def decode_cursor(raw: str) -> Cursor:
    """Anything not of the cursor's shape is a 400, never a 500."""
    if not _CURSOR.match(raw):
        raise ApiError("invalid_cursor", "before is not a cursor this API returned")
    micros, session_id = raw.split("_")
    return Cursor(_EPOCH + timedelta(microseconds=int(micros)), UUID(session_id))


async def list_sessions(
    conn: AsyncConnection[Any], user_id: UUID, limit: int, before: Cursor | None,
    *, archived: bool = False, project_id: UUID | None = None,
) -> SessionPage:
    # One row more than asked says whether another page exists, so the last page carries
    # no cursor (and no client fetches an empty page to find out).
    args = (
        user_id,
        limit + 1,
        before.last_message_at if before else None,
        before.session_id if before else None,
        archived,
        project_id,
    )
    async with conn.cursor(row_factory=class_row(SessionSummary)) as cur:
        await cur.execute(LIST_SESSIONS, args)
        rows = await cur.fetchall()
    page, more = rows[:limit], len(rows) > limit
    next_cursor = None
    if more and page[-1].last_message_at is not None:
        next_cursor = encode_cursor(Cursor(page[-1].last_message_at, page[-1].session_id))
    return SessionPage(sessions=page, next_cursor=next_cursor)
