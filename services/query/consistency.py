"""Read-your-writes: wait (briefly) until the read model has applied a given event.

The command service returns the global position of what it appended; a client that passes
it back (X-Min-Position or ?min_position=) reads a model that includes its own write, or,
after settings.min_position_wait_seconds, what there is plus `X-Projection-Lag: true`.

Without a position, a miss is never a lie: when the read model lacks a user or session, the
event store is asked whether it holds that stream for the caller (catch_up); only what it
does not hold is 401/404.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from services.core.db import SET_USER
from services.http.auth import unknown_user
from services.http.errors import ApiError
from services.query.params import parse_integer

PROJECTION = "read_model"
PROJECTION_REACHED = "SELECT projection_reached(%s, %s)"
CATCH_UP_POSITION = "SELECT stream_catch_up_position(%s, %s)"  # db/migrations/0009
READ_YOUR_WRITES_CHECK = "SELECT * FROM read_your_writes_check(%s, %s)"
USER_VISIBLE = "SELECT 1 FROM users WHERE user_id = %s"  # RLS: the caller's own row only
LAG_HEADER = "X-Projection-Lag"
MIN_POSITION_HEADER = "X-Min-Position"
POLL_INTERVAL_SECONDS = 0.01


def parse_min_position(header: str | None, query: str | None) -> int | None:
    """Either source, or both (the larger wins); anything but a positive integer is a 400."""
    positions = []
    for name, raw in ((MIN_POSITION_HEADER, header), ("min_position", query)):
        if raw is None:
            continue
        position = parse_integer(raw, minimum=1)
        if position is None:
            raise ApiError("invalid_min_position",
                           f"{name} must be a positive integer (an event position)")
        positions.append(position)
    return max(positions) if positions else None


async def check_before_waiting(pool: AsyncConnectionPool, user_id: UUID, position: int) -> None:
    """Before any wait: the caller must be a registered user (in the event store: the read
    model may not have it yet), 401 otherwise, and the position must exist, 409 otherwise
    (the request is well-formed: the store has just not got there).
    Nobody can then hold a request (and its polls) for the wait bound for nothing."""
    async with pool.connection() as conn:
        cur = await conn.execute(READ_YOUR_WRITES_CHECK, (user_id, position))
        row = await cur.fetchone()
    user_known, position_exists = row if row is not None else (True, True)
    if not user_known and not await _in_read_model(pool, user_id):
        raise unknown_user()  # users seeded straight into the read model are known too
    if not position_exists:
        raise ApiError("unknown_position", "min_position is beyond the last event")


async def _in_read_model(pool: AsyncConnectionPool, user_id: UUID) -> bool:
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(SET_USER, (str(user_id),))
        cur = await conn.execute(USER_VISIBLE, (user_id,))
        return await cur.fetchone() is not None


async def wait_for_position(
    pool: AsyncConnectionPool, position: int, timeout_seconds: float
) -> bool:
    """True once the projection has applied `position`; False if the wait ran out.

    Each poll borrows a connection only for its one statement, so requests waiting on a
    stalled projector do not starve the pool for everybody else. No user is set here:
    projection_reached() reads no user table.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        async with pool.connection() as conn:
            if await _reached(conn, position):
                return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(POLL_INTERVAL_SECONDS, max(0.0, deadline - time.monotonic())))


async def catch_up(
    conn: AsyncConnection[Any], stream_id: str, user_id: UUID, timeout_seconds: float,
    lookup: AsyncConnectionPool[Any] | None = None,
) -> bool:
    """After a read-model miss on `stream_id`: should the caller read again?

    False at once (one primary-key lookup) when the event store does not hold the stream
    for this caller: it does not exist, is deleted or is someone else's, a true 401/404.
    True once the projection has applied the stream's last event. `projection_behind` (503)
    when it still has not after the bound, rather than a 401/404 that would be a lie.

    On a replica the stream is looked up on the primary (`lookup`) and the wait is for the
    replica's own read model to reach it.

    Only misses get here, so the ordinary hit path costs nothing more. The wait polls on
    the request's own connection (read committed: each poll sees new commits) instead of
    borrowing a second one, so waiting requests never need more than they already hold.
    """
    if lookup is None:
        cur = await conn.execute(CATCH_UP_POSITION, (stream_id, user_id))
        row = await cur.fetchone()
    else:  # `conn` is a replica's: only the primary is sure to hold the write already
        async with lookup.connection() as primary:
            cur = await primary.execute(CATCH_UP_POSITION, (stream_id, user_id))
            row = await cur.fetchone()
    if row is None or row[0] is None:
        return False
    position = int(row[0])
    deadline = time.monotonic() + timeout_seconds
    while not await _reached(conn, position):
        if time.monotonic() >= deadline:
            raise ApiError("projection_behind",
                           "the read model has not caught up with this write yet; retry shortly")
        await asyncio.sleep(min(POLL_INTERVAL_SECONDS, max(0.0, deadline - time.monotonic())))
    return True


async def _reached(conn: AsyncConnection[Any], position: int) -> bool:
    cur = await conn.execute(PROJECTION_REACHED, (PROJECTION, position))
    row = await cur.fetchone()
    return row is not None and bool(row[0])
