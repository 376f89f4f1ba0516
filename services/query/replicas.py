"""The query side on PostgreSQL streaming replicas (settings.query_database_urls).

Reads go to the hot standbys in turn; the primary (settings.database_url) is the fallback.
Read-your-writes holds across replication lag: the read model's checkpoint row replicates
with the rows it covers, so projection_reached() on a standby says whether *that* standby's
read model includes a position. A read with a position therefore

1. waits on the replica whose turn it is, at most settings.replica_wait_seconds;
2. else takes any other replica that has it already (one look each);
3. else waits on the primary for the rest of settings.min_position_wait_seconds, and reads
   there, with `X-Projection-Lag: true` if even the primary has not got there (the
   primary's read model is never behind a standby's, so it is the best answer there is).

A replica that cannot lend a connection within REPLICA_CONNECT_TIMEOUT_SECONDS, or whose
connection breaks, is left alone for settings.replica_retry_seconds (its reads go to the
next one, or the primary). A read already running on a replica as it dies fails with the
service's usual 503 `unavailable`; the retry it asks for lands elsewhere.

Reads without a position take the replica whose turn it is, however far behind it is: the
position is the contract for seeing one's own writes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.core.settings import Settings
from services.query.consistency import wait_for_position

log = structlog.get_logger("query.replicas")

REPLICA_CONNECT_TIMEOUT_SECONDS = 1.0
_UNAVAILABLE = (PoolTimeout, psycopg.OperationalError, TimeoutError)


def replica_urls(settings: Settings) -> list[str]:
    return [u.strip() for u in settings.query_database_urls.split(",") if u.strip()]


@dataclass
class Replica:
    name: str  # host:port, for logs (never the password)
    pool: AsyncConnectionPool
    down_until: float = 0.0

    @classmethod
    def of(cls, url: str, pool: AsyncConnectionPool) -> Replica:
        parts = urlsplit(url)
        return cls(name=f"{parts.hostname}:{parts.port or 5432}", pool=pool)


class ReadPools:
    """The primary's pool and the replicas' pools; route() picks where one read goes."""

    def __init__(self, primary: AsyncConnectionPool, replicas: list[Replica],
                 settings: Settings) -> None:
        self.primary, self.replicas, self._settings = primary, replicas, settings
        self._turn = itertools.count()

    def _in_turn(self) -> list[Replica]:
        """The replicas not marked down, starting with the one whose turn it is."""
        now = time.monotonic()
        up = [r for r in self.replicas if r.down_until <= now]
        if not up:
            return []
        start = next(self._turn) % len(up)
        return up[start:] + up[:start]

    def mark_down(self, replica: Replica, exc: BaseException) -> None:
        if replica.down_until <= time.monotonic():
            log.warning("replica_unavailable", replica=replica.name, error=repr(exc),
                        retry_in_s=self._settings.replica_retry_seconds)
        replica.down_until = time.monotonic() + self._settings.replica_retry_seconds

    async def _reached_on(self, replica: Replica, position: int, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds + REPLICA_CONNECT_TIMEOUT_SECONDS):
                return await wait_for_position(replica.pool, position, seconds)
        except _UNAVAILABLE as exc:
            self.mark_down(replica, exc)
            return False

    async def route(self, position: int | None, wait_seconds: float) -> ReadRoute:
        """Where a read goes, having waited for `position` (if any) there."""
        replicas = self._in_turn()
        if position is None:
            return ReadRoute(self, replicas[0] if replicas else None, reached=True)
        deadline = time.monotonic() + wait_seconds
        if replicas:
            first, *others = replicas
            if await self._reached_on(first, position,
                                      min(self._settings.replica_wait_seconds, wait_seconds)):
                return ReadRoute(self, first, reached=True)
            for replica in others:
                if await self._reached_on(replica, position, 0):
                    return ReadRoute(self, replica, reached=True)
        remaining = max(0.0, deadline - time.monotonic())
        reached = await wait_for_position(self.primary, position, remaining)
        return ReadRoute(self, None, reached=reached)

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.pool.close()


@dataclass
class ReadRoute:
    pools: ReadPools
    replica: Replica | None  # None: the primary
    reached: bool  # False: the position was not reached in time (X-Projection-Lag)

    @asynccontextmanager
    async def connection(self, primary_timeout: float) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection of the chosen replica, else (it cannot lend one) of the primary."""
        async with AsyncExitStack() as stack:
            replica, conn = self.replica, None
            if replica is not None:
                try:
                    conn = await stack.enter_async_context(
                        replica.pool.connection(timeout=REPLICA_CONNECT_TIMEOUT_SECONDS))
                except _UNAVAILABLE as exc:
                    self.pools.mark_down(replica, exc)
                    replica = None
            if conn is None:
                conn = await stack.enter_async_context(
                    self.pools.primary.connection(timeout=primary_timeout))
            try:
                yield conn
            except psycopg.OperationalError as exc:
                if replica is not None:  # died under this read: the next ones go elsewhere
                    self.pools.mark_down(replica, exc)
                raise
