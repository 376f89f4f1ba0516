"""Legacy import: dossier + turns written by the old system become users, sessions and
messages through events; a second run changes nothing; replay keeps the result."""

from __future__ import annotations

import datetime as dt
import io
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from services.core import events as ev
from services.core import legacy_import
from services.core.eventstore import StreamAppend, append_sync
from tests.integration.test_replay import project_all, snapshot
from workers import replay


# The projector change this import needs (asked of the projector's owner): a user message
# whose turn already exists as a legacy row links that row instead of failing on its key.
@pytest.fixture
def legacy_db(make_database: Callable[[], str]) -> Iterator[tuple[str, psycopg.Connection]]:
    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        yield url, conn


Conversation = list[tuple[str, str]]  # (role, content) in order


def seed_legacy(conn: psycopg.Connection[Any], projects: int, seed: int
                ) -> dict[uuid.UUID, tuple[str, Conversation]]:
    """Dossiers with turns in created_at order (inserted shuffled), some unanswered."""
    rng = random.Random(seed)
    expected: dict[uuid.UUID, tuple[str, Conversation]] = {}
    start = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
    for p in range(projects):
        project, title = uuid.uuid4(), f"Story {p}"
        conn.execute("INSERT INTO dossier (project_id, title, description, created_at)"
                     " VALUES (%s, %s, 'from the old app', %s)",
                     (project, title, start + dt.timedelta(days=p)))
        turns = [(start + dt.timedelta(days=p, minutes=i), f"p{p} question {i}",
                  None if rng.random() < 0.1 else f"p{p} answer {i}")
                 for i in range(rng.randint(15, 35))]
        conversation: Conversation = []
        for _at, q, a in turns:
            conversation.append(("user", q))
            if a is not None:
                conversation.append(("assistant", a))
        rng.shuffle(turns)
        for at, q, a in turns:
            conn.execute("INSERT INTO turns (project_id, user_text, assistant_text, created_at)"
                         " VALUES (%s, %s, %s, %s)", (project, q, a, at))
        expected[project] = (title, conversation)
    conn.execute("INSERT INTO dossier (title) VALUES ('empty, never used')")
    return expected


def conversation_of(conn: psycopg.Connection[Any], project: uuid.UUID
                    ) -> tuple[str, uuid.UUID, Conversation]:
    session, title, user = conn.execute(
        "SELECT session_id, title, user_id FROM sessions WHERE project_id = %s",
        (project,)).fetchone()
    messages = conn.execute("SELECT role, content FROM chat_messages WHERE session_id = %s"
                            " ORDER BY seq", (session,)).fetchall()
    return title, user, messages


def import_and_project(url: str) -> legacy_import.ImportSummary:
    summary = legacy_import.import_legacy(url, out=io.StringIO())
    project_all(url)
    return summary


def test_legacy_turns_become_the_same_conversations_through_events(
    legacy_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    url, conn = legacy_db
    expected = seed_legacy(conn, projects=12, seed=7)
    turns = conn.execute("SELECT count(*) FROM turns").fetchone()[0]
    assert turns >= 180

    summary = import_and_project(url)

    assert summary.projects == 12 and summary.turns_imported == turns
    assert summary.owners_created == 12 and summary.sessions_created == 12
    for project, (title, conversation) in expected.items():
        got_title, owner, messages = conversation_of(conn, project)
        assert (got_title, messages) == (title, conversation)
        assert conn.execute("SELECT display_name, email FROM users WHERE user_id = %s",
                            (owner,)).fetchone() == (f"Legacy owner of {title}", None)
        assert conn.execute("SELECT 1 FROM user_projects WHERE user_id = %s"
                            " AND project_id = %s", (owner, project)).fetchone()
        assert conn.execute("SELECT description FROM dossier WHERE project_id = %s",
                            (project,)).fetchone() == ("from the old app",)
    # every legacy turn is now the session's, and its messages point at it
    assert conn.execute("SELECT count(*) FROM turns WHERE session_id IS NULL").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM chat_messages m LEFT JOIN turns t"
                        " USING (turn_id) WHERE t.session_id IS DISTINCT FROM m.session_id"
                        ).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM parked_events").fetchone() == (0,)


def test_a_second_import_changes_nothing(
    legacy_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    url, conn = legacy_db
    seed_legacy(conn, projects=4, seed=8)
    legacy_import.import_legacy(url, out=io.StringIO())
    events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    again = legacy_import.import_legacy(url, out=io.StringIO())  # before projection, too
    project_all(url)
    before = snapshot(conn)
    third = import_and_project(url)
    assert again.turns_imported == third.turns_imported == 0
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == events
    assert snapshot(conn) == before


def test_turns_written_after_an_import_are_appended_to_the_same_session(
    legacy_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    url, conn = legacy_db
    expected = seed_legacy(conn, projects=2, seed=9)
    import_and_project(url)
    project = next(iter(expected))
    conn.execute("INSERT INTO turns (project_id, user_text, assistant_text, created_at)"
                 " VALUES (%s, 'late question', 'late answer', now())", (project,))
    summary = import_and_project(url)
    assert (summary.turns_imported, summary.sessions_created) == (1, 0)
    _, _, messages = conversation_of(conn, project)
    assert messages == [*expected[project][1], ("user", "late question"),
                        ("assistant", "late answer")]


def test_a_project_already_linked_to_a_user_is_imported_for_that_user(
    legacy_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    url, conn = legacy_db
    expected = seed_legacy(conn, projects=1, seed=10)
    project = next(iter(expected))
    user = uuid.uuid4()
    with conn.transaction():
        append_sync(conn, [StreamAppend(
            stream_id=ev.user_stream(user), expected_version=0, stream_type="user",
            owner_id=user, events=[ev.UserRegistered(user_id=user, email=f"{user}@x.test"),
                                   ev.ProjectLinked(user_id=user, project_id=project)])])
    project_all(url)
    summary = import_and_project(url)
    assert summary.owners_created == 0
    assert conversation_of(conn, project)[1] == user


def test_an_imported_history_survives_a_replay_and_a_delete_erases_its_turns(
    legacy_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    url, conn = legacy_db
    expected = seed_legacy(conn, projects=5, seed=11)
    import_and_project(url)
    # written by the legacy endpoint after the import: stays a legacy row through the replay
    conn.execute("INSERT INTO turns (project_id, user_text) SELECT project_id, 'not imported'"
                 " FROM dossier WHERE title = 'empty, never used'")
    before = snapshot(conn)
    assert ("not imported",) in [r[2:3] for r in before["turns"]]
    replay.replay(url, out=io.StringIO())
    assert snapshot(conn) == before

    project = next(iter(expected))
    session = legacy_import.session_id(project)
    stream = ev.session_stream(session)
    with conn.transaction():
        version = conn.execute("SELECT version FROM event_streams WHERE stream_id = %s",
                               (stream,)).fetchone()[0]
        append_sync(conn, [StreamAppend(stream_id=stream, expected_version=version,
                                        events=[ev.SessionDeleted(session_id=session)])])
        conn.execute("SELECT purge_stream_content(%s, %s)", (stream, version + 1))
        conn.execute("UPDATE event_streams SET deleted = true WHERE stream_id = %s", (stream,))
    project_all(url)
    assert conn.execute("SELECT count(*) FROM turns WHERE project_id = %s",
                        (project,)).fetchone() == (0,)
    # a re-run imports the late legacy turn, and does not bring the deleted session back
    assert import_and_project(url).turns_imported == 1
    assert conn.execute("SELECT count(*) FROM sessions WHERE project_id = %s",
                        (project,)).fetchone() == (0,)
