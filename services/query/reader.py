"""The per-request read transaction: one pooled connection, the caller set as app.user_id.

Handlers take a `Reader` (an app-level dependency). By the time they see it, the caller is
authenticated against the read model and any requested min_position has been waited for.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import structlog
from litestar import Response
from litestar.datastructures import State
from litestar.params import HeaderParameter, QueryParameter
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from services.core.db import SET_USER
from services.core.events import user_stream
from services.core.settings import Settings
from services.http.auth import USER_HEADER, parse_user_id, unknown_user
from services.query.consistency import (
    LAG_HEADER,
    MIN_POSITION_HEADER,
    catch_up,
    parse_min_position,
)
from services.query.params import POSITION_SCHEMA
from services.query.replicas import ReadPools
from services.query.users import UserProfile, fetch_user

T = TypeVar("T")
log = structlog.get_logger("query.reader")
CONNECTION_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Reader:
    conn: AsyncConnection[Any]
    user: UserProfile
    projection_lag: bool
    catch_up_seconds: float
    # where a miss asks the event store: the primary when `conn` is a replica's, which may
    # not have replayed the write yet (None: `conn` itself)
    lookup: AsyncConnectionPool[Any] | None = None

    async def caught_up(self, stream_id: str) -> bool:
        """After a miss on one of the caller's streams: read again? (consistency.catch_up)"""
        return await catch_up(self.conn, stream_id, self.user.user_id, self.catch_up_seconds,
                              lookup=self.lookup)

    def respond(self, content: T) -> Response[T]:
        headers = {LAG_HEADER: "true"} if self.projection_lag else None
        return Response(content, headers=headers)


async def provide_reader(
    state: State,
    x_user_id: Annotated[
        str | None,
        # documented as the `caller` security scheme (services/query/app.py)
        HeaderParameter(name=USER_HEADER, include_in_schema=False),
    ] = None,
    x_min_position: Annotated[
        str | None,
        HeaderParameter(
            name=MIN_POSITION_HEADER,
            description="Read-your-writes: wait until the read model has applied this event "
            "position (as returned by the command service). On timeout the response "
            f"carries `{LAG_HEADER}: true`.",
            schema_extra=POSITION_SCHEMA,
        ),
    ] = None,
    min_position: Annotated[
        str | None,
        QueryParameter(
            name="min_position",
            description=f"The same as the {MIN_POSITION_HEADER} header.",
            schema_extra=POSITION_SCHEMA,
        ),
    ] = None,
) -> AsyncGenerator[Reader, None]:
    user_id = parse_user_id(x_user_id)
    position = parse_min_position(x_min_position, min_position)
    settings: Settings = state.settings
    read_pools: ReadPools = state.read_pools

    # a replica (or the primary) whose read model has reached `position`, if any can
    route = await read_pools.route(position, settings.min_position_wait_seconds)
    lag = not route.reached
    if lag:
        log.info("projection_lag", min_position=position)

    lookup = read_pools.primary if route.replica is not None else None
    async with route.connection(CONNECTION_TIMEOUT_SECONDS) as conn, conn.transaction():
        # Transaction-local (is_local = true): it ends with the transaction, so the pooled
        # connection goes back with app.user_id = '' and RLS shows the next borrower nothing.
        async with conn.pipeline():  # one round trip for both
            await conn.execute(SET_USER, (str(user_id),))
            user = await fetch_user(conn, user_id)
        if user is None and await catch_up(
            conn, user_stream(user_id), user_id, settings.min_position_wait_seconds,
            lookup=lookup,
        ):
            user = await fetch_user(conn, user_id)  # just registered: projected now
        if user is None:
            raise unknown_user()
        structlog.contextvars.bind_contextvars(user_id=str(user_id))
        yield Reader(
            conn=conn,
            user=user,
            projection_lag=lag,
            catch_up_seconds=settings.min_position_wait_seconds,
            lookup=lookup,
        )
