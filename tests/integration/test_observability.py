"""Observability over real HTTP: Prometheus /metrics on every service and the worker,
projection lag measured from the database, SSE connections counted while open, and the
ids of the user's HTTP request carried into the assistant's events and log lines."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
import structlog
import structlog.testing
from prometheus_client.parser import text_string_to_metric_families

from services.command.app import create_app as command_app
from services.core import events as ev
from services.core.eventstore import StreamAppend, append_sync
from services.core.settings import Settings
from services.gateway.app import create_app as gateway_app
from services.query.app import create_app as query_app
from tests.integration.conftest import client, free_port, wait_until
from workers.main import running_worker

REPLY_TIMEOUT_SECONDS = 20.0


# Reading the exposition format ----------------------------------------------------------


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
    found = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                found += sample.value
    return found


def sample_labels(text: str, name: str) -> list[dict[str, str]]:
    return [s.labels for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name]


# Fixtures -------------------------------------------------------------------------------


@pytest.fixture
def command_url(settings: Settings, serve_app: Callable[[Any], str]) -> str:
    return serve_app(command_app(settings))


@pytest.fixture
def private_settings(settings: Settings, make_database: Callable[[], str]) -> Settings:
    """Its own database: these tests need a projector that is not running, or write
    read-model rows by hand, which the projector of other tests must never meet."""
    return msgspec.structs.replace(settings, database_url=make_database())


def _user(base: str) -> uuid.UUID:
    with client(base) as c:
        r = c.post("/api/v1/users", json={"display_name": "Observer"})
        assert r.status_code == 201, r.text
        return uuid.UUID(r.json()["user_id"])


def _chat(base: str, user: uuid.UUID, text: str, headers: dict[str, str] | None = None
          ) -> dict[str, Any]:
    with client(base, user) as c:
        r = c.post("/api/v1/chat", json={"text": text},
                   headers={"Accept": "application/json", **(headers or {})})
        assert r.status_code == 202, r.text
        return dict(r.json())


# /metrics everywhere --------------------------------------------------------------------


def test_every_service_answers_metrics_in_the_prometheus_text_format(
    settings: Settings, serve_app: Callable[[Any], str]
) -> None:
    command = serve_app(command_app(settings))
    query = serve_app(query_app(settings))
    gateway = serve_app(gateway_app(msgspec.structs.replace(
        settings, command_url=command, query_url=query)))

    command_text = scrape(f"{command}/metrics")
    for name in ("chat_http_request_duration_seconds", "chat_event_append_duration_seconds",
                 "chat_sse_connections"):
        assert f"# TYPE {name} " in command_text, name
    query_text = scrape(f"{query}/metrics")
    for name in ("chat_http_request_duration_seconds", "chat_sse_connections",
                 "chat_projection_lag_events", "chat_projection_lag_seconds"):
        assert f"# TYPE {name} " in query_text, name
    # measured on scrape, through projection_lag() as the query role
    assert 'chat_projection_lag_events{projection="read_model"}' in query_text

    assert httpx.get(f"{gateway}/healthz", timeout=10).status_code == 200
    gateway_text = scrape(f"{gateway}/metrics")
    assert total(gateway_text, "chat_http_request_duration_seconds_count",
                 service="gateway", route="/healthz", status="200") >= 1


def test_a_chat_counts_in_the_request_latency_of_its_route_and_in_append_latency(
    command_url: str, settings: Settings
) -> None:
    with running_worker(settings, threads=2):
        user = _user(command_url)
        chat_route = {"service": "command", "method": "POST", "route": "/api/v1/chat",
                      "status": "202"}
        before = scrape(f"{command_url}/metrics")
        accepted = _chat(command_url, user, "Count me")
        after = scrape(f"{command_url}/metrics")

    name = "chat_http_request_duration_seconds_count"
    assert total(after, name, **chat_route) == total(before, name, **chat_route) + 1
    appends = "chat_event_append_duration_seconds_count"
    assert total(after, appends, outcome="ok") > total(before, appends, outcome="ok")
    assert total(after, "chat_event_append_duration_seconds_sum") > 0
    # routes are templates: no label value ever holds an id
    for labels in sample_labels(after, name):
        assert accepted["session_id"] not in labels["route"]
        assert str(user) not in labels["route"]


# SSE connections ------------------------------------------------------------------------


def _seed_session(database_url: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A user and a session in the read model, with no reply ever started: a stream of it
    stays open (heartbeats only) until the client leaves."""
    user, session = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (user_id, display_name) VALUES (%s, 'Reader')", (user,))
        conn.execute("INSERT INTO sessions (session_id, user_id, title) VALUES (%s, %s, 'Open')",
                     (session, user))
    return user, session


