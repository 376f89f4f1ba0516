"""/healthz and /readyz, the same for every service: alive, and able to reach its database
and Redis (quickly: a probe must never hang or answer 500)."""

from __future__ import annotations

import asyncio

import structlog
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from psycopg_pool import AsyncConnectionPool
from redis import asyncio as aioredis

READY_TIMEOUT_SECONDS = 2.0
SELECT_ONE = "SELECT 1"
log = structlog.get_logger("health")


async def database_ready(pool: AsyncConnectionPool | None) -> bool:
    if pool is None:
        return False
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with pool.connection(timeout=READY_TIMEOUT_SECONDS) as conn:
                await conn.execute(SELECT_ONE)
        return True
    except Exception as exc:  # any failure means "not ready", never a 500
        log.warning("database_not_ready", error=repr(exc))
        return False


async def redis_ready(client: aioredis.Redis | None) -> bool:
    if client is None:
        return False
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await client.ping()
        return True
    except Exception as exc:
        log.warning("redis_not_ready", error=repr(exc))
        return False


def health_controller(service: str) -> type[Controller]:
    """The probes for `service` ("command", "query"), reading state.pool and state.redis."""

    class HealthController(Controller):
        path = "/"
        tags = ("health",)

        @get("/healthz", operation_id=f"{service}Healthz")
        async def healthz(self) -> dict[str, str]:
            """Alive: the process answers."""
            return {"status": "ok"}

        @get("/readyz", operation_id=f"{service}Readyz")
        async def readyz(self, state: State) -> Response[dict[str, object]]:
            """Ready when the database and Redis answer; else 503 saying which does not."""
            checks = {
                "database": await database_ready(getattr(state, "pool", None)),
                "redis": await redis_ready(getattr(state, "redis", None)),
            }
            if all(checks.values()):
                return Response({"status": "ready", **checks})
            failing = ", ".join(name for name, ok in checks.items() if not ok)
            return Response(
                {"error": "not_ready", "detail": f"not reachable: {failing}", **checks},
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
            )

    HealthController.__name__ = f"{service.title()}HealthController"
    return HealthController
