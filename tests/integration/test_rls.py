"""Row Level Security on the read model: a user sees only their own rows, and nobody sees
anything without a user. The last tests break the policies on purpose and show these checks
then fail, so they cannot pass vacuously."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from services.core.db import PROJECTOR_ROLE, QUERY_ROLE, SET_USER

OWNER_ROLE = "chat_owner"  # owns the per-user tables (0005_roles_and_rls.sql)

# One text key per visible row, per table. Constant SQL, never input.
VISIBLE = {
    "users": "SELECT user_id::text FROM users",
    "sessions": "SELECT session_id::text FROM sessions",
    "chat_messages": "SELECT message_id::text FROM chat_messages",
    "user_projects": "SELECT user_id::text || '/' || project_id::text FROM user_projects",
    "dossier": "SELECT project_id::text FROM dossier",
    "turns": "SELECT turn_id::text FROM turns",
}


@dataclass(frozen=True)
class Tenant:
    user_id: uuid.UUID
    project_id: uuid.UUID
    session_id: uuid.UUID
    turn_id: uuid.UUID
    message_ids: tuple[uuid.UUID, ...]

    def rows(self) -> dict[str, set[str]]:
        return {
            "users": {str(self.user_id)},
            "sessions": {str(self.session_id)},
            "chat_messages": {str(m) for m in self.message_ids},
            "user_projects": {f"{self.user_id}/{self.project_id}"},
            "dossier": {str(self.project_id)},
            "turns": {str(self.turn_id)},
        }


def seed_tenant(conn: psycopg.Connection, name: str) -> Tenant:
    """One user with a project, a session, a turn and two messages, written as the owner."""
    t = Tenant(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), (uuid.uuid4(), uuid.uuid4()))
    with conn.transaction():
        conn.execute(
            "INSERT INTO users (user_id, email, display_name) VALUES (%s, %s, %s)",
            (t.user_id, f"{name}-{t.user_id}@example.com", name),
        )
        conn.execute(
            "INSERT INTO dossier (project_id, title) VALUES (%s, %s)", (t.project_id, name)
        )
        conn.execute(
            "INSERT INTO user_projects (user_id, project_id) VALUES (%s, %s)",
            (t.user_id, t.project_id),
        )
        conn.execute(
            "INSERT INTO sessions (session_id, user_id, project_id, title) VALUES (%s, %s, %s, %s)",
            (t.session_id, t.user_id, t.project_id, f"{name}'s chat"),
        )
        conn.execute(
            "INSERT INTO turns (turn_id, project_id, user_text, session_id, user_id)"
            " VALUES (%s, %s, %s, %s, %s)",
            (t.turn_id, t.project_id, f"{name} asks", t.session_id, t.user_id),
        )
        for seq, (message_id, role) in enumerate(
            zip(t.message_ids, ("user", "assistant"), strict=True), 1
        ):
            conn.execute(
                "INSERT INTO chat_messages (message_id, session_id, turn_id, role, content,"
                " user_id, seq) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (message_id, t.session_id, t.turn_id, role, f"{name} {role}", t.user_id, seq),
            )
    return t


@contextmanager
def connect_as(url: str, role: str) -> Iterator[psycopg.Connection]:
    """A connection acting as `role`, like a pooled service connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        yield conn


def visible(conn: psycopg.Connection, user_id: uuid.UUID | None) -> dict[str, set[str]]:
    """What one request sees: a transaction that sets the user (when given)."""
    with conn.transaction():
        if user_id is not None:
            conn.execute(SET_USER, (str(user_id),))
        return {table: {row[0] for row in conn.execute(q)} for table, q in VISIBLE.items()}


NOTHING = {table: set[str]() for table in VISIBLE}


# The checks, as functions so that the sabotage tests can run them against a broken schema.