def test_the_sse_gauge_counts_a_stream_while_it_is_open_and_not_after_the_client_leaves(
    private_settings: Settings, serve_app: Callable[[Any], str]
) -> None:
    query = serve_app(query_app(private_settings))
    user, session = _seed_session(private_settings.database_url)

    def open_streams() -> float:
        return total(scrape(f"{query}/metrics"), "chat_sse_connections")

    idle = open_streams()
    with httpx.Client(base_url=query, timeout=10) as c, c.stream(
        "GET", f"/api/v1/sessions/{session}/stream", headers={"X-User-ID": str(user)}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        wait_until(lambda: open_streams() == idle + 1)
    # the client closed the connection: the server's stream ends and the gauge goes back
    wait_until(lambda: open_streams() == idle)


# Projection lag -------------------------------------------------------------------------


def _lag_as_query_role(database_url: str) -> tuple[int, float]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET ROLE chat_query")  # may not read events, may call projection_lag()
        row = conn.execute("SELECT events, seconds FROM projection_lag('read_model')").fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def _append_users(database_url: str, count: int) -> None:
    with psycopg.connect(database_url) as conn, conn.transaction():
        for _ in range(count):
            user = uuid.uuid4()
            append_sync(conn, [StreamAppend(
                stream_id=ev.user_stream(user), expected_version=0, stream_type="user",
                owner_id=user, events=[ev.UserRegistered(user_id=user, display_name="Lag")])])


def test_projection_lag_counts_unprojected_events_and_their_age_then_zero_when_caught_up(
    private_settings: Settings, serve_app: Callable[[Any], str]
) -> None:
    database_url = private_settings.database_url
    assert _lag_as_query_role(database_url) == (0, 0.0)

    _append_users(database_url, 3)  # no projector runs yet
    time.sleep(0.05)
    events, seconds = _lag_as_query_role(database_url)
    assert events == 3 and seconds >= 0.05

    query_text = scrape(f"{serve_app(query_app(private_settings))}/metrics")
    assert total(query_text, "chat_projection_lag_events", projection="read_model") == 3
    assert total(query_text, "chat_projection_lag_seconds", projection="read_model") >= 0.05

    port = free_port()
    worker_settings = msgspec.structs.replace(private_settings, worker_metrics_port=port)
    with running_worker(worker_settings, threads=1):
        # the worker's own endpoint, fed by its sweep
        def worker_lag() -> float | None:
            text = scrape(f"http://127.0.0.1:{port}/metrics")
            if 'chat_projection_lag_events{projection="read_model"}' not in text:
                return None
            return total(text, "chat_projection_lag_events", projection="read_model")

        wait_until(lambda: worker_lag() == 0, timeout=10)
        assert _lag_as_query_role(database_url) == (0, 0.0)
        worker_text = scrape(f"http://127.0.0.1:{port}/metrics")
    assert total(worker_text, "chat_projection_lag_seconds", projection="read_model") == 0


# The request's ids in the assistant's events and logs -------------------------------------


def test_the_assistant_carries_the_users_request_ids_into_its_event_and_its_log_lines(
    command_url: str, settings: Settings, db: psycopg.Connection[Any]
) -> None:
    user = _user(command_url)
    request_id, correlation_id = uuid.uuid4().hex, f"flow-{uuid.uuid4().hex[:8]}"
    port = free_port()
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs, running_worker(msgspec.structs.replace(settings, worker_metrics_port=port),
                              threads=2):
        accepted = _chat(command_url, user, "Trace my reply",
                         headers={"X-Request-ID": request_id, "X-Correlation-ID": correlation_id})
        stream = f"session-{accepted['session_id']}"
        row = wait_until(lambda: db.execute(
            "SELECT metadata FROM events WHERE stream_id = %s AND type = 'MessagePosted'"
            " AND data->>'role' = 'assistant'", (stream,)).fetchone(),
            timeout=REPLY_TIMEOUT_SECONDS)
        wait_until(lambda: any(e.get("event") == "reply_stored" for e in list(logs)))
        worker_text = scrape(f"http://127.0.0.1:{port}/metrics")

    metadata = row[0]
    assert metadata["request_id"] == request_id
    assert metadata["correlation_id"] == correlation_id
    question = db.execute("SELECT position FROM events WHERE stream_id = %s"
                          " AND data->>'message_id' = %s", (stream, accepted["message_id"]),
                          ).fetchone()
    assert metadata["causation_id"] == str(question[0])  # caused by the user's MessagePosted

    lines = [e for e in logs if e.get("message_id") == accepted["message_id"]
             and e.get("event") in ("reply_started", "reply_stored")]
    assert {e["event"] for e in lines} == {"reply_started", "reply_stored"}
    for line in lines:
        assert line["request_id"] == request_id
        assert line["correlation_id"] == correlation_id

    assert total(worker_text, "chat_assistant_reply_duration_seconds_count",
                 provider="offline", outcome="stop") >= 1
    assert total(worker_text, "chat_assistant_first_token_seconds_count",
                 provider="offline") >= 1


@pytest.fixture(autouse=True)
def _no_leftover_context() -> Iterator[None]:
    # capture_logs and bound contextvars are process-wide: leave nothing to the next test
    yield
    structlog.contextvars.clear_contextvars()
