"""The seed's database functions and the session-summary trigger, on real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from services.core.db import PROJECTOR_ROLE, QUERY_ROLE, SET_ROLE, SET_USER

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """The owner (superuser), autocommit, rows as dicts."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as c:
        yield c


def new_user(conn: psycopg.Connection[Any]) -> tuple[uuid.UUID, uuid.UUID]:
    user_id, project_id = uuid.uuid4(), uuid.uuid4()
    conn.execute("INSERT INTO users (user_id) VALUES (%s)", (user_id,))
    conn.execute("INSERT INTO dossier (project_id) VALUES (%s)", (project_id,))
    conn.execute("INSERT INTO user_projects VALUES (%s, %s)", (user_id, project_id))
    return user_id, project_id


def new_session(
    conn: psycopg.Connection[Any],
    user_id: uuid.UUID,
    project_id: uuid.UUID,
    created: dt.datetime = LONG_AGO,
    session_id: uuid.UUID | None = None,
) -> uuid.UUID:
    session_id = session_id or uuid.uuid4()
    conn.execute(
        "INSERT INTO sessions (session_id, user_id, project_id, title, created_at, updated_at,"
        " last_message_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (session_id, user_id, project_id, f"chat {session_id}", created, created, created),
    )
    return session_id


def post(
    conn: psycopg.Connection[Any],
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    seq: int,
    content: str,
    created: dt.datetime,
    role: str = "user",
) -> uuid.UUID:
    message_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO chat_messages (message_id, session_id, role, content, user_id, seq,"
        " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (message_id, session_id, role, content, user_id, seq, created),
    )
    return message_id


