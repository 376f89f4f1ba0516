"""A session's messages in chronological order: by offset (the seed's form) or by keyset.

Keyset anchors (`after` / `before`) are a sequence number or a message id of this session;
a message id that does not resolve here is a 404 `message_not_found`, like a session that
is not the caller's (an id is well-formed input naming something the caller cannot see).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from psycopg import AsyncConnection
from psycopg.rows import class_row

from services.http.errors import ApiError
from services.query.params import MAX_BIGINT, parse_integer, parse_uuid

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_OFFSET = 2**31 - 1  # get_session_messages takes an integer offset
SESSION_NOT_FOUND = "session_not_found"

# Under RLS: another user's session is simply not there.
SELECT_SESSION_TOTAL = "SELECT message_count FROM sessions WHERE session_id = %s"
SELECT_MESSAGE_SEQ = "SELECT seq FROM chat_messages WHERE message_id = %s AND session_id = %s"
PAGE_BY_OFFSET = """
SELECT message_id, role, content, metadata, created_at, turn_id, seq
  FROM get_session_messages(%s, %s, %s)
"""
PAGE_BY_KEYSET = """
SELECT message_id, role, content, metadata, created_at, turn_id, seq
  FROM get_session_messages_keyset(%s, %s, %s, %s)
"""


class Message(msgspec.Struct, frozen=True, kw_only=True):
    message_id: UUID
    role: str
    content: str
    metadata: Any
    created_at: datetime | None
    turn_id: UUID | None
    seq: int


class MessagePage(msgspec.Struct, frozen=True, kw_only=True):
    messages: list[Message]
    total: int
    limit: int
    # null for keyset pages (after/before), which are positioned by seq instead
    offset: int | None


def parse_session_id(raw: str) -> UUID:
    return parse_uuid(raw, what="session id", code="invalid_session_id")


def parse_anchor(name: str, raw: str | None) -> int | UUID | None:
    """A sequence number (digits) or a message id (UUID): params.ANCHOR_SCHEMA."""
    if raw is None:
        return None
    seq = parse_integer(raw, minimum=0)
    if seq is not None:
        return seq
    try:
        return parse_uuid(raw, what=name, code="invalid_parameter")
    except ApiError:
        raise ApiError("invalid_parameter",
                       f"{name} must be a sequence number (0 or more) or a message id") from None


async def _resolve(
    conn: AsyncConnection[Any], session_id: UUID, anchor: int | UUID | None
) -> int | None:
    if not isinstance(anchor, UUID):
        return anchor
    cur = await conn.execute(SELECT_MESSAGE_SEQ, (anchor, session_id))
    row = await cur.fetchone()
    if row is None:
        raise ApiError("message_not_found", f"message {anchor} is not in this session")
    return int(row[0])


async def session_total(conn: AsyncConnection[Any], session_id: UUID) -> int:
    cur = await conn.execute(SELECT_SESSION_TOTAL, (session_id,))
    row = await cur.fetchone()
    if row is None:
        raise ApiError(SESSION_NOT_FOUND, "session not found")
    return int(row[0])


async def page_of_messages(
    conn: AsyncConnection[Any],
    session_id: UUID,
    *,
    limit: int,
    offset: int,
    after: int | UUID | None,
    before: int | UUID | None,
) -> MessagePage:
    keyset = after is not None or before is not None
    total = await session_total(conn, session_id)
    async with conn.cursor(row_factory=class_row(Message)) as cur:
        if keyset:
            # With an anchor, offset moves it that many sequence numbers further away.
            after_seq = await _resolve(conn, session_id, after)
            before_seq = await _resolve(conn, session_id, before)
            if after_seq is not None:
                after_seq = min(after_seq + offset, MAX_BIGINT)
            if before_seq is not None:
                before_seq = max(before_seq - offset, 0)
            await cur.execute(PAGE_BY_KEYSET, (session_id, limit, after_seq, before_seq))
        else:
            await cur.execute(PAGE_BY_OFFSET, (session_id, limit, offset))
        rows = await cur.fetchall()
    return MessagePage(messages=rows, total=total, limit=limit, offset=None if keyset else offset)