def check_each_user_sees_exactly_their_own_rows(url: str, a: Tenant, b: Tenant) -> None:
    with connect_as(url, QUERY_ROLE) as conn:
        assert visible(conn, a.user_id) == a.rows()
        # the same pooled connection, next request, other user
        assert visible(conn, b.user_id) == b.rows()


def check_no_user_set_sees_nothing(url: str) -> None:
    with connect_as(url, QUERY_ROLE) as conn:
        assert visible(conn, None) == NOTHING


def check_a_finished_request_leaves_no_user_behind(url: str, a: Tenant) -> None:
    with connect_as(url, QUERY_ROLE) as conn:
        assert visible(conn, a.user_id) == a.rows()
        # set_config(..., true) is transaction-local; afterwards the variable reads back ''
        assert conn.execute("SELECT current_setting('app.user_id', true)").fetchone() == ("",)
        assert visible(conn, None) == NOTHING
        # and after a request that failed and rolled back
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            conn.execute(SET_USER, (str(a.user_id),))
            conn.execute("SELECT 1 / 0")
        assert visible(conn, None) == NOTHING


def check_the_owner_is_bound_by_rls_too(url: str, a: Tenant) -> None:
    """chat_owner is not a superuser: only FORCE ROW LEVEL SECURITY keeps it out."""
    with connect_as(url, OWNER_ROLE) as conn:
        assert visible(conn, None) == NOTHING
        assert visible(conn, a.user_id) == NOTHING  # no policy grants the owner anything


def check_the_functions_return_nothing_of_another_user(url: str, a: Tenant, b: Tenant) -> None:
    with connect_as(url, QUERY_ROLE) as conn, conn.transaction():
        conn.execute(SET_USER, (str(a.user_id),))
        assert (
            conn.execute("SELECT * FROM get_user_sessions(%s, 10)", (b.user_id,)).fetchall() == []
        )
        assert (
            conn.execute(
                "SELECT * FROM get_session_messages(%s, 50, 0)", (b.session_id,)
            ).fetchall()
            == []
        )
        assert (
            conn.execute(
                "SELECT * FROM get_session_messages_keyset(%s, 50)", (b.session_id,)
            ).fetchall()
            == []
        )
        # while A's own calls work (the functions are not simply broken)
        own = conn.execute("SELECT session_id FROM get_user_sessions(%s, 10)", (a.user_id,))
        assert own.fetchall() == [(a.session_id,)]
        own = conn.execute("SELECT message_id FROM get_session_messages(%s)", (a.session_id,))
        assert [r[0] for r in own] == list(a.message_ids)


def run_all_checks(url: str, a: Tenant, b: Tenant) -> None:
    check_each_user_sees_exactly_their_own_rows(url, a, b)
    check_no_user_set_sees_nothing(url)
    check_a_finished_request_leaves_no_user_behind(url, a)
    check_the_owner_is_bound_by_rls_too(url, a)
    check_the_functions_return_nothing_of_another_user(url, a, b)


@pytest.fixture
def tenants(db: psycopg.Connection) -> tuple[Tenant, Tenant]:
    return seed_tenant(db, "alice"), seed_tenant(db, "bob")


# The behaviour -----------------------------------------------------------------------------


