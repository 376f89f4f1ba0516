"""How the command side writes: one transaction per command, retried when a stream moved.

Commands that append to an existing stream lock its event_streams row while they read its
version (`FOR UPDATE`). Writers to one hot session then queue on that row instead of racing,
failing the conditional UPDATE and redoing their work; the retry on ConcurrencyError stays
as the backstop the event store's contract asks for (and for streams created concurrently).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from services.core import eventstore
from services.core.eventstore import ConcurrencyError, StreamAppend
from services.core.metrics import timing_append
from services.http.errors import ApiError

T = TypeVar("T")
log = structlog.get_logger("command.store")

MAX_ATTEMPTS = 20
_BACKOFF_SECONDS = 0.002  # times the attempt number, jittered: a few ms at most

# The stream row a command is about to append to, locked until the transaction ends.
LOCK_STREAM = """
SELECT stream_type, owner_id, version, deleted FROM event_streams WHERE stream_id = %s
   FOR UPDATE
"""
READ_STREAM_ROW = """
SELECT stream_type, owner_id, version, deleted FROM event_streams WHERE stream_id = %s
"""


def check_storable(value: str, field: str) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: refuse it as bad input, not fail later."""
    if "\x00" in value:
        raise ApiError("invalid_text", f"{field} may not contain NUL characters")


async def retry_on_conflict(attempt: Callable[[], Awaitable[T]], attempts: int = MAX_ATTEMPTS) -> T:
    """Runs `attempt` again (it must redo its reads) while it raises ConcurrencyError."""
    for number in range(1, attempts + 1):
        try:
            return await attempt()
        except ConcurrencyError as exc:
            log.info("append_conflict", stream_id=exc.stream_id, attempt=number)
            if number == attempts:
                raise ApiError("concurrent_update",
                               "the session changed too often while writing; try again") from exc
            await asyncio.sleep(random.uniform(0, _BACKOFF_SECONDS * number))
    raise AssertionError("attempts must be at least 1")


async def append(
    conn: psycopg.AsyncConnection[Any],
    appends: Sequence[StreamAppend],
    metadata: dict[str, Any] | None = None,
) -> list[int]:
    """eventstore.append, timed: chat_event_append_duration_seconds on /metrics."""
    with timing_append():
        return await eventstore.append(conn, appends, metadata)


async def in_transaction(
    pool: AsyncConnectionPool[Any],
    work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
) -> T:
    """`work(conn)` in one transaction, the whole transaction retried on conflict.

    In pipeline mode: the BEGIN travels with the first statement instead of taking a round
    trip of its own (each fetch still waits for its answer; the COMMIT is the last trip)."""

    async def attempt() -> T:
        async with pool.connection() as conn, conn.pipeline(), conn.transaction():
            return await work(conn)

    return await retry_on_conflict(attempt)


async def owned_stream_version(
    conn: psycopg.AsyncConnection[Any],
    stream_id: str,
    stream_type: str,
    user_id: uuid.UUID,
    *,
    lock: bool,
) -> int:
    """The version of a live stream the user owns. Anything else is the same 404: another
    user's stream must look exactly like one that does not exist."""
    cur = await conn.execute(LOCK_STREAM if lock else READ_STREAM_ROW, (stream_id,))
    return owned_version(await cur.fetchone(), stream_type, user_id)


def owned_version(row: Sequence[Any] | None, stream_type: str, user_id: uuid.UUID) -> int:
    """owned_stream_version's check of a (stream_type, owner_id, version, deleted) row, or of
    None (no such stream, or a LEFT JOIN found none: all four NULL)."""
    if row is None or row[0] is None:
        raise _not_found(stream_type)
    type_, owner_id, version, deleted = row
    if type_ != stream_type or owner_id != user_id or deleted:
        raise _not_found(stream_type)
    return int(version)


def _not_found(stream_type: str) -> ApiError:
    code = {"session": "session_not_found", "project": "project_not_found"}[stream_type]
    return ApiError(code, f"{stream_type} not found")
