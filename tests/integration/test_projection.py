"""The projector: events in the store become read-model rows, exactly once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from services.core import events as ev
from services.core.eventstore import StreamAppend, append_sync, stream_info_sync
from tests.integration.conftest import wait_until
from tests.integration.seed import register, start_session
from workers.projector import PROJECTION, catch_up


@pytest.fixture(scope="module")
def database_url(make_database: Callable[[], str]) -> str:
    """A database of its own: the poison test counts attempts on a projection nobody else
    feeds."""
    return make_database()


def _register(conn: psycopg.Connection[Any]) -> uuid.UUID:
    user = uuid.uuid4()
    return register(conn, user, email=f"{user}@x.test")


def _start_session(conn: psycopg.Connection[Any], user: uuid.UUID,
                   texts: list[str]) -> tuple[uuid.UUID, uuid.UUID]:
    session, _ = start_session(conn, user, texts)
    project = conn.execute("SELECT (data->>'project_id')::uuid FROM events"
                           " WHERE stream_id = %s AND version = 1",
                           (ev.session_stream(session),)).fetchone()[0]
    return project, session


def _post(conn: psycopg.Connection[Any], user: uuid.UUID, session: uuid.UUID,
          event: ev.Event) -> None:
    stream = ev.session_stream(session)
    with conn.transaction():
        info = stream_info_sync(conn, stream)
        assert info is not None
        append_sync(conn, [StreamAppend(stream_id=stream, expected_version=info.version,
                                        events=[event])])


def _project(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return catch_up(conn, batch_size=50)


def test_a_conversation_becomes_rows_with_counts_previews_and_turns(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    user = _register(db)
    project, session = _start_session(db, user, ["first", "second"])
    turn = db.execute("SELECT data->>'turn_id' FROM events WHERE stream_id = %s AND version = 3",
                      (ev.session_stream(session),)).fetchone()[0]
    _post(db, user, session, ev.MessagePosted(
        session_id=session, message_id=uuid.uuid4(), user_id=user, role="assistant",
        content="an answer", turn_id=uuid.UUID(turn), metadata={"model": "m"}))
    _project(database_url)

    row = db.execute("SELECT user_id, project_id, message_count, last_message_preview, last_seq,"
                     " title FROM sessions WHERE session_id = %s", (session,)).fetchone()
    assert row == (user, project, 3, "an answer", 3, "t")
    msgs = db.execute("SELECT seq, role, content, user_id FROM chat_messages"
                      " WHERE session_id = %s ORDER BY seq", (session,)).fetchall()
    assert msgs == [(1, "user", "first", user), (2, "user", "second", user),
                    (3, "assistant", "an answer", user)]
    turns = db.execute("SELECT user_text, assistant_text, project_id, user_id FROM turns"
                       " WHERE session_id = %s ORDER BY created_at", (session,)).fetchall()
    assert turns == [("first", None, project, user), ("second", "an answer", project, user)]
    assert db.execute("SELECT 1 FROM user_projects WHERE user_id = %s AND project_id = %s",
                      (user, project)).fetchone()
    assert db.execute("SELECT email FROM users WHERE user_id = %s",
                      (user,)).fetchone() == (f"{user}@x.test",)


def test_rename_archive_and_delete_reach_the_read_model(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    user = _register(db)
    _, session = _start_session(db, user, ["hello"])
    _post(db, user, session, ev.SessionRenamed(session_id=session, title="Renamed"))
    _post(db, user, session, ev.SessionArchived(session_id=session))
    _project(database_url)
    assert db.execute("SELECT title, is_active FROM sessions WHERE session_id = %s",
                      (session,)).fetchone() == ("Renamed", False)
    _post(db, user, session, ev.SessionDeleted(session_id=session))
    _project(database_url)
    for table in ("sessions", "chat_messages", "turns"):
        assert db.execute(f"SELECT count(*) FROM {table} WHERE session_id = %s",
                          (session,)).fetchone() == (0,)


def test_concurrent_projectors_apply_each_event_once(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """Four projectors racing (the nudge storm case): SKIP LOCKED lets one apply at a time."""
    user = _register(db)
    _, session = _start_session(db, user, [f"m{i}" for i in range(300)])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(20):
                _project(database_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _project(database_url)
    seqs = [r[0] for r in db.execute(
        "SELECT seq FROM chat_messages WHERE session_id = %s ORDER BY seq", (session,))]
    assert seqs == list(range(1, 301))
    assert db.execute("SELECT message_count FROM sessions WHERE session_id = %s",
                      (session,)).fetchone() == (300,)


def test_a_projector_killed_mid_batch_leaves_no_duplicate_and_no_gap(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """The connection dies inside the batch transaction: nothing of it stays, the rerun
    applies it once."""
    user = _register(db)
    _, session = _start_session(db, user, [f"m{i}" for i in range(120)])
    victim = psycopg.connect(database_url)
    pid = victim.info.backend_pid
    with pytest.raises(psycopg.OperationalError):
        with victim.transaction():
            victim.execute("SET LOCAL ROLE chat_projector")
            victim.execute("SELECT * FROM projection_checkpoints WHERE name = %s FOR UPDATE",
                           (PROJECTION,))
            victim.execute("INSERT INTO users (user_id) VALUES (gen_random_uuid())")
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
            victim.execute("SELECT 1")
    victim.close()
    _project(database_url)
    seqs = [r[0] for r in db.execute(
        "SELECT seq FROM chat_messages WHERE session_id = %s ORDER BY seq", (session,))]
    assert seqs == list(range(1, 121))


def test_a_poison_event_is_retried_then_parked_and_the_projection_goes_on(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    user = _register(db)
    _, session = _start_session(db, user, ["before"])
    # an assistant message answering a turn that does not exist violates a foreign key
    _post(db, user, session, ev.MessagePosted(
        session_id=session, message_id=uuid.uuid4(), user_id=user, role="assistant",
        content="orphan", turn_id=uuid.uuid4()))
    _post(db, user, session, ev.MessagePosted(
        session_id=session, message_id=uuid.uuid4(), user_id=user, role="user",
        content="after", turn_id=uuid.uuid4()))
    poison = db.execute("SELECT position FROM events WHERE data->>'content' = 'orphan'"
                        " AND stream_id = %s", (ev.session_stream(session),)).fetchone()[0]
    for _ in range(3):
        _project(database_url)
    parked = db.execute("SELECT attempts, parked FROM parked_events WHERE position = %s",
                        (poison,)).fetchone()
    assert parked == (3, True)
    contents = [r[0] for r in db.execute(
        "SELECT content FROM chat_messages WHERE session_id = %s ORDER BY seq", (session,))]
    assert contents == ["before", "after"]


def test_a_long_transaction_in_another_database_does_not_hold_followers_back(
    make_database: Callable[[], str], db: psycopg.Connection[Any]
) -> None:
    """xids are server-wide, so the server's snapshot xmin would wait for it; ours must not."""
    with psycopg.connect(make_database()) as elsewhere, psycopg.connect(db.info.dsn) as here:
        other_xid = elsewhere.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        same_db_xid = here.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        horizon, server_xmin = db.execute(
            "SELECT event_read_horizon()::text::bigint,"
            " pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()
        assert server_xmin <= int(other_xid)  # what a naive follower would wait for
        # a transaction in this database still holds the horizon...
        assert horizon <= int(same_db_xid)
        here.rollback()
        # ...the one in the other database, still open, does not (short-lived transactions
        # of unrelated clients may hold it for a moment, hence the wait)
        wait_until(lambda: db.execute("SELECT event_read_horizon()::text::bigint").fetchone()[0]
                   > int(other_xid))
