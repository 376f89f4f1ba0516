"""The SQL around the fold (workers/fold.py): the look-ups that give it its state, and the
statements that write its rounds. Table names are unqualified: the replay points
search_path at the tables it builds.

Two ways to insert new rows, one for each writer: `insert_rows` (INSERT ... SELECT FROM
unnest, one statement per table, fine inside a pipeline: the live projector) and
`copy_rows` (binary COPY: the replay's bulk build). Updates and deletes are the same
statements for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from workers.fold import Known, Needs, Round, SessionState

Conn = psycopg.Connection[Any]
Row = list[Any]
Insert = Callable[[Conn, str, Sequence[Row]], None]
_encode_json = msgspec.json.Encoder().encode

# The columns each insert writes, with their types (for unnest casts and binary COPY).
# sessions' counters are left to their defaults and to update_session_last_message().
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "users": (("user_id", "uuid"), ("email", "text"), ("display_name", "text"),
              ("avatar_url", "text"), ("created_at", "timestamptz"),
              ("updated_at", "timestamptz")),
    "dossier": (("project_id", "uuid"), ("title", "text"), ("created_at", "timestamptz"),
                ("updated_at", "timestamptz"), ("description", "text")),
    "user_projects": (("user_id", "uuid"), ("project_id", "uuid"),
                      ("created_at", "timestamptz")),
    "sessions": (("session_id", "uuid"), ("user_id", "uuid"), ("project_id", "uuid"),
                 ("title", "text"), ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
                 ("last_message_at", "timestamptz"), ("is_active", "bool")),
    "turns": (("turn_id", "uuid"), ("project_id", "uuid"), ("user_text", "text"),
              ("assistant_text", "text"), ("created_at", "timestamptz"),
              ("session_id", "uuid"), ("user_id", "uuid")),
    "chat_messages": (("message_id", "uuid"), ("session_id", "uuid"), ("turn_id", "uuid"),
                      ("role", "text"), ("content", "text"), ("metadata", "jsonb"),
                      ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
                      ("user_id", "uuid"), ("seq", "int8")),
}

# Look-ups: the fold's state for the ids a batch touches. Joins with unnest rather than
# "= ANY(array)": a batch can hold 50,000 ids, and a sequential scan filtering on a long
# array compares every row with every id, where the join probes the key once per id.
SELECT_USERS = """
SELECT u.user_id, u.email, u.display_name, u.avatar_url
  FROM unnest(%s::uuid[]) k(id) JOIN users u ON u.user_id = k.id
UNION
SELECT u.user_id, u.email, u.display_name, u.avatar_url
  FROM unnest(%s::text[]) k(email) JOIN users u ON u.email = k.email
"""
SELECT_PROJECTS = """
SELECT d.project_id FROM unnest(%s::uuid[]) k(id) JOIN dossier d ON d.project_id = k.id
"""
SELECT_LINKS = """
SELECT l.user_id, l.project_id FROM unnest(%s::uuid[], %s::uuid[]) k(user_id, project_id)
  JOIN user_projects l USING (user_id, project_id)
"""
SELECT_SESSIONS = """
SELECT s.session_id, s.user_id, s.project_id, s.title, s.is_active, s.last_seq
  FROM unnest(%s::uuid[]) k(id) JOIN sessions s ON s.session_id = k.id
"""
SELECT_TURNS = """
SELECT t.turn_id, t.session_id
  FROM (SELECT DISTINCT id FROM unnest(%s::uuid[]) k(id) ORDER BY id) k
  JOIN turns t ON t.turn_id = k.id
"""
SELECT_MESSAGES = """
SELECT m.message_id, m.session_id
  FROM (SELECT id FROM unnest(%s::uuid[]) k(id) ORDER BY id) k
  JOIN chat_messages m ON m.message_id = k.id
"""

# A deleted session: its messages, its turns (by session, and legacy ones linked in the
# same round, by id), and other sessions' messages naming those turns keep turn_id NULL.
# Live, the foreign keys' ON DELETE actions would do the same; the replay loads without
# foreign keys, so the statements say it.
UNLINK_MESSAGES = """
UPDATE chat_messages m SET turn_id = NULL
  FROM turns t
 WHERE (t.session_id = ANY(%(sessions)s::uuid[]) OR t.turn_id = ANY(%(turns)s::uuid[]))
   AND m.turn_id = t.turn_id AND NOT m.session_id = ANY(%(sessions)s::uuid[])