def test_a_user_sees_exactly_their_own_rows_on_every_table(
    database_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    check_each_user_sees_exactly_their_own_rows(database_url, *tenants)


def test_without_a_user_the_query_role_sees_nothing(
    database_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    check_no_user_set_sees_nothing(database_url)


def test_after_a_request_ends_the_connection_carries_no_user(
    database_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    check_a_finished_request_leaves_no_user_behind(database_url, tenants[0])


def test_the_table_owner_sees_nothing_because_rls_is_forced(
    database_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    check_the_owner_is_bound_by_rls_too(database_url, tenants[0])


def test_the_read_functions_return_nothing_of_another_user(
    database_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    check_the_functions_return_nothing_of_another_user(database_url, *tenants)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO users (user_id, email) VALUES ('{a}', 'intruder@example.com')",
        "INSERT INTO sessions (user_id, title) VALUES ('{a}', 'mine now')",
        "INSERT INTO chat_messages (session_id, role, content, user_id, seq)"
        " VALUES ('{s}', 'user', 'x', '{a}', 99)",
        "INSERT INTO user_projects (user_id, project_id) VALUES ('{a}', '{p}')",
        "UPDATE sessions SET title = 'renamed' WHERE session_id = '{s}'",
        "UPDATE chat_messages SET content = 'edited' WHERE session_id = '{s}'",
        "UPDATE users SET display_name = 'x' WHERE user_id = '{a}'",
        "DELETE FROM chat_messages WHERE session_id = '{s}'",
    ],
    ids=lambda s: " ".join(s.split()[:3]),
)
def test_the_query_role_cannot_write_even_its_own_rows(
    database_url: str, tenants: tuple[Tenant, Tenant], statement: str
) -> None:
    a = tenants[0]
    query = statement.format(a=a.user_id, s=a.session_id, p=uuid.uuid4())
    with connect_as(database_url, QUERY_ROLE) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute(SET_USER, (str(a.user_id),))
            conn.execute(query)
        assert visible(conn, a.user_id) == a.rows()


def test_the_query_role_cannot_read_the_event_store(database_url: str) -> None:
    with connect_as(database_url, QUERY_ROLE) as conn:
        for table in ("events", "event_streams", "user_emails"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(sql.SQL("SELECT 1 FROM {}").format(sql.Identifier(table)))


def test_the_query_role_learns_only_where_its_callers_own_streams_end(
    make_database: Callable[[], str],
) -> None:
    """stream_catch_up_position (read-after-write on a miss) is the query role's one door into
    the event store: a position for the caller's own live stream, NULL for anything else."""
    url = make_database()  # its own: a projector sharing the run's database must not see these
    owner, other = uuid.uuid4(), uuid.uuid4()
    live, gone = f"session-{uuid.uuid4()}", f"session-{uuid.uuid4()}"
    with psycopg.connect(url, autocommit=True) as conn:
        for stream, deleted in ((live, False), (gone, True)):
            conn.execute("INSERT INTO event_streams (stream_id, stream_type, owner_id, version,"
                         " deleted) VALUES (%s, 'session', %s, 2, %s)", (stream, owner, deleted))
            conn.execute("INSERT INTO events (stream_id, version, type, data)"
                         " VALUES (%s, 1, 'SessionStarted', '{}'), (%s, 2, 'MessagePosted', '{}')",
                         (stream, stream))
        last = conn.execute("SELECT position FROM events WHERE stream_id = %s AND version = 2",
                            (live,)).fetchone()
        config = conn.execute("SELECT prosecdef, proconfig FROM pg_proc"
                              " WHERE proname = 'stream_catch_up_position'").fetchone()
    assert config == (True, ['search_path=""'])
    ask = "SELECT stream_catch_up_position(%s, %s)"
    with connect_as(url, QUERY_ROLE) as conn:
        assert conn.execute(ask, (live, owner)).fetchone() == last
        for stream, caller in ((live, other), (gone, owner), (f"session-{uuid.uuid4()}", owner),
                               (f"user-{owner}", owner)):
            assert conn.execute(ask, (stream, caller)).fetchone() == (None,), stream
    with connect_as(url, PROJECTOR_ROLE) as conn, pytest.raises(
        psycopg.errors.InsufficientPrivilege
    ):
        conn.execute(ask, (live, owner))


class _Undo(Exception):
    """Raised to roll a transaction back."""


def test_the_projector_role_sees_and_writes_every_users_rows(
    database_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    with connect_as(database_url, PROJECTOR_ROLE) as conn:
        seen = visible(conn, None)
        for table in VISIBLE:
            assert a.rows()[table] | b.rows()[table] <= seen[table], table
        with pytest.raises(_Undo), conn.transaction():
            cur = conn.execute(
                "UPDATE sessions SET title = 'by projector' WHERE session_id = %s"
                " RETURNING session_id",
                (b.session_id,),
            )
            assert cur.fetchall() == [(b.session_id,)]
            raise _Undo  # leave the shared data as it was


def test_every_per_user_table_has_rls_enabled_and_forced(db: psycopg.Connection) -> None:
    rows = db.execute(
        "SELECT relname, relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner)"
        "  FROM pg_class WHERE relname = ANY(%s) AND relnamespace = 'public'::regnamespace",
        (list(VISIBLE),),
    ).fetchall()
    assert sorted(rows) == sorted((t, True, True, OWNER_ROLE) for t in VISIBLE)


def test_the_query_role_is_neither_owner_superuser_nor_bypassrls(db: psycopg.Connection) -> None:
    for role in (QUERY_ROLE, OWNER_ROLE):
        row = db.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (role,)
        ).fetchone()
        assert row == (False, False), role


# The checks bite: break the schema in a throwaway database and watch them fail -------------

SABOTAGE = {
    "policy dropped on sessions": (
        "DROP POLICY owner_read ON sessions",
        check_each_user_sees_exactly_their_own_rows,
    ),
    "FORCE removed from sessions": (
        "ALTER TABLE sessions NO FORCE ROW LEVEL SECURITY",
        check_the_owner_is_bound_by_rls_too,
    ),
    "RLS disabled on chat_messages": (
        "ALTER TABLE chat_messages DISABLE ROW LEVEL SECURITY",
        check_each_user_sees_exactly_their_own_rows,
    ),
    "RLS disabled on chat_messages, no user": (
        "ALTER TABLE chat_messages DISABLE ROW LEVEL SECURITY",
        check_no_user_set_sees_nothing,
    ),
    "RLS disabled on sessions, the functions leak": (
        "ALTER TABLE sessions DISABLE ROW LEVEL SECURITY",
        check_the_functions_return_nothing_of_another_user,
    ),
    "a permissive extra policy on turns": (
        "CREATE POLICY leak ON turns FOR SELECT TO chat_query USING (true)",
        check_each_user_sees_exactly_their_own_rows,
    ),
    "a policy that fails open without a user": (
        "DROP POLICY owner_read ON users;"
        " CREATE POLICY owner_read ON users FOR SELECT TO chat_query USING ("
        "   coalesce(current_setting('app.user_id', true), '') = ''"
        "   OR user_id::text = current_setting('app.user_id', true))",
        check_no_user_set_sees_nothing,
    ),
    "a policy that fails open after a request": (
        "DROP POLICY owner_read ON users;"
        " CREATE POLICY owner_read ON users FOR SELECT TO chat_query USING ("
        "   current_setting('app.user_id', true) = ''"
        "   OR user_id::text = current_setting('app.user_id', true))",
        check_a_finished_request_leaves_no_user_behind,
    ),
}


@pytest.mark.parametrize("sabotage", list(SABOTAGE))
def test_the_checks_fail_when_rls_is_weakened(
    make_database: Callable[[], str], sabotage: str
) -> None:
    url = make_database()
    statement, check = SABOTAGE[sabotage]
    with psycopg.connect(url, autocommit=True) as owner:
        a, b = seed_tenant(owner, "alice"), seed_tenant(owner, "bob")
        run_all_checks(url, a, b)  # intact: every check passes in this database too
        owner.execute(statement)  # type: ignore[arg-type]

    args = {
        check_each_user_sees_exactly_their_own_rows: (url, a, b),
        check_no_user_set_sees_nothing: (url,),
        check_a_finished_request_leaves_no_user_behind: (url, a),
        check_the_owner_is_bound_by_rls_too: (url, a),
        check_the_functions_return_nothing_of_another_user: (url, a, b),
    }[check]
    with pytest.raises(AssertionError):
        check(*args)  # type: ignore[operator]
