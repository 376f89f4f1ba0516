"""HTTP metrics: request latency by route and status (the metric itself is defined with every
other one in services/core/metrics.py), and `/metrics` for the services and the gateway."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import prometheus_client
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from services.core.metrics import HTTP_REQUEST_SECONDS, REGISTRY

METRICS_PATH = "/metrics"
UNMATCHED_ROUTE = "unmatched"

Message = MutableMapping[str, Any]
SendFn = Callable[[Message], Awaitable[None]]


def timed_send(send: SendFn, service: str, method: str, route: str) -> SendFn:
    """`send`, observing the request's latency and status when the response starts. A
    request whose client left before any response is not observed."""
    started = time.perf_counter()

    async def send_timed(message: Message) -> None:
        if message["type"] == "http.response.start":
            HTTP_REQUEST_SECONDS.labels(service, method, route, str(message["status"])).observe(
                time.perf_counter() - started
            )
        await send(message)

    return send_timed


class MetricsMiddleware(ASGIMiddleware):
    """Request latency by route template and status, for a Litestar app. Litestar runs app
    middleware after routing, so `path_template` is known (a path no route matches never
    gets here) and handler errors arrive as the responses they map to."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, service: str) -> None:
        self.service = service

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        route = str(scope.get("path_template") or UNMATCHED_ROUTE)
        method = str(scope.get("method", ""))
        await next_app(scope, receive, timed_send(send, self.service, method, route))  # type: ignore[arg-type]


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for (Prometheus text by default)."""
    encoder, content_type = prometheus_client.exposition.choose_encoder(accept or "")
    return encoder(REGISTRY), content_type


def metrics_handler(
    service: str, refresh: Callable[[State], Awaitable[None]] | None = None
) -> HTTPRouteHandler:
    """GET /metrics for a Litestar service; `refresh(state)` runs first (the query service
    measures projection lag on scrape)."""

    @get(METRICS_PATH, operation_id=f"{service}Metrics", include_in_schema=False)
    async def metrics(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
        if refresh is not None:
            await refresh(state)
        body, content_type = exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return metrics
