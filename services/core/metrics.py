"""Prometheus metrics: every metric the system exports is defined here, once.

One registry per process: prometheus_client's default REGISTRY (it also carries the
process_* and python_* collectors). Each piece runs as its own process in production
(`chatctl serve command|query|gateway`, `chatctl worker`), so each /metrics shows that
process's own numbers; the `service` label keeps HTTP numbers apart where several share a
process (the tests serve them all in one). Metric objects are created at import, which is
what prometheus_client expects: they are plain in-memory counters and touch no I/O.

Labels are bounded by construction: routes are Litestar's path templates (never raw paths),
the gateway's routes are a fixed handful, providers and models come from settings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import prometheus_client
import structlog
from prometheus_client import Gauge, Histogram
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from services.core.eventstore import ConcurrencyError

log = structlog.get_logger("metrics")

REGISTRY = prometheus_client.REGISTRY
LAG_TIMEOUT_SECONDS = 2.0
SELECT_PROJECTION_LAG = "SELECT events, seconds FROM projection_lag(%s)"

# Seconds. HTTP and appends are fast; a reply is seconds to minutes.
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REPLY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

HTTP_REQUEST_SECONDS = Histogram(
    "chat_http_request_duration_seconds",
    "Time from receiving an HTTP request to the first byte of its response (for SSE: to "
    "the stream's start, not its length).",
    ["service", "method", "route", "status"],
    buckets=_FAST_BUCKETS,
)
EVENT_APPEND_SECONDS = Histogram(
    "chat_event_append_duration_seconds",
    "Time the command service spends in one event store append call (the statements, "
    "inside the command's transaction; the commit is not included).",
    ["outcome"],  # ok | conflict | error
    buckets=_FAST_BUCKETS,
)
SSE_CONNECTIONS = Gauge(
    "chat_sse_connections",
    "Server-sent event responses open now (GET .../stream and streamed POST /chat).",
)
ASSISTANT_FIRST_TOKEN_SECONDS = Histogram(
    "chat_assistant_first_token_seconds",
    "Time from the assistant starting a reply to its first streamed token.",
    ["provider", "model"],
    buckets=_REPLY_BUCKETS,
)
ASSISTANT_REPLY_SECONDS = Histogram(
    "chat_assistant_reply_duration_seconds",
    "Time from the assistant starting a reply to its end; outcome is the finish reason "
    "(stop, length, stopped, ...) or `failed`.",
    ["provider", "model", "outcome"],
    buckets=_REPLY_BUCKETS,
)
PROJECTION_LAG_EVENTS = Gauge(
    "chat_projection_lag_events",
    "Events committed to the store that the projection has not applied yet (counted up to "
    "1,000,000).",
    ["projection"],
)
PROJECTION_LAG_SECONDS = Gauge(
    "chat_projection_lag_seconds",
    "Age of the oldest event the projection has not applied yet; 0 when caught up.",
    ["projection"],
)


# The event store ----------------------------------------------------------------------


@contextmanager
def timing_append() -> Iterator[None]:
    """Observes one append's duration, labelled by how it ended."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except ConcurrencyError:
        outcome = "conflict"
        raise
    finally:
        EVENT_APPEND_SECONDS.labels(outcome).observe(time.perf_counter() - started)


# The assistant ------------------------------------------------------------------------


def observe_reply(
    provider: str,
    model: str,
    outcome: str,
    latency_ms: int | float,
    first_token_ms: int | float | None = None,
) -> None:
    ASSISTANT_REPLY_SECONDS.labels(provider, model, outcome).observe(latency_ms / 1000)
    if first_token_ms is not None:
        ASSISTANT_FIRST_TOKEN_SECONDS.labels(provider, model).observe(first_token_ms / 1000)


# Projection lag -----------------------------------------------------------------------


def _set_lag(projection: str, row: tuple[Any, ...] | None) -> None:
    events, seconds = row if row is not None else (0, 0.0)
    PROJECTION_LAG_EVENTS.labels(projection).set(int(events))
    PROJECTION_LAG_SECONDS.labels(projection).set(float(seconds))


def _forget_lag(projection: str, exc: BaseException) -> None:
    # A stale figure would look like a healthy one: drop it until it can be measured.
    log.warning("projection_lag_unavailable", projection=projection, error=repr(exc))
    for gauge in (PROJECTION_LAG_EVENTS, PROJECTION_LAG_SECONDS):
        try:
            gauge.remove(projection)
        except KeyError:
            pass


async def refresh_projection_lag(pool: AsyncConnectionPool[Any] | None, projection: str) -> None:
    """Measures the lag (db/migrations/0008_projection_lag.sql) into the gauges."""
    try:
        if pool is None:
            raise RuntimeError("no database pool")
        async with asyncio.timeout(LAG_TIMEOUT_SECONDS):
            async with pool.connection(timeout=LAG_TIMEOUT_SECONDS) as conn:
                cur = await conn.execute(SELECT_PROJECTION_LAG, (projection,))
                row = await cur.fetchone()
    except Exception as exc:  # a scrape must answer even when the database does not
        _forget_lag(projection, exc)
        return
    _set_lag(projection, row)


def refresh_projection_lag_sync(pool: ConnectionPool[Any], projection: str) -> None:
    """The worker's variant (its sweep thread)."""
    try:
        with pool.connection(timeout=LAG_TIMEOUT_SECONDS) as conn:
            row = conn.execute(SELECT_PROJECTION_LAG, (projection,)).fetchone()
    except Exception as exc:  # the sweep thread must keep running
        _forget_lag(projection, exc)
        return
    _set_lag(projection, row)


# A metrics endpoint of its own (the worker has no HTTP server) --------------------------


def start_metrics_server(port: int, host: str) -> Callable[[], None]:
    """Serves REGISTRY at http://host:port/metrics from a daemon thread; returns what stops
    it. Port 0 turns it off; a port in use is logged, not fatal (the work matters more)."""
    if port <= 0:
        return lambda: None
    try:
        server, thread = prometheus_client.start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        log.warning("metrics_server_unavailable", host=host, port=port, error=repr(exc))
        return lambda: None
    log.info("metrics_server_started", host=host, port=port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
