"""A worker killed with SIGKILL (no clean-up of any kind) in the middle of a projection
batch and in the middle of an assistant reply: after a restart the read model is complete
without duplicates, and the interrupted reply is recorded as failed (AssistantReplyFailed,
and an `error` event for the client following it) within seconds, not after Dramatiq's
minute-long redelivery. A message stored with no wake-up sent is answered anyway."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from httpx_sse import connect_sse

from services.core import events as ev
from services.core.eventstore import StreamAppend, append_sync
from tests.integration.conftest import on_both_brokers, wait_until
from tests.integration.faultkit import (
    System,
    assert_event_store_consistent,
    assert_read_model_has_no_duplicates,
    projected_message_ids,
    stored_message_ids,
    system,
)

SESSIONS, MESSAGES_PER_SESSION = 20, 1_000


@pytest.fixture
def fresh_db(make_database: Callable[[], str]) -> Iterator[psycopg.Connection[Any]]:
    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def _url(conn: psycopg.Connection[Any]) -> str:
    return conn.info.dsn


def _seed_backlog(conn: psycopg.Connection[Any]) -> int:
    """A user with SESSIONS sessions of MESSAGES_PER_SESSION user messages, appended
    straight to the store (no request id: nobody asked for replies), nothing projected."""
    user, project = uuid.uuid4(), uuid.uuid4()
    appends = [
        StreamAppend(stream_id=ev.user_stream(user), expected_version=0, stream_type="user",
                     owner_id=user, events=[ev.UserRegistered(user_id=user, display_name="K")]),
        StreamAppend(stream_id=ev.project_stream(project), expected_version=0,
                     stream_type="project", owner_id=user,
                     events=[ev.ProjectCreated(project_id=project, owner_id=user)]),
    ]
    for _ in range(SESSIONS):
        sid = uuid.uuid4()
        events: list[ev.Event] = [ev.SessionStarted(session_id=sid, user_id=user,
                                                    project_id=project, title="backlog")]
        events += [ev.MessagePosted(session_id=sid, message_id=uuid.uuid4(), user_id=user,
                                    role="user", content=f"line {i}", turn_id=uuid.uuid4())
                   for i in range(MESSAGES_PER_SESSION)]
        appends.append(StreamAppend(stream_id=ev.session_stream(sid), expected_version=0,
                                    stream_type="session", owner_id=user, events=events))
    with conn.transaction():
        append_sync(conn, appends, {"user_id": str(user)})
    return SESSIONS * MESSAGES_PER_SESSION


def test_a_worker_killed_mid_projection_leaves_a_complete_read_model_without_duplicates(
    fresh_db: psycopg.Connection[Any], redis_url: str, tmp_path: Path
) -> None:
    total = _seed_backlog(fresh_db)
    count = "SELECT count(*) FROM chat_messages"
    with system(_url(fresh_db), redis_url, tmp_path, projector_batch_size="2000") as sys_:
        worker = sys_.worker()
        # kill it as soon as the first batches are in: mid-way through the backlog
        wait_until(lambda: fresh_db.execute(count).fetchone()[0] > 0, timeout=30,  # type: ignore[index]
                   interval=0.005)
        worker.kill()
        projected = fresh_db.execute(count).fetchone()[0]  # type: ignore[index]
        assert 0 < projected < total, "the kill did not land mid-projection"
        sys_.worker()
        wait_until(lambda: fresh_db.execute(count).fetchone()[0] == total,  # type: ignore[index]
                   timeout=30)
    assert_read_model_has_no_duplicates(fresh_db)
    assert projected_message_ids(fresh_db) == stored_message_ids(fresh_db)
    assert_event_store_consistent(fresh_db)


def _user(sys_: System) -> str:
    r = httpx.post(f"{sys_.command_url}/api/v1/users", json={"display_name": "Ann"}, timeout=10)
    assert r.status_code == 201, r.text
    return str(r.json()["user_id"])


def _failures(conn: psycopg.Connection[Any], message_id: str) -> list[tuple[str, Any]]:
    return conn.execute(
        "SELECT data->>'error', data->'metadata'->>'error_code' FROM events"
        " WHERE type = 'AssistantReplyFailed' AND data->>'reply_to' = %s", (message_id,)
    ).fetchall()


def _replies(conn: psycopg.Connection[Any], message_id: str) -> list[tuple[str]]:
    return conn.execute(
        "SELECT data->>'content' FROM events WHERE type = 'MessagePosted'"
        " AND data->>'role' = 'assistant' AND data->>'reply_to' = %s", (message_id,)
    ).fetchall()


@on_both_brokers
def test_a_reply_whose_worker_is_killed_is_recorded_as_failed_and_the_client_told(
    fresh_db: psycopg.Connection[Any], redis_url: str, tmp_path: Path, broker_url: str
) -> None:
    # a slow offline provider (about 6 s a reply) and a short lease: the kill lands mid-way
    with system(_url(fresh_db), redis_url, tmp_path, llm_offline_delay_seconds="0.3",
                reply_lease_seconds="1.5", reply_recovery_sweep_seconds="0.2",
                broker_url=broker_url) as sys_:
        sys_.service("command")
        worker = sys_.worker()
        user = _user(sys_)
        seen: list[tuple[str, str]] = []
        opened = threading.Event()

        def follow() -> None:  # the streamed POST /chat, as a browser would read it
            with httpx.Client(timeout=httpx.Timeout(60, connect=5)) as c, connect_sse(
                c, "POST", f"{sys_.command_url}/api/v1/chat",
                json={"text": "I want to write a horror story"}, headers={"X-User-ID": user},
            ) as source:
                opened.set()
                for event in source.iter_sse():
                    seen.append((event.event, event.data))

        client = threading.Thread(target=follow, daemon=True)
        client.start()
        assert opened.wait(10)
        wait_until(lambda: [k for k, _ in seen].count("delta") >= 2, timeout=20)
        worker.kill()
        sys_.worker()
        # well under the minute Dramatiq's own redelivery would take
        client.join(timeout=45)
        assert not client.is_alive(), f"the stream was left hanging: {seen[-3:]}"
        kinds = [k for k, _ in seen]
        assert kinds[0] == "session" and kinds[-1] == "error", kinds
        assert "worker_lost" in seen[-1][1]
        assert "message" not in kinds
        message_id = httpx.Response(200, content=seen[0][1]).json()["message_id"]
        assert [code for _, code in _failures(fresh_db, message_id)] == ["worker_lost"]
        assert _replies(fresh_db, message_id) == []

        # the new worker answers the next message in full
        r = httpx.post(f"{sys_.command_url}/api/v1/chat",
                       json={"text": "Try again", "session_id": seen and
                             httpx.Response(200, content=seen[0][1]).json()["session_id"]},
                       headers={"X-User-ID": user, "Accept": "application/json"}, timeout=10)
        assert r.status_code == 202, r.text
        again = r.json()["message_id"]
        wait_until(lambda: _replies(fresh_db, again), timeout=20)
        assert _failures(fresh_db, again) == []
    assert_event_store_consistent(fresh_db)


def test_a_user_message_stored_while_no_worker_ran_and_no_wakeup_came_is_answered_once(
    fresh_db: psycopg.Connection[Any], redis_url: str, tmp_path: Path
) -> None:
    """As if the command service died right after its commit: the message is in the store,
    nobody was woken. The store is the request: a worker started later answers it."""
    with system(_url(fresh_db), redis_url, tmp_path, llm_offline_delay_seconds="0") as sys_:
        sys_.service("command")
        user = _user(sys_)
        sid, mid = uuid.uuid4(), uuid.uuid4()
        project = uuid.uuid4()
        with fresh_db.transaction():
            append_sync(fresh_db, [
                StreamAppend(stream_id=ev.project_stream(project), expected_version=0,
                             stream_type="project", owner_id=uuid.UUID(user),
                             events=[ev.ProjectCreated(project_id=project,
                                                       owner_id=uuid.UUID(user))]),
                StreamAppend(stream_id=ev.session_stream(sid), expected_version=0,
                             stream_type="session", owner_id=uuid.UUID(user), events=[
                                 ev.SessionStarted(session_id=sid, user_id=uuid.UUID(user),
                                                   project_id=project),
                                 ev.MessagePosted(session_id=sid, message_id=mid,
                                                  user_id=uuid.UUID(user), role="user",
                                                  content="I want to write a ghost story",
                                                  turn_id=uuid.uuid4())]),
            ], {"user_id": user, "request_id": "lost-wakeup"})
        sys_.worker()
        (reply,) = wait_until(lambda: _replies(fresh_db, str(mid)), timeout=20)
        assert "ghost story" in reply[0]
        for _ in range(3):  # more wake-ups: asked once, answered once
            httpx.post(f"{sys_.command_url}/api/v1/users", json={"display_name": "x"},
                       timeout=10)
        time.sleep(1.5)
        assert len(_replies(fresh_db, str(mid))) == 1
