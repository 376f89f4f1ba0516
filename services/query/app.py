"""The query service's composition root: `create_app(settings)`; nothing runs at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ControllerRouterHandler

from services.core.db import QUERY_ROLE, open_async_pool
from services.core.health import health_controller
from services.core.logging import configure_logging
from services.core.metrics import refresh_projection_lag
from services.core.redisconn import async_redis
from services.core.settings import Settings
from services.http.auth import USER_HEADER
from services.http.layer import api_description, http_layer
from services.http.metrics import metrics_handler
from services.query.consistency import PROJECTION
from services.query.controllers import ProjectsController, SessionsController, UsersController
from services.query.params import CALLER_SCHEME
from services.query.reader import provide_reader
from services.query.replicas import ReadPools, Replica, replica_urls
from services.query.streaming import StreamController

# Every route of the query service. The live stream (services/query/streaming.py) joins here.
ROUTE_HANDLERS: list[ControllerRouterHandler] = [
    health_controller("query"),
    SessionsController,
    ProjectsController,  # issue 17
    UsersController,
    StreamController,
]


async def _measure_projection_lag(state: State) -> None:
    # on scrape, through projection_lag() (the query role may not read the event store)
    await refresh_projection_lag(getattr(state, "pool", None), PROJECTION)


def create_app(settings: Settings) -> Litestar:
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # SET ROLE chat_query on every connection: RLS-bound, SELECT only.
        pool = await open_async_pool(settings.database_url, role=QUERY_ROLE)
        replicas = [Replica.of(url, await open_async_pool(url, role=QUERY_ROLE, wait=False))
                    for url in replica_urls(settings)]
        app.state.pool = pool
        app.state.read_pools = ReadPools(pool, replicas, settings)
        app.state.redis = async_redis(settings)  # live reply streams
        try:
            yield
        finally:
            app.state.pool = None
            await app.state.read_pools.close()
            await pool.close()
            await app.state.redis.aclose()

    return Litestar(
        route_handlers=[*ROUTE_HANDLERS, metrics_handler("query", _measure_projection_lag)],
        lifespan=[lifespan],
        state=State({"settings": settings, "pool": None}),
        dependencies={"reader": Provide(provide_reader)},
        openapi_config=OpenAPIConfig(
            title="Chat sessions: query API",
            version="1.0.0",
            path="/schema",
            description=api_description("Reads of the caller's sessions, messages and "
                                        "profile. Every endpoint takes `X-User-ID`."),
            # The caller's identity is a credential, not input: described as what it is.
            components=Components(security_schemes={CALLER_SCHEME: SecurityScheme(
                type="apiKey", name=USER_HEADER, security_scheme_in="header",
                description="The caller's user id, a UUID (set by the gateway). Missing: "
                "401; not a UUID: 400; no such user: 401.",
            )}),
        ),
        **http_layer("query", settings),
    )