def summary(conn: psycopg.Connection[Any], session_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(
        "SELECT message_count, last_seq, last_message_at, last_message_preview, updated_at"
        "  FROM sessions WHERE session_id = %s",
        (session_id,),
    ).fetchone()
    assert row is not None
    return dict(row)


def user_sessions(conn: psycopg.Connection[Any], user_id: uuid.UUID, *args: Any) -> list[dict]:
    placeholders = ", ".join(["%s"] * (len(args) + 1))
    return conn.execute(
        f"SELECT * FROM get_user_sessions({placeholders})", (user_id, *args)
    ).fetchall()


# get_user_sessions --------------------------------------------------------------------------


def test_the_session_list_is_newest_activity_first_with_counts_and_previews(
    conn: psycopg.Connection[Any],
) -> None:
    user, project = new_user(conn)
    other, other_project = new_user(conn)
    s1, s2, s3 = (new_session(conn, user, project) for _ in range(3))
    new_session(conn, other, other_project)  # someone else's: never listed
    post(conn, s1, user, 1, "s1 first", at(10))
    post(conn, s1, user, 2, "s1 second", at(11))
    post(conn, s3, user, 1, "s3 only", at(20))
    for seq in (1, 2):
        post(conn, s2, user, seq, f"s2 #{seq}", at(29 + seq))
    newest = "é" * 150 + "ß" * 150  # 300 characters, multi-byte
    post(conn, s2, user, 3, newest, at(40), role="assistant")

    listed = user_sessions(conn, user, 10)

    assert [r["session_id"] for r in listed] == [s2, s3, s1]
    assert [r["message_count"] for r in listed] == [3, 1, 2]
    assert [r["preview"] for r in listed] == [newest[:200], "s3 only", "s1 second"]
    assert len(listed[0]["preview"]) == 200
    assert [r["last_message_at"] for r in listed] == [at(40), at(20), at(11)]
    assert listed[0]["project_id"] == project and listed[0]["is_active"] is True
    assert [r["session_id"] for r in user_sessions(conn, user, 2)] == [s2, s3]


def test_a_session_without_messages_is_listed_by_its_creation_time(
    conn: psycopg.Connection[Any],
) -> None:
    user, project = new_user(conn)
    old = new_session(conn, user, project, created=at(0))
    post(conn, old, user, 1, "hi", at(5))
    empty = new_session(conn, user, project, created=at(100))

    listed = user_sessions(conn, user, 10)
    assert [(r["session_id"], r["message_count"], r["preview"]) for r in listed] == [
        (empty, 0, None),
        (old, 1, "hi"),
    ]


def test_the_keyset_parameters_give_the_next_page_without_gaps_or_repeats(
    conn: psycopg.Connection[Any],
) -> None:
    user, project = new_user(conn)
    sessions = [new_session(conn, user, project) for _ in range(7)]
    # s0..s2 share one timestamp: the tie is broken by session_id, and paging must too
    for i, sid in enumerate(sessions):
        post(conn, sid, user, 1, f"m{i}", at(100) if i < 3 else at(100 + i))
    everything = user_sessions(conn, user, 100)
    assert len(everything) == 7

    pages: list[list[uuid.UUID]] = []
    page = user_sessions(conn, user, 2)
    while page:
        pages.append([r["session_id"] for r in page])
        last = page[-1]
        page = user_sessions(conn, user, 2, last["last_message_at"], last["session_id"])

    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [sid for p in pages for sid in p] == [r["session_id"] for r in everything]
    tied = [r["session_id"] for r in everything if r["last_message_at"] == at(100)]
    assert tied == sorted(sessions[:3], reverse=True)


# get_session_messages and get_session_messages_keyset ---------------------------------------


@pytest.fixture
def seven_messages(conn: psycopg.Connection[Any]) -> tuple[uuid.UUID, list[uuid.UUID]]:
    user, project = new_user(conn)
    sid = new_session(conn, user, project)
    # inserted out of order: the functions order by seq, not by insertion or time
    ids = {seq: post(conn, sid, user, seq, f"m{seq}", at(-seq)) for seq in (4, 1, 7, 2, 6, 3, 5)}
    return sid, [ids[seq] for seq in range(1, 8)]


def seqs(conn: psycopg.Connection[Any], query: str, *args: Any) -> list[int]:
    return [r["seq"] for r in conn.execute(query, args)]


def test_session_messages_page_in_seq_order_by_limit_and_offset(
    conn: psycopg.Connection[Any], seven_messages: tuple[uuid.UUID, list[uuid.UUID]]
) -> None:
    sid, ids = seven_messages
    page = "SELECT * FROM get_session_messages(%s, %s, %s)"
    assert seqs(conn, page, sid, 3, 0) == [1, 2, 3]
    assert seqs(conn, page, sid, 3, 3) == [4, 5, 6]
    assert seqs(conn, page, sid, 3, 6) == [7]
    assert seqs(conn, page, sid, 3, 7) == []
    rows = conn.execute("SELECT * FROM get_session_messages(%s)", (sid,)).fetchall()
    assert [r["message_id"] for r in rows] == ids  # defaults: 50 from the start
    assert rows[0]["content"] == "m1" and rows[0]["role"] == "user"
    assert seqs(conn, page, uuid.uuid4(), 50, 0) == []


def test_session_messages_keyset_reads_after_and_before_a_seq(
    conn: psycopg.Connection[Any], seven_messages: tuple[uuid.UUID, list[uuid.UUID]]
) -> None:
    sid, _ = seven_messages
    keyset = "SELECT * FROM get_session_messages_keyset(%s, %s, %s, %s)"
    assert seqs(conn, keyset, sid, 50, None, None) == [1, 2, 3, 4, 5, 6, 7]
    assert seqs(conn, keyset, sid, 3, None, None) == [1, 2, 3]
    assert seqs(conn, keyset, sid, 3, 2, None) == [3, 4, 5]
    assert seqs(conn, keyset, sid, 3, 5, None) == [6, 7]
    assert seqs(conn, keyset, sid, 3, 7, None) == []
    # before: the messages just before, still in chronological order (scrolling up)
    assert seqs(conn, keyset, sid, 2, None, 5) == [3, 4]
    assert seqs(conn, keyset, sid, 10, None, 3) == [1, 2]
    assert seqs(conn, keyset, sid, 10, None, 1) == []
    # both: a window
    assert seqs(conn, keyset, sid, 10, 2, 6) == [3, 4, 5]
    assert seqs(conn, keyset, sid, 2, 2, 6) == [3, 4]


# The trigger ---------------------------------------------------------------------------------


def test_single_inserts_keep_the_session_summary_current(conn: psycopg.Connection[Any]) -> None:
    user, project = new_user(conn)
    sid = new_session(conn, user, project)
    assert summary(conn, sid)["message_count"] == 0

    post(conn, sid, user, 1, "first", at(1))
    assert summary(conn, sid) == {
        "message_count": 1,
        "last_seq": 1,
        "last_message_at": at(1),
        "last_message_preview": "first",
        "updated_at": at(1),
    }
    post(conn, sid, user, 2, "x" * 250, at(2), role="assistant")
    s = summary(conn, sid)
    assert (s["message_count"], s["last_seq"], s["last_message_at"]) == (2, 2, at(2))
    assert s["last_message_preview"] == "x" * 200

    # a message that arrives late (lower seq) counts, but does not become the preview
    post(conn, sid, user, 5, "newest", at(5))
    post(conn, sid, user, 3, "late", at(3))
    s = summary(conn, sid)
    assert (s["message_count"], s["last_seq"], s["last_message_at"]) == (4, 5, at(5))
    assert s["last_message_preview"] == "newest"


def test_one_bulk_insert_across_sessions_keeps_every_summary_with_one_update_each(
    conn: psycopg.Connection[Any],
) -> None:
    user, project = new_user(conn)
    sessions = [new_session(conn, user, project) for _ in range(4)]
    untouched = new_session(conn, user, project)
    per_session = 50

    with conn.transaction():
        conn.execute(
            """
            INSERT INTO chat_messages (session_id, role, content, user_id, seq, created_at)
            SELECT s.id, 'user', 'msg ' || s.n || '/' || g.seq || repeat('.', 300), %s, g.seq,
                   %s::timestamptz + make_interval(secs => s.n * 1000 + g.seq)
              FROM unnest(%s::uuid[]) WITH ORDINALITY AS s(id, n),
                   generate_series(1, %s) AS g(seq)
             ORDER BY random()
            """,
            (user, T0, sessions, per_session),
        )
        # pg_stat_xact_*: this transaction's own counts. A row-level trigger would make 200.
        row = conn.execute(
            "SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relid = 'sessions'::regclass"
        ).fetchone()
        assert row is not None and row["n_tup_upd"] == len(sessions)

    for n, sid in enumerate(sessions, start=1):
        s = summary(conn, sid)
        assert s["message_count"] == per_session
        assert s["last_seq"] == per_session
        assert s["last_message_at"] == at(n * 1000 + per_session)
        assert s["last_message_preview"] == (f"msg {n}/{per_session}" + "." * 300)[:200]
    assert summary(conn, untouched)["message_count"] == 0

    # a second bulk statement adds to what is there
    conn.execute(
        "INSERT INTO chat_messages (session_id, role, content, user_id, seq, created_at)"
        " SELECT %s, 'assistant', 'more ' || g, %s, g, %s FROM generate_series(51, 60) g",
        (sessions[0], user, at(5000)),
    )
    s = summary(conn, sessions[0])
    assert (s["message_count"], s["last_seq"], s["last_message_preview"]) == (60, 60, "more 60")


def test_the_summary_trigger_is_statement_level_with_a_transition_table(
    conn: psycopg.Connection[Any],
) -> None:
    row = conn.execute(
        "SELECT tgtype, tgnewtable, tgenabled, tgfoid::regproc::text AS fn FROM pg_trigger"
        " WHERE tgrelid = 'chat_messages'::regclass AND tgname = 'chat_messages_update_session'"
    ).fetchone()
    assert row is not None
    tgtype = row["tgtype"]
    assert tgtype & 1 == 0, "FOR EACH ROW"  # TRIGGER_TYPE_ROW
    assert tgtype & 2 == 0, "BEFORE"  # TRIGGER_TYPE_BEFORE: it is AFTER
    assert tgtype & 4, "fires on INSERT"  # TRIGGER_TYPE_INSERT
    assert row["tgnewtable"] == "new_messages"
    assert row["tgenabled"] == "O"
    assert row["fn"] == "update_session_last_message"


# Writing as the projector, reading as the query role ------------------------------------------


def test_the_projector_role_writes_the_read_model_and_the_trigger_runs_under_it(
    database_url: str,
) -> None:
    user, project, sid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as projector:
        projector.execute(SET_ROLE.format(PROJECTOR_ROLE))
        with projector.transaction():
            projector.execute("INSERT INTO users (user_id) VALUES (%s)", (user,))
            projector.execute("INSERT INTO dossier (project_id) VALUES (%s)", (project,))
            projector.execute("INSERT INTO user_projects VALUES (%s, %s)", (user, project))
            new_session(projector, user, project, session_id=sid)
            post(projector, sid, user, 1, "hello", at(1))
            projector.execute(
                "INSERT INTO chat_messages (session_id, role, content, user_id, seq, created_at)"
                " SELECT %s, 'assistant', 'reply ' || g, %s, g, %s FROM generate_series(2, 4) g",
                (sid, user, at(2)),
            )
            projector.execute(
                "INSERT INTO turns (project_id, user_text, session_id, user_id)"
                " VALUES (%s, 'hello', %s, %s)",
                (project, sid, user),
            )
        s = summary(projector, sid)
        assert (s["message_count"], s["last_seq"], s["last_message_preview"]) == (4, 4, "reply 4")

    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as query:
        query.execute(SET_ROLE.format(QUERY_ROLE))
        with query.transaction():
            query.execute(SET_USER, (str(user),))
            [listed] = user_sessions(query, user, 10)
            messages = query.execute("SELECT * FROM get_session_messages(%s, 10, 0)", (sid,))
            assert [m["seq"] for m in messages] == [1, 2, 3, 4]
    assert (listed["session_id"], listed["message_count"], listed["preview"]) == (
        sid,
        4,
        "reply 4",
    )
