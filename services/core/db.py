"""Connection pools. Opened in a lifespan (services) or at worker boot, never at import."""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

# The database roles of db/migrations/0005_roles_and_rls.sql.
QUERY_ROLE = "chat_query"
PROJECTOR_ROLE = "chat_projector"

SET_ROLE = "SET ROLE {}"  # the role names are the constants above, never input
SET_LOCAL_ROLE = "SET LOCAL ROLE {}"
SET_USER = "SELECT set_config('app.user_id', %s, true)"


# A pooled connection the server dropped (restart, pg_terminate_backend, idle timeout) is
# replaced before it is lent instead of failing the request. Not psycopg_pool's own `check=`:
# after a failed check it sleeps with its reconnection back-off (1 s, 2 s, 4 s, ...) even
# while healthy connections wait in the pool, so a burst of killed connections stalled
# requests up to the pool timeout (tests/integration/test_faults_postgres.py found it).
#
# The check costs no round trip when there is nothing to suspect: an idle connection has
# nothing to read unless the server wrote to it, and a server ending a connection does (its
# FATAL "terminating connection" notice, then EOF). So only a connection with bytes waiting
# (or already closed) gets the real check, a query to the server; the others are lent at once.
# Checking every checkout with a query was one round trip more per request (the py-spy
# profile of the chat write path, docs/benchmarks.md).
CHECK_ATTEMPTS = 4  # then the connection is lent as is; a failure then is a 503


def _suspect(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server wrote to this idle connection (or it is closed): worth a check."""
    if conn.closed:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class CheckedAsyncPool(AsyncConnectionPool):
    async def getconn(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (its API)
        for _ in range(CHECK_ATTEMPTS - 1):
            conn = await super().getconn(timeout)
            if not _suspect(conn):
                return conn
            try:
                await AsyncConnectionPool.check_connection(conn)
                return conn
            except Exception:
                await self.putconn(conn)  # broken: the pool discards and replaces it
        return await super().getconn(timeout)


class CheckedPool(ConnectionPool):
    def getconn(self, timeout: float | None = None) -> Any:
        for _ in range(CHECK_ATTEMPTS - 1):
            conn = super().getconn(timeout)
            if not _suspect(conn):
                return conn
            try:
                ConnectionPool.check_connection(conn)
                return conn
            except Exception:
                self.putconn(conn)
        return super().getconn(timeout)


def _set_role_sync(role: str | None):  # type: ignore[no-untyped-def]
    def configure(conn: psycopg.Connection[Any]) -> None:
        if role:
            conn.execute(SET_ROLE.format(role))
        conn.commit()

    return configure


def _set_role_async(role: str | None):  # type: ignore[no-untyped-def]
    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        if role:
            await conn.execute(SET_ROLE.format(role))
        await conn.commit()

    return configure


async def open_async_pool(
    url: str, *, role: str | None = None, min_size: int = 2, max_size: int = 10,
    wait: bool = True,
) -> AsyncConnectionPool:
    """A pool whose connections act as `role` (SET ROLE at connect) when one is given.
    wait=False returns at once and connects in the background (a server that may be down,
    like a read replica, must not keep the service from starting)."""
    pool = CheckedAsyncPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        configure=_set_role_async(role),
        kwargs={"autocommit": False},
    )
    await pool.open(wait=wait, timeout=30)
    return pool


def open_pool(
    url: str, *, role: str | None = None, min_size: int = 1, max_size: int = 4
) -> ConnectionPool:
    pool = CheckedPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        configure=_set_role_sync(role),
        kwargs={"autocommit": False},
    )
    pool.open(wait=True, timeout=30)
    return pool