"""
DELETE_MESSAGES = "DELETE FROM chat_messages WHERE session_id = ANY(%(sessions)s::uuid[])"
DELETE_TURNS = """
DELETE FROM turns
 WHERE session_id = ANY(%(sessions)s::uuid[]) OR turn_id = ANY(%(turns)s::uuid[])
"""
DELETE_SESSIONS = "DELETE FROM sessions WHERE session_id = ANY(%(sessions)s::uuid[])"
UPDATE_USERS = """
UPDATE users u SET email = v.email, display_name = v.display_name, avatar_url = v.avatar_url,
       updated_at = v.updated_at
  FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])
       AS v(user_id, email, display_name, avatar_url, updated_at)
 WHERE u.user_id = v.user_id
"""
UPDATE_SESSIONS = """
UPDATE sessions s SET title = v.title, is_active = v.is_active, updated_at = v.updated_at
  FROM unnest(%s::uuid[], %s::text[], %s::bool[], %s::timestamptz[])
       AS v(session_id, title, is_active, updated_at)
 WHERE s.session_id = v.session_id
"""
# Issue 17: a project renamed (description kept when NULL), a session moved.
UPDATE_PROJECTS = """
UPDATE dossier d SET title = v.title, description = coalesce(v.description, d.description),
       updated_at = v.updated_at
  FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::timestamptz[])
       AS v(project_id, title, description, updated_at)
 WHERE d.project_id = v.project_id
"""
MOVE_SESSIONS = """
UPDATE sessions s SET project_id = v.project_id, updated_at = v.updated_at
  FROM unnest(%s::uuid[], %s::uuid[], %s::timestamptz[]) AS v(session_id, project_id, updated_at)
 WHERE s.session_id = v.session_id
"""
# A legacy turn linked to a session: every column as the fresh row has it.
LINK_TURNS = """
UPDATE turns t SET project_id = v.project_id, user_text = v.user_text,
       assistant_text = v.assistant_text, created_at = v.created_at,
       session_id = v.session_id, user_id = v.user_id
  FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::text[], %s::timestamptz[], %s::uuid[],
              %s::uuid[]) AS v(turn_id, project_id, user_text, assistant_text, created_at,
                               session_id, user_id)
 WHERE t.turn_id = v.turn_id
"""
ANSWER_TURNS = """
UPDATE turns t SET assistant_text = v.content
  FROM unnest(%s::uuid[], %s::text[]) AS v(turn_id, content) WHERE t.turn_id = v.turn_id
