"""The write path end to end: HTTP command → event store → wake-up (a Redis message after
the commit) → the worker's followers → read model, and the assistant's reply."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import redis
import structlog.testing

from services.core import events as ev
from services.core.eventstore import StreamAppend, append_sync, stream_info_sync
from services.core.settings import Settings
from services.core.wakeup import wake_followers_sync
from tests.integration.conftest import client, wait_until


def _user(base: str) -> uuid.UUID:
    with client(base) as c:
        r = c.post("/api/v1/users", json={"display_name": "Writer"})
        assert r.status_code == 201, r.text
        return uuid.UUID(r.json()["user_id"])


def _chat(base: str, user: uuid.UUID, text: str, **ids: str) -> dict[str, Any]:
    with client(base, user) as c:
        r = c.post("/api/v1/chat", json={"text": text, **ids},
                   headers={"Accept": "application/json"})
        assert r.status_code == 202, r.text
        return dict(r.json())


def _user_messages(db: psycopg.Connection[Any], session: str) -> list[tuple[int, str]]:
    return db.execute("SELECT seq, content FROM chat_messages WHERE session_id = %s"
                      " AND role = 'user' ORDER BY seq", (session,)).fetchall()


def test_a_chat_posted_over_http_reaches_the_read_model(
    command_url: str, db: psycopg.Connection[Any]
) -> None:
    user = _user(command_url)
    started = _chat(command_url, user, "I want to write a horror story")
    session = started["session_id"]

    row = wait_until(lambda: db.execute(
        "SELECT user_id, project_id::text, message_count, last_message_preview,"
        " last_message_at IS NOT NULL FROM sessions WHERE session_id = %s",
        (session,)).fetchone())
    assert row[0] == user and row[1] == started["project_id"]
    assert row[2] >= 1 and row[4]
    msg = db.execute("SELECT message_id::text, role, content, turn_id::text FROM chat_messages"
                     " WHERE session_id = %s AND seq = 1", (session,)).fetchone()
    assert msg == (started["message_id"], "user", "I want to write a horror story",
                   started["turn_id"])
    turn = db.execute("SELECT user_text, project_id::text, user_id FROM turns WHERE turn_id = %s",
                      (started["turn_id"],)).fetchone()
    assert turn == ("I want to write a horror story", started["project_id"], user)
    assert db.execute("SELECT 1 FROM user_projects WHERE user_id = %s AND project_id = %s",
                      (user, started["project_id"])).fetchone()


def test_duplicate_wakeups_leave_no_duplicate_rows_or_replies(
    command_url: str, settings: Settings, db: psycopg.Connection[Any]
) -> None:
    user = _user(command_url)
    session = _chat(command_url, user, "one")["session_id"]
    for i in range(5):
        _chat(command_url, user, f"more {i}", session_id=session)
    with redis.Redis.from_url(settings.redis_url) as rds:
        for _ in range(50):
            wake_followers_sync(rds, settings)
    wait_until(lambda: len(_user_messages(db, session)) == 6)
    # every message answered exactly once (the replies may come in any order)
    wait_until(lambda: db.execute(
        "SELECT count(*) FROM events WHERE stream_id = %s AND type = 'MessagePosted'"
        " AND data->>'role' = 'assistant'", (f"session-{session}",)).fetchone() == (6,),
        timeout=30)
    assert db.execute(
        "SELECT count(DISTINCT data->>'reply_to') FROM events WHERE stream_id = %s"
        " AND data->>'role' = 'assistant'", (f"session-{session}",)).fetchone() == (6,)
    seqs = [r[0] for r in db.execute(
        "SELECT seq FROM chat_messages WHERE session_id = %s ORDER BY seq", (session,))]
    assert seqs == list(range(1, len(seqs) + 1))
    assert db.execute("SELECT count(DISTINCT message_id) = count(*) FROM chat_messages"
                      " WHERE session_id = %s", (session,)).fetchone() == (True,)


def test_an_event_whose_wakeup_was_lost_still_converges_on_the_sweep(
    command_url: str, database_url: str, db: psycopg.Connection[Any], settings: Settings
) -> None:
    """Appended straight to the store with no wake-up, as if the process died right after
    its commit: the followers' sweep finds it."""
    user = _user(command_url)
    session = _chat(command_url, user, "start")["session_id"]
    wait_until(lambda: _user_messages(db, session))
    stream = ev.session_stream(uuid.UUID(session))
    with psycopg.connect(database_url) as conn, conn.transaction():
        info = stream_info_sync(conn, stream)
        assert info is not None
        append_sync(conn, [StreamAppend(stream_id=stream, expected_version=info.version,
                                        events=[ev.SessionRenamed(session_id=uuid.UUID(session),
                                                                  title="No wake-up")])])
    wait_until(lambda: db.execute("SELECT title FROM sessions WHERE session_id = %s",
                                  (session,)).fetchone() == ("No wake-up",),
               timeout=settings.projector_sweep_seconds + 10)


