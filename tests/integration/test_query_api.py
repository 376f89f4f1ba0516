"""The query service over real HTTP against a real, migrated PostgreSQL.

The projector is not involved: each test seeds the read model directly as the owner, with
fresh ids, so tests share the run's database without seeing each other.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from psycopg import sql

from services.core.db import QUERY_ROLE, SET_USER
from services.core.settings import Settings
from services.query.app import create_app
from tests.integration.conftest import client, wait_until

T0 = datetime(2024, 1, 1, tzinfo=UTC)

# --- seeding the read model as the owner -------------------------------------------------

INSERT_USER = """
INSERT INTO users (user_id, email, display_name, avatar_url)
VALUES (%(id)s, %(email)s, %(name)s, %(avatar)s)
"""
INSERT_PROJECT = "INSERT INTO dossier (project_id, title) VALUES (%s, %s)"
LINK_PROJECT = "INSERT INTO user_projects (user_id, project_id) VALUES (%s, %s)"
INSERT_SESSION = """
INSERT INTO sessions (session_id, user_id, project_id, title, created_at, updated_at,
                      last_message_at)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""
# One statement per batch, so the statement-level trigger runs once, as in a replay.
INSERT_MESSAGES = """
INSERT INTO chat_messages (session_id, user_id, role, content, metadata, created_at, seq)
SELECT %(session)s, %(user)s,
       CASE WHEN g %% 2 = 1 THEN 'user' ELSE 'assistant' END,
       %(prefix)s || g,
       CASE WHEN g %% 2 = 0 THEN '{"model": "offline-echo-1"}'::jsonb END,
       %(t0)s + g * interval '1 second',
       %(first_seq)s + g - 1
  FROM generate_series(1, %(n)s) g
RETURNING message_id, seq
"""


@dataclass
class Seeded:
    user_id: uuid.UUID
    project_id: uuid.UUID
    sessions: list[uuid.UUID] = field(default_factory=list)


def seed_user(db: psycopg.Connection, name: str = "Ada") -> Seeded:
    user_id, project_id = uuid.uuid4(), uuid.uuid4()
    db.execute(
        INSERT_USER,
        {
            "id": user_id,
            "email": f"{user_id}@example.test",
            "name": name,
            "avatar": f"https://example.test/{user_id}.png",
        },
    )
    db.execute(INSERT_PROJECT, (project_id, f"{name}'s story"))
    db.execute(LINK_PROJECT, (user_id, project_id))
    return Seeded(user_id=user_id, project_id=project_id)


def seed_session(
    db: psycopg.Connection, who: Seeded, title: str, started: datetime = T0
) -> uuid.UUID:
    session_id = uuid.uuid4()
    db.execute(
        INSERT_SESSION, (session_id, who.user_id, who.project_id, title, started, started, started)
    )
    who.sessions.append(session_id)
    return session_id


def seed_messages(
    db: psycopg.Connection,
    who: Seeded,
    session_id: uuid.UUID,
    n: int,
    *,
    at: datetime = T0,
    prefix: str = "message ",
    first_seq: int = 1,
) -> list[tuple[uuid.UUID, int]]:
    """n messages, seq first_seq.., the last one at `at` + n seconds. Returns (id, seq)."""
    rows = db.execute(
        INSERT_MESSAGES,
        {
            "session": session_id,
            "user": who.user_id,
            "prefix": prefix,
            "t0": at,
            "first_seq": first_seq,
            "n": n,
        },
    ).fetchall()
    return sorted(((r[0], r[1]) for r in rows), key=lambda r: r[1])


# --- serving -------------------------------------------------------------------------------


@pytest.fixture
def base_url(serve_app: Callable[[Any], str], settings: Settings) -> str:
    return serve_app(create_app(settings))


@pytest.fixture
def alice(db: psycopg.Connection) -> Seeded:
    return seed_user(db, "Alice")


@pytest.fixture
def bob(db: psycopg.Connection) -> Seeded:
    return seed_user(db, "Bob")


@pytest.fixture
def as_alice(base_url: str, alice: Seeded) -> Iterator[httpx.Client]:
    with client(base_url, alice.user_id) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["error"] == code, body