"""


def _insert_statement(table: str) -> sql.Composed:
    columns = COLUMNS[table]
    return sql.SQL("INSERT INTO {} ({}) SELECT * FROM unnest({})").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c, _ in columns),
        sql.SQL(", ").join(sql.SQL(f"%s::{kind}[]") for _, kind in columns))


INSERTS = {table: _insert_statement(table) for table in COLUMNS}
_JSON_COLUMNS = {t: [i for i, (_, k) in enumerate(c) if k == "jsonb"] for t, c in COLUMNS.items()}


def _columns(rows: Sequence[Row], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


def insert_rows(conn: Conn, table: str, rows: Sequence[Row]) -> None:
    """One INSERT ... SELECT FROM unnest for the rows (the live writer)."""
    if not rows:
        return
    columns = _columns(rows, len(COLUMNS[table]))
    for i in _JSON_COLUMNS[table]:
        columns[i] = [None if v is None else _encode_json(v).decode() for v in columns[i]]
    conn.execute(INSERTS[table], columns)


def copy_rows(conn: Conn, table: str, rows: Iterable[Row]) -> None:
    """Binary COPY of the rows (the replay's writer). jsonb values go through the
    connection's JSON dumper (the replay sets msgspec's)."""
    columns = COLUMNS[table]
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c, _ in columns))
    with conn.cursor().copy(statement) as copy:
        copy.set_types([kind for _, kind in columns])
        for row in rows:
            copy.write_row(row)


def _run(conn: Conn, statement: str, rows: Sequence[Row]) -> None:
    if rows:
        conn.execute(statement, _columns(rows, statement.count("%s")))


# UserDeleted: its sessions went with their SessionDeleted; what is left of the account:
# its legacy turns, any session, the projects no one else is linked to, then the user (its
# links and messages cascade).
DELETE_USERS = (
    "DELETE FROM turns WHERE user_id = ANY(%(users)s::uuid[])",
    "DELETE FROM sessions WHERE user_id = ANY(%(users)s::uuid[])",
    """DELETE FROM dossier d
        WHERE d.project_id IN (SELECT project_id FROM user_projects
                                WHERE user_id = ANY(%(users)s::uuid[]))
          AND NOT EXISTS (SELECT 1 FROM user_projects l WHERE l.project_id = d.project_id
                             AND l.user_id <> ALL(%(users)s::uuid[]))
          AND NOT EXISTS (SELECT 1 FROM turns t WHERE t.project_id = d.project_id)""",
    "DELETE FROM users WHERE user_id = ANY(%(users)s::uuid[])",
)


def write_round(conn: Conn, r: Round, insert: Insert) -> None:
    """Writes one round of the fold, in the order the fold assumes."""
    if r.deleted_users:
        for statement in DELETE_USERS:
            conn.execute(statement, {"users": r.deleted_users})
    if r.deleted_sessions or r.deleted_turns:
        gone = {"sessions": r.deleted_sessions, "turns": r.deleted_turns}
        for statement in (UNLINK_MESSAGES, DELETE_MESSAGES, DELETE_TURNS, DELETE_SESSIONS):
            conn.execute(statement, gone)
    _run(conn, UPDATE_USERS, list(r.users_updated.values()))
    insert(conn, "users", list(r.users_new.values()))
    insert(conn, "dossier", r.dossier_new)
    insert(conn, "user_projects", r.links_new)
    insert(conn, "sessions", list(r.sessions_new.values()))
    _run(conn, UPDATE_SESSIONS, list(r.sessions_updated.values()))
    _run(conn, UPDATE_PROJECTS, list(r.projects_updated.values()))  # issue 17
    _run(conn, MOVE_SESSIONS, list(r.sessions_moved.values()))
    insert(conn, "turns", list(r.turns_new.values()))
    _run(conn, LINK_TURNS, list(r.turns_linked.values()))
    insert(conn, "chat_messages", [m for ms in r.messages.values() for m in ms])
    _run(conn, ANSWER_TURNS, [[t, c] for t, c in r.answers.items()])


def load_known(conn: Conn, n: Needs) -> Known:
    """The rows the fold needs, looked up by id (sent together in pipeline mode)."""
    k = Known()
    lookups: list[tuple[str, tuple[Any, ...]]] = []
    if n.users or n.emails:
        lookups.append((SELECT_USERS, (list(n.users), list(n.emails))))
    if n.projects:
        lookups.append((SELECT_PROJECTS, (list(n.projects),)))
    if n.links:
        lookups.append((SELECT_LINKS, ([u for u, _ in n.links], [p for _, p in n.links])))
    if n.sessions:
        lookups.append((SELECT_SESSIONS, (list(n.sessions),)))
    if n.turns:
        lookups.append((SELECT_TURNS, (list(n.turns),)))
    if n.messages:
        lookups.append((SELECT_MESSAGES, (list(n.messages),)))
    if not lookups:
        return k
    with conn.pipeline():
        cursors = {statement: conn.cursor().execute(statement, params)
                   for statement, params in lookups}
    for statement, cursor in cursors.items():
        rows = cursor.fetchall()
        if statement is SELECT_USERS:
            k.users = {r[0]: list(r) for r in rows}
        elif statement is SELECT_PROJECTS:
            k.projects = {r[0] for r in rows}
        elif statement is SELECT_LINKS:
            k.links = {(r[0], r[1]) for r in rows}
        elif statement is SELECT_SESSIONS:
            k.sessions = {r[0]: SessionState(*r[1:]) for r in rows}
        elif statement is SELECT_TURNS:
            k.turns = {r[0]: r[1] for r in rows}
        else:
            k.messages = {r[0]: r[1] for r in rows}
    for turn, owner in k.turns.items():
        if owner in k.sessions:
            k.sessions[owner].turns.append(turn)
    for message, owner in k.messages.items():
        if owner in k.sessions:
            k.sessions[owner].messages.append(message)
    return k