def test_32_concurrent_posts_to_one_session_all_land_with_gapless_sequence_numbers(
    command_url: str, db: psycopg.Connection[Any]
) -> None:
    user = _user(command_url)
    session = _chat(command_url, user, "seed")["session_id"]
    texts = [f"parallel {i}" for i in range(32)]
    errors: list[BaseException] = []

    def post(chunk: list[str]) -> None:
        try:
            for text in chunk:
                _chat(command_url, user, text, session_id=session)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(texts[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = wait_until(lambda: (r := _user_messages(db, session)) and len(r) == 33 and r)
    assert sorted(c for _, c in rows) == sorted(["seed", *texts])
    seqs = [r[0] for r in db.execute(
        "SELECT seq FROM chat_messages WHERE session_id = %s ORDER BY seq", (session,))]
    assert seqs == list(range(1, len(seqs) + 1))


def test_a_deleted_session_leaves_no_row_and_no_text(
    command_url: str, db: psycopg.Connection[Any]
) -> None:
    user = _user(command_url)
    secret = f"my secret plot {uuid.uuid4()}"
    session = _chat(command_url, user, secret)["session_id"]
    wait_until(lambda: _user_messages(db, session))
    with client(command_url, user) as c:
        assert c.delete(f"/api/v1/sessions/{session}").status_code == 204
    wait_until(lambda: db.execute("SELECT count(*) FROM sessions WHERE session_id = %s",
                                  (session,)).fetchone() == (0,))
    for table in ("chat_messages", "turns"):
        assert db.execute(f"SELECT count(*) FROM {table} WHERE session_id = %s",
                          (session,)).fetchone() == (0,)
    stored = db.execute("SELECT string_agg(data::text, '') FROM events WHERE stream_id = %s",
                        (f"session-{session}",)).fetchone()[0]
    assert secret not in stored


def test_a_request_id_travels_into_event_metadata_and_the_projector_log(
    command_url: str, db: psycopg.Connection[Any]
) -> None:
    user = _user(command_url)
    request_id = uuid.uuid4().hex
    with structlog.testing.capture_logs() as logs, client(command_url, user) as c:
        r = c.post("/api/v1/chat", json={"text": "traced"},
                   headers={"Accept": "application/json", "X-Request-ID": request_id})
        assert r.status_code == 202
        position = r.json()["position"]
        wait_until(lambda: any(_covers(e, position) for e in list(logs)))
    metadata = db.execute("SELECT metadata->>'request_id' FROM events WHERE position = %s",
                          (position,)).fetchone()
    assert metadata == (request_id,)
    # one INFO line per batch: the batch that applied the event names its request
    line = next(e for e in logs if _covers(e, position))
    assert request_id in line["request_ids"]


def _covers(line: dict[str, Any], position: int) -> bool:
    return (line.get("event") == "batch_projected"
            and line["first_position"] <= position <= line["last_position"])