def all_session_ids(c: httpx.Client, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["before"] = cursor
        r = c.get("/api/v1/sessions", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["sessions"]) <= limit
        seen += [s["session_id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        assert len(page["sessions"]) == limit  # only a full page carries a cursor
    raise AssertionError("paging did not end")


# --- the session list ----------------------------------------------------------------------


def test_sessions_come_newest_activity_first_with_counts_and_previews(
    db: psycopg.Connection, alice: Seeded, as_alice: httpx.Client
) -> None:
    quiet = seed_session(db, alice, "no messages yet", started=T0 + timedelta(hours=1))
    old = seed_session(db, alice, "old story")
    seed_messages(db, alice, old, 3, at=T0, prefix="old ")
    busy = seed_session(db, alice, "busy story")
    long_text = "x" * 250
    seed_messages(db, alice, busy, 4, at=T0 + timedelta(hours=2), prefix=long_text)

    r = as_alice.get("/api/v1/sessions")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["next_cursor"] is None
    got = body["sessions"]
    assert [s["session_id"] for s in got] == [str(busy), str(quiet), str(old)]
    by_id = {s["session_id"]: s for s in got}
    assert by_id[str(busy)]["message_count"] == 4
    assert by_id[str(busy)]["preview"] == (long_text + "4")[:200]
    assert by_id[str(old)]["message_count"] == 3
    assert by_id[str(old)]["preview"] == "old 3"
    assert by_id[str(quiet)]["message_count"] == 0
    assert by_id[str(quiet)]["preview"] is None
    assert set(got[0]) == {
        "session_id",
        "title",
        "project_id",
        "created_at",
        "updated_at",
        "last_message_at",
        "is_active",
        "message_count",
        "preview",
    }
    assert got[0]["title"] == "busy story"
    assert got[0]["project_id"] == str(alice.project_id)
    assert got[0]["is_active"] is True
    last = datetime.fromisoformat(got[0]["last_message_at"])
    assert last == T0 + timedelta(hours=2, seconds=4)


def test_session_list_limit_defaults_to_ten_and_caps_at_one_hundred(
    db: psycopg.Connection, alice: Seeded, as_alice: httpx.Client
) -> None:
    for i in range(12):
        seed_session(db, alice, f"s{i}", started=T0 + timedelta(minutes=i))

    first = as_alice.get("/api/v1/sessions").json()
    assert len(first["sessions"]) == 10
    assert isinstance(first["next_cursor"], str)

    one = as_alice.get("/api/v1/sessions", params={"limit": 1}).json()
    assert [s["title"] for s in one["sessions"]] == ["s11"]

    everything = as_alice.get("/api/v1/sessions", params={"limit": 100}).json()
    assert len(everything["sessions"]) == 12
    assert everything["next_cursor"] is None


def test_cursor_pages_through_every_session_once_in_order(
    db: psycopg.Connection, alice: Seeded, as_alice: httpx.Client, bob: Seeded
) -> None:
    # Ties in last_message_at (three sessions per instant) must not lose or repeat rows.
    for i in range(25):
        seed_session(db, alice, f"s{i}", started=T0 + timedelta(minutes=i // 3))
    seed_session(db, bob, "not alice's")
    expected = [
        str(s)
        for _, s in sorted(
            ((T0 + timedelta(minutes=i // 3), s) for i, s in enumerate(alice.sessions[:25])),
            reverse=True,
        )
    ]
    for limit in (1, 7, 25, 100):
        got = all_session_ids(as_alice, limit)
        assert got == expected, f"limit={limit}"


def test_a_new_message_moves_its_session_to_the_top(
    db: psycopg.Connection, alice: Seeded, as_alice: httpx.Client
) -> None:
    a = seed_session(db, alice, "a", started=T0)
    b = seed_session(db, alice, "b", started=T0 + timedelta(minutes=1))
    assert as_alice.get("/api/v1/sessions").json()["sessions"][0]["session_id"] == str(b)
    seed_messages(db, alice, a, 1, at=T0 + timedelta(minutes=5), prefix="fresh ")
    top = as_alice.get("/api/v1/sessions").json()["sessions"][0]
    assert (top["session_id"], top["preview"]) == (str(a), "fresh 1")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": "1.5"},
        {"limit": ""},
        {"limit": "99999999999999999999999"},
        {"before": "not a cursor"},
        {"before": ""},
        {"before": _b64(b"[1,2]")},
        {"before": _b64(b'["2024-01-01T00:00:00", "4a1c3f5e-0000-4000-8000-000000000000"]')},
        {"before": _b64(b'["2024-01-01T00:00:00Z", "nope"]')},
        {"before": _b64(b"\xff\xfe")},
        {"before": "x" * 5000},
        {"min_position": "abc"},
        {"min_position": "0"},
        {"min_position": "-5"},
        {"min_position": str(2**63)},
    ],
)
def test_bad_session_list_parameters_are_400(as_alice: httpx.Client, params: dict) -> None:
    r = as_alice.get("/api/v1/sessions", params=params)
    assert_error(r, 400)


def test_odd_query_strings_are_never_a_server_error(
    as_alice: httpx.Client, long_session: tuple[uuid.UUID, list]
) -> None:
    session_id, _ = long_session
    for path in ("/api/v1/sessions", messages_url(session_id)):
        for query in ("limit=1&limit=2", "before=%00", "after=%00", "limit=%F0%9F%92%A5", "x=1"):
            r = as_alice.get(f"{path}?{query}")
            assert r.status_code < 500, (path, query, r.text)


def test_bad_parameter_message_names_the_parameter(as_alice: httpx.Client) -> None:
    r = as_alice.get("/api/v1/sessions", params={"limit": "abc"})
    assert_error(r, 400, "invalid_parameter")
    assert "limit" in r.json()["detail"]
    r = as_alice.get("/api/v1/sessions", params={"before": "garbage"})
    assert_error(r, 400, "invalid_cursor")


# --- a session's messages ------------------------------------------------------------------


@pytest.fixture
def long_session(db: psycopg.Connection, alice: Seeded) -> tuple[uuid.UUID, list]:
    session_id = seed_session(db, alice, "long")
    # two statements: the trigger adds up across them
    rows = seed_messages(db, alice, session_id, 40)
    rows += seed_messages(db, alice, session_id, 25, first_seq=41, at=T0 + timedelta(hours=1))
    return session_id, rows


def messages_url(session_id: Any) -> str:
    return f"/api/v1/sessions/{session_id}/messages"


def test_messages_are_chronological_with_offsets_limits_and_total(
    as_alice: httpx.Client, long_session: tuple[uuid.UUID, list]
) -> None:
    session_id, rows = long_session
    url = messages_url(session_id)

    first = as_alice.get(url).json()
    assert (first["total"], first["limit"], first["offset"]) == (65, 50, 0)
    assert [m["seq"] for m in first["messages"]] == list(range(1, 51))
    assert [m["message_id"] for m in first["messages"]] == [str(r[0]) for r in rows[:50]]
    m = first["messages"][1]
    assert set(m) == {
        "message_id",
        "role",
        "content",
        "metadata",
        "created_at",
        "turn_id",
        "seq",
    }
    assert (m["role"], m["content"], m["metadata"], m["turn_id"]) == (
        "assistant",
        "message 2",
        {"model": "offline-echo-1"},
        None,
    )
    assert first["messages"][0]["metadata"] is None
    assert datetime.fromisoformat(m["created_at"]) == T0 + timedelta(seconds=2)

    rest = as_alice.get(url, params={"offset": 50}).json()
    assert [m["seq"] for m in rest["messages"]] == list(range(51, 66))
    assert rest["offset"] == 50

    window = as_alice.get(url, params={"limit": 5, "offset": 38}).json()
    assert [m["seq"] for m in window["messages"]] == [39, 40, 41, 42, 43]

    assert len(as_alice.get(url, params={"limit": 200}).json()["messages"]) == 65
    past_end = as_alice.get(url, params={"offset": 1000}).json()
    assert (past_end["messages"], past_end["total"]) == ([], 65)


def test_keyset_pages_by_sequence_number_and_by_message_id(
    as_alice: httpx.Client, long_session: tuple[uuid.UUID, list]
) -> None:
    session_id, rows = long_session
    url = messages_url(session_id)
    seqs = lambda r: [m["seq"] for m in r.json()["messages"]]  # noqa: E731

    r = as_alice.get(url, params={"after": 10, "limit": 3})
    assert r.status_code == 200, r.text
    assert seqs(r) == [11, 12, 13]
    assert r.json()["offset"] is None and r.json()["total"] == 65
    assert seqs(as_alice.get(url, params={"after": rows[9][0], "limit": 3})) == [11, 12, 13]

    # before: the messages just before it, still oldest first
    assert seqs(as_alice.get(url, params={"before": 10, "limit": 3})) == [7, 8, 9]
    assert seqs(as_alice.get(url, params={"before": str(rows[9][0]), "limit": 3})) == [7, 8, 9]
    assert seqs(as_alice.get(url, params={"before": 3})) == [1, 2]

    both = as_alice.get(url, params={"after": rows[19][0], "before": 25})
    assert seqs(both) == [21, 22, 23, 24]
    assert seqs(as_alice.get(url, params={"after": 0, "limit": 2})) == [1, 2]
    assert seqs(as_alice.get(url, params={"after": 65})) == []

    # with an anchor, offset moves it further away (the document allows the combination)
    assert seqs(as_alice.get(url, params={"after": 10, "offset": 5, "limit": 3})) == [16, 17, 18]
    assert seqs(as_alice.get(url, params={"before": 10, "offset": 5, "limit": 3})) == [2, 3, 4]
    assert seqs(as_alice.get(url, params={"before": 3, "offset": 2**31 - 1})) == []

    # walking forwards by the last seq sees every message once
    walked, after = [], 0
    while True:
        page = as_alice.get(url, params={"after": after, "limit": 20}).json()["messages"]
        if not page:
            break
        walked += [m["seq"] for m in page]
        after = page[-1]["seq"]
    assert walked == list(range(1, 66))


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"offset": "-1"},
        {"offset": "abc"},
        {"offset": str(2**31)},
        {"after": "abc"},
        {"after": "-3"},
        {"after": str(2**63)},
        {"before": "1.5"},
        {"before": ""},
        {"after": " 5"},
        {"min_position": "x"},
    ],
)
def test_bad_message_parameters_are_400(
    as_alice: httpx.Client, long_session: tuple[uuid.UUID, list], params: dict
) -> None:
    session_id, _ = long_session
    assert_error(as_alice.get(messages_url(session_id), params=params), 400)


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "%00", "ffffffff-ffff"])
def test_a_session_id_that_is_not_a_uuid_is_400(as_alice: httpx.Client, bad_id: str) -> None:
    assert_error(as_alice.get(messages_url(bad_id)), 400, "invalid_session_id")


def test_an_unknown_message_id_as_anchor_is_404(
    db: psycopg.Connection,
    alice: Seeded,
    as_alice: httpx.Client,
    long_session: tuple[uuid.UUID, list],
) -> None:
    session_id, _ = long_session
    other = seed_session(db, alice, "other")
    (elsewhere, _seq), *_ = seed_messages(db, alice, other, 1)
    for anchor in (uuid.uuid4(), elsewhere):  # unknown, or in another session
        for name in ("after", "before"):
            r = as_alice.get(messages_url(session_id), params={name: str(anchor)})
            assert_error(r, 404, "message_not_found")


# --- ownership -----------------------------------------------------------------------------


def test_another_users_session_is_404_exactly_like_a_missing_one(
    db: psycopg.Connection, base_url: str, alice: Seeded, bob: Seeded
) -> None:
    bobs = seed_session(db, bob, "bob's secret")
    (bobs_message, _), *_ = seed_messages(db, bob, bobs, 3, prefix="secret ")
    alices = seed_session(db, alice, "alice's")
    with client(base_url, alice.user_id) as c:
        missing = c.get(messages_url(uuid.uuid4()))
        assert_error(missing, 404, "session_not_found")
        for params in ({}, {"offset": 1}, {"after": 1}, {"before": 3}, {"after": bobs_message}):
            r = c.get(messages_url(bobs), params=params)
            assert (r.status_code, r.json()) == (404, missing.json()), params
        # a message id of Bob's is not a usable anchor in Alice's own session either
        r = c.get(messages_url(alices), params={"after": str(bobs_message)})
        assert_error(r, 404, "message_not_found")
        listed = c.get("/api/v1/sessions", params={"limit": 100}).json()["sessions"]
        assert [s["session_id"] for s in listed] == [str(alices)]
        assert c.get("/api/v1/users/me").json()["user_id"] == str(alice.user_id)
    with client(base_url, bob.user_id) as c:
        assert c.get(messages_url(bobs)).json()["total"] == 3
        assert c.get(messages_url(alices)).status_code == 404


# --- who is asking -------------------------------------------------------------------------

ENDPOINTS = ["/api/v1/sessions", "/api/v1/users/me", messages_url(uuid.uuid4())]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_without_x_user_id_every_endpoint_is_401(base_url: str, path: str) -> None:
    with client(base_url) as c:
        assert_error(c.get(path), 401, "unauthenticated")
        assert_error(c.get(path, headers={"X-User-ID": ""}), 401, "unauthenticated")


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("bad", ["abc", "123", "' OR 1=1 --", "0" * 33])
def test_an_x_user_id_that_is_not_a_uuid_is_400(base_url: str, path: str, bad: str) -> None:
    with client(base_url) as c:
        assert_error(c.get(path, headers={"X-User-ID": bad}), 400, "invalid_user_id")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_an_unknown_user_is_401(base_url: str, path: str) -> None:
    with client(base_url, uuid.uuid4()) as c:
        assert_error(c.get(path), 401, "unknown_user")


def test_users_me_returns_the_callers_profile(as_alice: httpx.Client, alice: Seeded) -> None:
    r = as_alice.get("/api/v1/users/me")
    assert r.status_code == 200, r.text
    me = r.json()
    assert set(me) == {
        "user_id",
        "email",
        "display_name",
        "avatar_url",
        "created_at",
        "updated_at",
        "usage",
    }
    assert me["usage"] == {"tokens_today": 0, "daily_token_budget": 200_000}
    assert me["user_id"] == str(alice.user_id)
    assert me["email"] == f"{alice.user_id}@example.test"
    assert me["display_name"] == "Alice"
    assert me["avatar_url"] == f"https://example.test/{alice.user_id}.png"
    assert datetime.fromisoformat(me["created_at"]).tzinfo is not None


def test_a_pooled_connection_never_carries_the_previous_user(
    db: psycopg.Connection, base_url: str, alice: Seeded, bob: Seeded
) -> None:
    seed_session(db, alice, "a")
    seed_session(db, bob, "b")
    with client(base_url, alice.user_id) as a, client(base_url, bob.user_id) as b:
        for _ in range(15):  # more than the pool's connections
            assert [s["title"] for s in a.get("/api/v1/sessions").json()["sessions"]] == ["a"]
            assert [s["title"] for s in b.get("/api/v1/sessions").json()["sessions"]] == ["b"]


# --- read-your-writes ----------------------------------------------------------------------


@pytest.fixture
def private_db(
    make_database: Callable[[], str], settings: Settings
) -> Iterator[tuple[Settings, psycopg.Connection]]:
    """A database of its own: these tests move the read_model checkpoint."""
    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        yield msgspec.structs.replace(settings, database_url=url), conn


def append_event(db: psycopg.Connection) -> int:
    stream = f"session-{uuid.uuid4()}"
    db.execute(
        "INSERT INTO event_streams (stream_id, stream_type, version) VALUES (%s, 'session', 1)",
        (stream,),
    )
    row = db.execute(
        "INSERT INTO events (stream_id, version, type, data) "
        "VALUES (%s, 1, 'SessionStarted', '{}') RETURNING position",
        (stream,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def set_checkpoint_to(db: psycopg.Connection, position: int | None) -> None:
    """Moves the read_model checkpoint onto an event (None: before everything)."""
    if position is None:
        db.execute(
            "INSERT INTO projection_checkpoints (name) VALUES ('read_model') "
            "ON CONFLICT (name) DO UPDATE SET last_txid = '0', last_position = 0"
        )
        return
    db.execute(
        "INSERT INTO projection_checkpoints (name, last_txid, last_position) "
        "SELECT 'read_model', txid, position FROM events WHERE position = %(p)s "
        "ON CONFLICT (name) DO UPDATE SET last_txid = excluded.last_txid, "
        "last_position = excluded.last_position",
        {"p": position},
    )


def test_min_position_not_yet_projected_waits_then_flags_the_lag(
    serve_app: Callable[[Any], str], private_db: tuple[Settings, psycopg.Connection]
) -> None:
    settings, db = private_db
    settings = msgspec.structs.replace(settings, min_position_wait_seconds=0.5)
    alice = seed_user(db)
    seed_session(db, alice, "existing")
    position = append_event(db)
    set_checkpoint_to(db, None)
    with client(serve_app(create_app(settings)), alice.user_id) as c:
        for how in (
            {"headers": {"X-Min-Position": str(position)}},
            {"params": {"min_position": position}},
        ):
            started = time.monotonic()
            r = c.get("/api/v1/sessions", **how)
            waited = time.monotonic() - started
            assert r.status_code == 200, r.text
            assert r.headers.get("X-Projection-Lag") == "true"
            assert waited >= 0.45, waited  # the whole bound; how much longer is no contract
            assert [s["title"] for s in r.json()["sessions"]] == ["existing"]
        # a position beyond the store's end is refused at once, never waited for
        started = time.monotonic()
        r = c.get("/api/v1/users/me", headers={"X-Min-Position": str(position + 10**6)})
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "unknown_position"
        assert time.monotonic() - started < settings.min_position_wait_seconds * 4
    # an unknown caller is refused before any wait
    with client(serve_app(create_app(msgspec.structs.replace(
            settings, min_position_wait_seconds=30.0))), uuid.uuid4()) as c:
        for path in ("/api/v1/sessions", f"/api/v1/sessions/{uuid.uuid4()}/stream"):
            started = time.monotonic()
            r = c.get(path, params={"min_position": position})
            assert r.status_code == 401, r.text
            assert r.json()["error"] == "unknown_user"
            assert time.monotonic() - started < 15.0  # not the 30 s wait


def test_min_position_already_projected_does_not_wait(
    serve_app: Callable[[Any], str], private_db: tuple[Settings, psycopg.Connection]
) -> None:
    settings, db = private_db
    # A wait this long would outlast the client's timeout: an answer at all means no wait.
    settings = msgspec.structs.replace(settings, min_position_wait_seconds=600.0)
    alice = seed_user(db)
    earlier = append_event(db)
    position = append_event(db)
    set_checkpoint_to(db, position)
    with client(serve_app(create_app(settings)), alice.user_id) as c:
        for p in (earlier, position):
            r = c.get("/api/v1/users/me", headers={"X-Min-Position": str(p)})
            assert r.status_code == 200, r.text
            assert "X-Projection-Lag" not in r.headers
        # without min_position there is never a lag header
        assert "X-Projection-Lag" not in c.get("/api/v1/sessions").headers


POLLS_SEEN = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND query LIKE 'SELECT projection_reached%'
"""


def test_min_position_reached_while_waiting_answers_as_soon_as_it_is(
    serve_app: Callable[[Any], str], private_db: tuple[Settings, psycopg.Connection]
) -> None:
    settings, db = private_db
    # Longer than the client's timeout: only noticing the catch-up can answer in time.
    settings = msgspec.structs.replace(settings, min_position_wait_seconds=600.0)
    alice = seed_user(db)
    position = append_event(db)
    set_checkpoint_to(db, None)
    base = serve_app(create_app(settings))
    result: dict[str, Any] = {}

    def read() -> None:
        with client(base, alice.user_id) as c:
            result["started"] = time.monotonic()
            result["response"] = c.get("/api/v1/sessions", params={"min_position": position})
            result["ended"] = time.monotonic()

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: "started" in result)
    # it is waiting once it has polled the checkpoint at least once
    wait_until(lambda: db.execute(POLLS_SEEN).fetchone() != (0,), timeout=30)
    # the "projector" catches up: a session appears together with the checkpoint
    with db.transaction():
        seed_session(db, alice, "just written")
        set_checkpoint_to(db, position)
    caught_up = time.monotonic()
    reader.join(timeout=30)
    r = result["response"]
    assert r.status_code == 200, r.text
    assert "X-Projection-Lag" not in r.headers
    # it asked before the write was projected, yet sees it: it waited, and not for long
    assert result["started"] < caught_up
    assert [s["title"] for s in r.json()["sessions"]] == ["just written"]


# --- RLS is what protects the data ---------------------------------------------------------


def test_the_query_role_sees_only_the_user_it_is_set_to(
    db: psycopg.Connection, database_url: str, alice: Seeded, bob: Seeded
) -> None:
    bobs = seed_session(db, bob, "bob's")
    seed_messages(db, bob, bobs, 5)
    with psycopg.connect(database_url) as conn:
        conn.execute(f"SET ROLE {QUERY_ROLE}")

        def as_user(user: uuid.UUID | None, query: str, args: tuple) -> list:
            with conn.transaction():
                if user is not None:
                    conn.execute(SET_USER, (str(user),))
                return conn.execute(query, args).fetchall()

        probes = [
            ("SELECT * FROM get_user_sessions(%s, 100)", (bob.user_id,)),
            ("SELECT * FROM get_session_messages(%s, 100, 0)", (bobs,)),
            ("SELECT * FROM get_session_messages_keyset(%s, 100, 0, NULL)", (bobs,)),
            ("SELECT * FROM sessions WHERE session_id = %s", (bobs,)),
            ("SELECT * FROM chat_messages WHERE session_id = %s", (bobs,)),
            ("SELECT * FROM users WHERE user_id = %s", (bob.user_id,)),
        ]
        for query, args in probes:
            assert as_user(alice.user_id, query, args) == [], query
            assert as_user(None, query, args) == [], query  # no user set: fail closed
            assert as_user(bob.user_id, query, args) != [], query
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute(SET_USER, (str(alice.user_id),))
            conn.execute("UPDATE sessions SET title = 'mine' WHERE session_id = %s", (bobs,))


# --- operations ----------------------------------------------------------------------------


def test_openapi_lists_every_operation_id(base_url: str) -> None:
    r = httpx.get(f"{base_url}/schema/openapi.json")
    assert r.status_code == 200
    schema = r.json()
    operation_ids = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {
        "listSessions",
        "listSessionMessages",
        "getCurrentUser",
        "listProjects",
        "queryHealthz",
        "queryReadyz",
    } <= operation_ids
    sessions = schema["paths"]["/api/v1/sessions"]["get"]
    assert "X-Projection-Lag" in sessions["responses"]["200"]["headers"]
    assert {"400", "401"} <= set(sessions["responses"])


def test_health_and_readiness(base_url: str) -> None:
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base_url}/readyz").status_code == 200


def test_readiness_fails_without_a_working_database_and_recovers(
    serve_app: Callable[[Any], str],
    private_db: tuple[Settings, psycopg.Connection],
    db: psycopg.Connection,  # on another database: it may not lock itself out
) -> None:
    settings, _ = private_db
    name = f"query-ready-{uuid.uuid4().hex[:8]}"
    url = psycopg.conninfo.make_conninfo(settings.database_url, application_name=name)
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    base = serve_app(create_app(msgspec.structs.replace(settings, database_url=url)))
    assert httpx.get(f"{base}/readyz").status_code == 200
    kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"

    # the pool's connections die under it: a request is never a 500
    db.execute(kill, (name,))
    for _ in range(3):
        r = httpx.get(f"{base}/api/v1/users/me", headers={"X-User-ID": str(uuid.uuid4())})
        assert r.status_code in (401, 503), r.text

    # the database refuses connections: not ready
    db.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(dbname)))
    try:
        db.execute(kill, (name,))
        unready = httpx.get(f"{base}/readyz", timeout=10)
        assert unready.status_code == 503
        assert unready.json()["error"] == "not_ready" and unready.json()["database"] is False
        assert httpx.get(f"{base}/healthz").status_code == 200
    finally:
        db.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(dbname))
        )
    wait_until(lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200, timeout=30)


def test_unknown_routes_and_methods_answer_in_the_error_shape(as_alice: httpx.Client) -> None:
    assert_error(as_alice.get("/api/v1/nope"), 404)
    not_allowed = as_alice.post("/api/v1/sessions")
    assert_error(not_allowed, 405)
    assert "GET" in not_allowed.headers["Allow"]


def test_request_id_is_echoed_or_made(as_alice: httpx.Client) -> None:
    r = as_alice.get("/api/v1/users/me", headers={"X-Request-ID": "req-123"})
    assert r.headers["X-Request-ID"] == "req-123"
    made = as_alice.get("/api/v1/users/me").headers["X-Request-ID"]
    assert made and made != "req-123"
