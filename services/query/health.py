"""Readiness: can the pool hand out a connection that answers, quickly."""

from __future__ import annotations

import asyncio

import structlog
from psycopg_pool import AsyncConnectionPool

READY_TIMEOUT_SECONDS = 2.0
SELECT_ONE = "SELECT 1"
log = structlog.get_logger("query.health")


async def database_ready(pool: AsyncConnectionPool | None) -> bool:
    if pool is None:
        return False
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with pool.connection(timeout=READY_TIMEOUT_SECONDS) as conn:
                await conn.execute(SELECT_ONE)
        return True
    except Exception as exc:  # any failure means "not ready", never a 500
        log.warning("not_ready", error=repr(exc))
        return False
