"""Read-your-writes: wait (briefly) until the read model has applied a given event.

The command service returns the global position of what it appended; a client that passes
it back (X-Min-Position or ?min_position=) reads a model that includes its own write, or,
after settings.min_position_wait_seconds, what there is plus `X-Projection-Lag: true`.
"""

from __future__ import annotations

import asyncio
import time

from psycopg_pool import AsyncConnectionPool

from services.http.errors import ApiError

PROJECTION = "read_model"
PROJECTION_REACHED = "SELECT projection_reached(%s, %s)"
LAG_HEADER = "X-Projection-Lag"
MIN_POSITION_HEADER = "X-Min-Position"
POLL_INTERVAL_SECONDS = 0.01
_MAX_POSITION = 2**63 - 1  # events.position is a bigint


def parse_min_position(header: str | None, query: str | None) -> int | None:
    """Either source, or both (the larger wins); anything but a positive integer is a 400."""
    positions = []
    for name, raw in ((MIN_POSITION_HEADER, header), ("min_position", query)):
        if raw is None:
            continue
        value = raw.strip()
        if not value.isascii() or not value.isdigit() or not 0 < int(value) <= _MAX_POSITION:
            raise ApiError("invalid_min_position",
                           f"{name} must be a positive integer (an event position)")
        positions.append(int(value))
    return max(positions) if positions else None


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
            cur = await conn.execute(PROJECTION_REACHED, (PROJECTION, position))
            row = await cur.fetchone()
        if row is not None and row[0]:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(POLL_INTERVAL_SECONDS, max(0.0, deadline - time.monotonic())))
