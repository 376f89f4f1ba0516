"""The replay's bulk build of the read model: fold the events in Python, write with COPY.

The projector (workers/projector.py) applies events with a few SQL statements each, which
tops out around 12k events/s. For the initial build of a replay, where the tables are new,
empty and private until the swap, this module instead folds the events in memory, in
(txid, position) order, into the rows the projector would have left, and writes each table
with COPY. The projector stays the definition: every rule below mirrors one of its
statements applied one event at a time (what its per-event fallback does), and
tests/integration/test_replay.py compares the two on random event sets.

The projector's rules, as the fold keeps them:

- UserRegistered inserts a user; a taken user_id or e-mail fails the event (it is parked).
  UserProfileUpdated sets the fields it carries and updated_at; a missing user is a no-op,
  an e-mail another user has fails the event.
- ProjectCreated inserts the dossier row and links the owner; a taken project id or an
  unknown owner fails it. ProjectLinked links once (a second link is a no-op); an unknown
  user or project fails it.
- SessionStarted inserts the session; a taken id, an unknown user or project fails it.
  SessionRenamed / SessionArchived set title or is_active and updated_at (no-op when the
  session is gone). SessionDeleted deletes the session's turns, then the session (its
  messages cascade; messages elsewhere pointing at its turns get turn_id NULL).
- MessagePosted to a session that does not exist is dropped (the projector's INSERT ...
  JOIN sessions), except that an assistant message still answers its turn (ANSWER_TURNS
  joins nothing but turns). Otherwise: a user message with a turn_id inserts the turn, or
  links a legacy turn (one with no session: it becomes exactly the fresh row), or leaves
  a turn some session already has; the message gets the session's next seq and owner;
  a taken message_id or a turn_id that names no turn fails the event; an assistant message
  with a turn_id fills that turn's assistant_text (the last answer wins).
- The statement-level trigger on chat_messages is disabled while loading, and the session
  columns it keeps are computed here: message_count, last_seq, preview (the last message's
  first 200 characters), last_message_at = greatest(start, message times) and updated_at =
  greatest(updated_at, message time) per message, set outright by a rename or archive.

Loading mode. COPY FROM refuses a table whose row level security applies to the writer, and
the rebuild tables copy the live ones' FORCE ROW LEVEL SECURITY. While loading, as the
tables' owner, they are set NO FORCE (the owner then bypasses RLS), their user triggers are
disabled, and their foreign keys and the indexes that back no constraint are dropped: a
foreign key checked row by row costs more than the COPY itself, and an index built at the
end is one sort instead of a million random insertions. The keys stay (the fold's updates
and deletes use them). The fold performs what the foreign keys' ON DELETE actions would
(a deleted session's messages, turn_id NULL for messages of a deleted turn: the fold knows
which), each through a key. At the end, in one transaction, everything is put back under
the same names and definitions, and each foreign key is validated by one join. A build
that is interrupted leaves tables in loading mode, but the rebuild schema is never swapped
in then: the next replay drops it.

Memory. Events are read, folded and written in chunks of `chunk` events, one transaction
each (a long transaction would hold back every follower's read horizon). The contents (the
bulk: message text, turns' text, metadata) are held for one chunk only; across chunks the
fold keeps per-entity state (users, projects, links, sessions: a few hundred bytes each)
and the ids of the live messages and turns (some 100-150 bytes per message). So memory is
O(chunk contents + entities + message ids), not O(event contents): the process peaked at
419 MB for 1M events (bench/results/replay.json, with the chunk's rows and the fetched
events). Rows already written that a later event changes (a session's counters, a
user's profile, a turn's answer, a deletion) are updated with one statement per table per
chunk.

Anything the fold did not foresee (a constraint the database refuses) raises: the caller
builds again with the projector's per-event path.
"""

from __future__ import annotations

import datetime as dt
import gc
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
import structlog
from psycopg import sql
from psycopg.types.json import set_json_dumps

from services.core import events as ev
from services.core.eventstore import Checkpoint

log = structlog.get_logger("replay")

Conn = psycopg.Connection[Any]
Row = list[Any]
_encode_json = msgspec.json.Encoder().encode  # metadata → jsonb, as the projector encodes it

CHUNK = 100_000  # events per read + write transaction
PREVIEW_CHARS = 200  # update_session_last_message(): left(content, 200)

# The follower query of services/core/eventstore.py, with the read horizon taken once per
# chunk: as a filter (when the planner picks a sequential scan) event_read_horizon() would
# be called for every row.
READ_HORIZON = "SELECT event_read_horizon()::text"
READ_EVENTS = """
SELECT position, txid::text::bigint, data::text, recorded_at FROM events
 WHERE (txid, position) > (%(txid)s::text::xid8, %(position)s)
   AND txid < %(horizon)s::xid8
 ORDER BY events.txid, events.position  -- the column, not the output txid (a sort)
 LIMIT %(limit)s
"""

# Column lists and binary COPY types of the tables, in the projector's column names.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "users": (("user_id", "uuid"), ("email", "text"), ("display_name", "text"),
              ("avatar_url", "text"), ("created_at", "timestamptz"),
              ("updated_at", "timestamptz")),
    "dossier": (("project_id", "uuid"), ("title", "text"), ("created_at", "timestamptz"),
                ("updated_at", "timestamptz")),
    "user_projects": (("user_id", "uuid"), ("project_id", "uuid"),
                      ("created_at", "timestamptz")),
    "sessions": (("session_id", "uuid"), ("user_id", "uuid"), ("project_id", "uuid"),
                 ("title", "text"), ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
                 ("last_message_at", "timestamptz"), ("is_active", "bool"),
                 ("message_count", "int4"), ("last_message_preview", "text"),
                 ("last_seq", "int8")),
    "turns": (("turn_id", "uuid"), ("project_id", "uuid"), ("user_text", "text"),
              ("assistant_text", "text"), ("created_at", "timestamptz"),
              ("session_id", "uuid"), ("user_id", "uuid")),
    "chat_messages": (("message_id", "uuid"), ("session_id", "uuid"), ("turn_id", "uuid"),
                      ("role", "text"), ("content", "text"), ("metadata", "jsonb"),
                      ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
                      ("user_id", "uuid"), ("seq", "int8")),
}
TABLES = tuple(COLUMNS)  # parents before children
_SESSION_PREVIEW = 9  # index of last_message_preview in a sessions row
_MESSAGE_TURN = 2  # index of turn_id in a chat_messages row
_TURN_ANSWER = 3  # index of assistant_text in a turns row

# Rows already written that a later chunk changes. {t} is the schema-qualified table.
UPDATE_USERS = """
UPDATE {t} u SET email = v.email, display_name = v.display_name, avatar_url = v.avatar_url,
       updated_at = v.updated_at
  FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])
       AS v(user_id, email, display_name, avatar_url, created_at, updated_at)
 WHERE u.user_id = v.user_id
"""
UPDATE_SESSIONS = """
UPDATE {t} s SET title = v.title, updated_at = v.updated_at,
       last_message_at = v.last_message_at, is_active = v.is_active,
       message_count = v.message_count, last_message_preview = v.preview, last_seq = v.last_seq
  FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::text[], %s::timestamptz[],
              %s::timestamptz[], %s::timestamptz[], %s::bool[], %s::int[], %s::text[],
              %s::bigint[])
       AS v(session_id, user_id, project_id, title, created_at, updated_at, last_message_at,
            is_active, message_count, preview, last_seq)
 WHERE s.session_id = v.session_id
"""
# A legacy turn linked to a session: every column as the fresh row would have it.
LINK_TURNS = """
UPDATE {t} t SET project_id = v.project_id, user_text = v.user_text,
       assistant_text = v.assistant_text, created_at = v.created_at,
       session_id = v.session_id, user_id = v.user_id
  FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::text[], %s::timestamptz[], %s::uuid[],
              %s::uuid[]) AS v(turn_id, project_id, user_text, assistant_text, created_at,
                               session_id, user_id)
 WHERE t.turn_id = v.turn_id
"""
ANSWER_TURNS = """
UPDATE {t} t SET assistant_text = v.content
  FROM unnest(%s::uuid[], %s::text[]) AS v(turn_id, content) WHERE t.turn_id = v.turn_id
"""
# What the foreign keys' ON DELETE actions would do, were they there while loading.
DELETE_TURNS = "DELETE FROM {t} WHERE turn_id = ANY(%s::uuid[])"
UNLINK_MESSAGES = "UPDATE {t} SET turn_id = NULL WHERE message_id = ANY(%s::uuid[])"
DELETE_SESSIONS = "DELETE FROM {t} WHERE session_id = ANY(%s::uuid[])"
DELETE_MESSAGES = "DELETE FROM {t} WHERE session_id = ANY(%s::uuid[])"


class BulkBuildRefused(RuntimeError):
    """The rebuild tables are not in the state the bulk build starts from."""


class _User:
    __slots__ = ("dirty", "flushed", "row")

    def __init__(self, row: Row, flushed: bool = False) -> None:
        self.row = row
        self.flushed = flushed
        self.dirty = False


class _Session:
    """A live session: its row (preview column holding the whole last content until
    written), and the ids of its messages and turns (what a delete removes)."""

    __slots__ = ("alive", "dirty", "flushed", "messages", "row", "turns")

    def __init__(self, row: Row) -> None:
        self.row = row
        self.alive = True
        self.flushed = False
        self.dirty = False
        self.messages: list[int] = []
        self.turns: list[int] = []


_MISSING: Any = object()


class ReadModelFold:
    """The read model as the projector would leave it after the events folded so far.

    Keys are the ids' 128-bit integers (a UUID hashes through a Python-level method).
    """

    def __init__(self) -> None:
        self.users: dict[int, _User] = {}
        self.emails: dict[str, int] = {}
        self.projects: set[int] = set()
        self.links: set[tuple[int, int]] = set()
        self.sessions: dict[int, _Session] = {}
        self.message_ids: set[int] = set()
        self.turns: dict[int, int | None] = {}  # live turn -> its session (None: legacy)
        # turn -> written messages of other sessions that name it (rare: kept across chunks)
        self.written_cross_refs: dict[int, list[uuid.UUID]] = {}
        self._reset_pending()
        self._handlers: dict[type, Callable[[Any, dt.datetime], str | None]] = {
            ev.MessagePosted: self._message_posted,
            ev.UserRegistered: self._user_registered,
            ev.UserProfileUpdated: self._profile_updated,
            ev.ProjectCreated: self._project_created,
            ev.ProjectLinked: self._project_linked,
            ev.SessionStarted: self._session_started,
            ev.SessionRenamed: self._session_renamed,
            ev.SessionArchived: self._session_archived,
            ev.SessionDeleted: self._session_deleted,
            ev.AssistantReplyFailed: lambda _e, _at: None,
        }

    def _reset_pending(self) -> None:
        """What the current chunk has to write."""
        self.new_users: list[_User] = []
        self.dirty_users: list[_User] = []
        self.new_dossier: list[Row] = []
        self.new_links: list[Row] = []
        self.new_sessions: list[_Session] = []
        self.dirty_sessions: list[_Session] = []
        self.new_turns: dict[int, Row] = {}
        self.linked_turns: dict[int, Row] = {}  # legacy rows already in the table
        self.answers: dict[int, tuple[uuid.UUID, str]] = {}  # for turns already written
        self.new_messages: list[tuple[_Session, Row]] = []
        self.cross_refs: dict[int, list[Row]] = {}  # turn -> new messages of other sessions
        self.deleted_sessions: list[uuid.UUID] = []  # rows already written
        self.deleted_turns: list[uuid.UUID] = []
        self.unlinked_messages: list[uuid.UUID] = []  # written ones, to get turn_id NULL

    def load_existing(self, conn: Conn, schema: str) -> None:
        """Rows already in the rebuild tables: the legacy dossier and turns replay copied."""
        def q(table: str) -> sql.Composed:
            return sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, table))

        for n in ("sessions", "chat_messages"):
            if conn.execute(sql.SQL("SELECT EXISTS ({})").format(q(n))).fetchone() != (False,):
                raise BulkBuildRefused(f"{schema}.{n} is not empty: the bulk build needs it empty")
        for row in conn.execute(sql.SQL(
                "SELECT user_id, email, display_name, avatar_url, created_at, updated_at"
                " FROM {}").format(sql.Identifier(schema, "users"))):
            self.users[row[0].int] = _User(list(row), flushed=True)
            if row[1] is not None:
                self.emails[row[1]] = row[0].int
        self.projects.update(r[0].int for r in conn.execute(sql.SQL(
            "SELECT project_id FROM {}").format(sql.Identifier(schema, "dossier"))))
        self.links.update((r[0].int, r[1].int) for r in conn.execute(sql.SQL(
            "SELECT user_id, project_id FROM {}").format(sql.Identifier(schema, "user_projects"))))
        self.turns.update((r[0].int, None) for r in conn.execute(sql.SQL(
            "SELECT turn_id FROM {}").format(sql.Identifier(schema, "turns"))))

    # The fold ------------------------------------------------------------------------------

    def apply(self, event: ev.Event, at: dt.datetime) -> str | None:
        """Folds one event; returns why it fails (the projector would raise), else None."""
        return self._handlers[type(event)](event, at)

    def _message_posted(self, e: ev.MessagePosted, at: dt.datetime) -> str | None:
        turn = e.turn_id
        s = self.sessions.get(e.session_id.int)
        if s is None:  # INSERT_TURNS and INSERT_MESSAGES join sessions: nothing to write
            if turn is not None and e.role == "assistant":
                self._answer(turn, e.content)
            return None
        mid = e.message_id.int
        if mid in self.message_ids:
            return f"duplicate message_id {e.message_id}"
        row = s.row
        sid = row[0]
        skey = sid.int
        tkey = turn.int if turn is not None else None
        owner = self.turns.get(tkey, _MISSING) if tkey is not None else None
        if e.role == "user" and tkey is not None:
            if owner is _MISSING:  # a new turn
                self.new_turns[tkey] = [turn, row[2], e.content, None, at, sid, row[1]]
                self.turns[tkey] = owner = skey
                s.turns.append(tkey)
            elif owner is None:  # a legacy turn: linked, and then exactly the fresh row
                self.linked_turns[tkey] = [turn, row[2], e.content, None, at, sid, row[1]]
                self.turns[tkey] = owner = skey
                s.turns.append(tkey)
        elif owner is _MISSING:
            return f"turn {turn} does not exist"
        seq = row[10] + 1
        message = [e.message_id, sid, turn, e.role, e.content, e.metadata or None, at, at,
                   row[1], seq]
        self.new_messages.append((s, message))
        self.message_ids.add(mid)
        s.messages.append(mid)
        if tkey is not None and owner != skey:
            self.cross_refs.setdefault(tkey, []).append(message)
        row[10] = seq
        row[8] += 1
        row[_SESSION_PREVIEW] = e.content
        if at > row[6]:
            row[6] = at
        if at > row[5]:
            row[5] = at
        self._touch(s)
        if turn is not None and e.role == "assistant":
            self._answer(turn, e.content)
        return None

    def _answer(self, turn: uuid.UUID, content: str) -> None:
        tkey = turn.int
        pending = self.new_turns.get(tkey) or self.linked_turns.get(tkey)
        if pending is not None:
            pending[_TURN_ANSWER] = content
        elif tkey in self.turns:
            self.answers[tkey] = (turn, content)

    def _touch(self, s: _Session) -> None:
        if s.flushed and not s.dirty:
            s.dirty = True
            self.dirty_sessions.append(s)

    def _user_registered(self, e: ev.UserRegistered, at: dt.datetime) -> str | None:
        key = e.user_id.int
        if key in self.users:
            return f"duplicate user {e.user_id}"
        if e.email is not None and e.email in self.emails:
            return "duplicate email"
        user = _User([e.user_id, e.email, e.display_name, e.avatar_url, at, at])
        self.users[key] = user
        self.new_users.append(user)
        if e.email is not None:
            self.emails[e.email] = key
        return None

    def _profile_updated(self, e: ev.UserProfileUpdated, at: dt.datetime) -> str | None:
        key = e.user_id.int
        user = self.users.get(key)
        if user is None:
            return None  # UPDATE ... WHERE user_id: no row
        row = user.row
        if e.email is not None and e.email != row[1]:
            if self.emails.get(e.email, key) != key:
                return "duplicate email"
            if row[1] is not None:
                del self.emails[row[1]]
            self.emails[e.email] = key
            row[1] = e.email
        if e.display_name is not None:
            row[2] = e.display_name
        if e.avatar_url is not None:
            row[3] = e.avatar_url
        row[5] = at
        if user.flushed and not user.dirty:
            user.dirty = True
            self.dirty_users.append(user)
        return None

    def _project_created(self, e: ev.ProjectCreated, at: dt.datetime) -> str | None:
        key = e.project_id.int
        if key in self.projects:
            return f"duplicate project {e.project_id}"
        if e.owner_id.int not in self.users:
            return f"user {e.owner_id} does not exist"
        self.projects.add(key)
        self.new_dossier.append([e.project_id, e.title or None, at, at])
        self.links.add((e.owner_id.int, key))
        self.new_links.append([e.owner_id, e.project_id, at])
        return None

    def _project_linked(self, e: ev.ProjectLinked, at: dt.datetime) -> str | None:
        link = (e.user_id.int, e.project_id.int)
        if link in self.links:
            return None  # ON CONFLICT DO NOTHING
        if link[0] not in self.users:
            return f"user {e.user_id} does not exist"
        if link[1] not in self.projects:
            return f"project {e.project_id} does not exist"
        self.links.add(link)
        self.new_links.append([e.user_id, e.project_id, at])
        return None

    def _session_started(self, e: ev.SessionStarted, at: dt.datetime) -> str | None:
        key = e.session_id.int
        if key in self.sessions:
            return f"duplicate session {e.session_id}"
        if e.user_id.int not in self.users:
            return f"user {e.user_id} does not exist"
        if e.project_id.int not in self.projects:
            return f"project {e.project_id} does not exist"
        s = _Session([e.session_id, e.user_id, e.project_id, e.title, at, at, at, True, 0,
                      None, 0])
        self.sessions[key] = s
        self.new_sessions.append(s)
        return None

    def _session_renamed(self, e: ev.SessionRenamed, at: dt.datetime) -> str | None:
        s = self.sessions.get(e.session_id.int)
        if s is not None:
            s.row[3] = e.title
            s.row[5] = at
            self._touch(s)
        return None

    def _session_archived(self, e: ev.SessionArchived, at: dt.datetime) -> str | None:
        s = self.sessions.get(e.session_id.int)
        if s is not None:
            s.row[7] = False
            s.row[5] = at
            self._touch(s)
        return None

    def _session_deleted(self, e: ev.SessionDeleted, _at: dt.datetime) -> str | None:
        s = self.sessions.pop(e.session_id.int, None)
        if s is None:
            return None
        s.alive = False
        for tkey in s.turns:
            del self.turns[tkey]
            self.linked_turns.pop(tkey, None)
            self.answers.pop(tkey, None)
            if self.new_turns.pop(tkey, None) is None:  # the row is in the table
                self.deleted_turns.append(uuid.UUID(int=tkey))
            for message in self.cross_refs.pop(tkey, ()):  # ON DELETE SET NULL
                message[_MESSAGE_TURN] = None
            self.unlinked_messages += self.written_cross_refs.pop(tkey, ())
        self.message_ids.difference_update(s.messages)
        if s.flushed:
            self.deleted_sessions.append(s.row[0])
        return None

    # Writing -------------------------------------------------------------------------------

    def flush(self, conn: Conn, schema: str) -> None:
        """Writes what the chunk changed, in an order the foreign keys accept."""
        def t(table: str) -> sql.Composed:
            return sql.Identifier(schema, table).as_string(conn)  # type: ignore[return-value]

        def run(statement: str, table: str, rows: Sequence[Row]) -> None:
            if rows:
                width = statement.count("%s")
                conn.execute(statement.format(t=t(table)),
                             [[r[i] for r in rows] for i in range(width)])

        if self.unlinked_messages:
            conn.execute(UNLINK_MESSAGES.format(t=t("chat_messages")),
                         (self.unlinked_messages,))
        if self.deleted_turns:
            conn.execute(DELETE_TURNS.format(t=t("turns")), (self.deleted_turns,))
        if self.deleted_sessions:
            conn.execute(DELETE_MESSAGES.format(t=t("chat_messages")), (self.deleted_sessions,))
            conn.execute(DELETE_SESSIONS.format(t=t("sessions")), (self.deleted_sessions,))
        run(UPDATE_USERS, "users", [u.row for u in self.dirty_users])
        copy_rows(conn, schema, "users", [u.row for u in self.new_users])
        copy_rows(conn, schema, "dossier", self.new_dossier)
        copy_rows(conn, schema, "user_projects", self.new_links)
        run(UPDATE_SESSIONS, "sessions",
            [_session_row(s) for s in self.dirty_sessions if s.alive])
        copy_rows(conn, schema, "sessions",
                  [_session_row(s) for s in self.new_sessions if s.alive])
        run(LINK_TURNS, "turns", list(self.linked_turns.values()))
        copy_rows(conn, schema, "turns", self.new_turns.values())
        run(ANSWER_TURNS, "turns", [list(a) for a in self.answers.values()])
        copy_rows(conn, schema, "chat_messages",
                  (m for s, m in self.new_messages if s.alive))
        for user in self.new_users:
            user.flushed = True
        for user in self.dirty_users:
            user.dirty = False
        for s in self.new_sessions:
            s.flushed = True
        for s in self.dirty_sessions:
            s.dirty = False
        for tkey, messages in self.cross_refs.items():
            self.written_cross_refs.setdefault(tkey, []).extend(
                m[0] for m in messages if m[_MESSAGE_TURN] is not None)
        self._reset_pending()


def _session_row(s: _Session) -> Row:
    row = list(s.row)
    if row[_SESSION_PREVIEW] is not None:
        row[_SESSION_PREVIEW] = row[_SESSION_PREVIEW][:PREVIEW_CHARS]
    return row


def copy_rows(conn: Conn, schema: str, table: str, rows: Iterable[Row]) -> int:
    """COPY (binary) rows into schema.table in COLUMNS' order; returns how many."""
    columns = COLUMNS[table]
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(schema, table), sql.SQL(", ").join(sql.Identifier(c) for c, _ in columns))
    n = 0
    cursor = conn.cursor()
    with cursor.copy(statement) as copy:
        copy.set_types([kind for _, kind in columns])
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


# Loading mode ------------------------------------------------------------------------------

SELECT_TABLE_STATE = """
SELECT pg_get_userbyid(c.relowner), c.relforcerowsecurity FROM pg_class c
 WHERE c.oid = %s::regclass
"""
# Indexes that back no constraint (the keys stay: the fold's updates and deletes use them).
SELECT_PLAIN_INDEXES = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
 WHERE i.indrelid = %s::regclass
   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
 ORDER BY 1
"""
SELECT_FOREIGN_KEYS = """
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname
"""


@dataclass
class LoadingMode:
    """How the rebuild tables are loaded (see the module docstring): row level security not
    forced, user triggers disabled, foreign keys and the indexes that back no constraint
    dropped. Checked row by row, the foreign keys cost more than the whole COPY; added back
    at the end, each is validated by one join. An index built at the end is one sort
    instead of a million random insertions. `leave` restores everything exactly (same
    names and definitions), in the caller's transaction."""

    schema: str
    owner: str
    forced: list[str] = field(default_factory=list)
    foreign_keys: list[tuple[str, str, str]] = field(default_factory=list)
    indexes: list[tuple[str, str]] = field(default_factory=list)  # (qualified name, definition)

    @classmethod
    def of(cls, conn: Conn, schema: str, tables: Sequence[str]) -> LoadingMode:
        states = {t: conn.execute(SELECT_TABLE_STATE, (f"{schema}.{t}",)).fetchone()
                  for t in tables}
        owners = {str(s[0]) for s in states.values() if s}
        if len(owners) != 1:
            raise BulkBuildRefused(f"the read-model tables have several owners: {owners}")
        mode = cls(schema, owners.pop(), [t for t, s in states.items() if s and s[1]])
        for t in tables:
            mode.foreign_keys += [(t, name, definition) for name, definition in conn.execute(
                SELECT_FOREIGN_KEYS, (f"{schema}.{t}",))]
            mode.indexes += conn.execute(SELECT_PLAIN_INDEXES, (f"{schema}.{t}",)).fetchall()
        return mode

    def as_owner(self, conn: Conn) -> None:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(self.owner)))

    def enter(self, conn: Conn, tables: Sequence[str]) -> None:
        """Leaves the caller's transaction as the tables' owner."""
        # as the caller, who made the schema: an index needs CREATE on it
        for name, _ in self.indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))
        self.as_owner(conn)
        for table, name, _ in self.foreign_keys:
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(self.schema, table), sql.Identifier(name)))
        for table in tables:
            conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(
                sql.Identifier(self.schema, table)))
        for table in self.forced:
            conn.execute(sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(
                sql.Identifier(self.schema, table)))

    def leave(self, conn: Conn, tables: Sequence[str]) -> None:
        for _, definition in self.indexes:
            conn.execute(sql.SQL(definition))  # type: ignore[arg-type]
        self.as_owner(conn)
        for table in tables:
            conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(
                sql.Identifier(self.schema, table)))
        for table in self.forced:
            conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(
                sql.Identifier(self.schema, table)))
        for table, name, definition in self.foreign_keys:
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(self.schema, table), sql.Identifier(name), sql.SQL(definition)))


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The fold allocates millions of small containers and frees few: the cyclic garbage
    collector would walk them all again and again (it made decoding 4x slower). The fold
    creates no reference cycles, so reference counting frees everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build(conn: Conn, schema: str, *,
          park: Callable[[Conn, int, str], None],
          save_checkpoint: Callable[[Conn, Checkpoint], None],
          start: Checkpoint | None = None,
          progress: Callable[[int], None] | None = None, chunk: int = CHUNK) -> int:
    """Builds the read model into `schema`'s empty tables from every event after `start`,
    chunk by chunk (one transaction each: the rows, parked events, `save_checkpoint`).
    The caller's connection is in autocommit mode. Returns the events read."""
    with _no_cycle_collection():
        return _build(conn, schema, park, save_checkpoint, start or Checkpoint(), progress,
                      chunk)


def _build(conn: Conn, schema: str, park: Callable[[Conn, int, str], None],
           save_checkpoint: Callable[[Conn, Checkpoint], None], at: Checkpoint,
           progress: Callable[[int], None] | None, chunk: int) -> int:
    mode = LoadingMode.of(conn, schema, TABLES)
    set_json_dumps(_encode_json, context=conn)
    fold = ReadModelFold()
    with conn.transaction():
        mode.enter(conn, TABLES)
        fold.load_existing(conn, schema)  # as the owner, now that RLS is not forced
    total = 0
    spent = {"read": 0.0, "fold": 0.0, "write": 0.0}
    while True:
        with conn.transaction():
            clock = time.perf_counter()
            horizon = conn.execute(READ_HORIZON).fetchone()
            rows = conn.execute(READ_EVENTS, {"txid": str(at.txid), "position": at.position,
                                              "horizon": horizon[0] if horizon else "0",
                                              "limit": chunk}).fetchall()
            spent["read"] += time.perf_counter() - clock
            if not rows:
                break
            clock = time.perf_counter()
            failed: list[tuple[int, str]] = []
            decode, apply = ev.decode_event, fold.apply
            for position, _txid, data, recorded_at in rows:
                why = apply(decode(data), recorded_at)
                if why is not None:
                    failed.append((position, why))
            spent["fold"] += time.perf_counter() - clock
            clock = time.perf_counter()
            mode.as_owner(conn)
            fold.flush(conn, schema)
            conn.execute("SET LOCAL ROLE NONE")
            for position, why in failed:
                park(conn, position, why)
            at = Checkpoint(rows[-1][1], rows[-1][0])
            save_checkpoint(conn, at)
        spent["write"] += time.perf_counter() - clock  # with the commit
        total += len(rows)
        if progress:
            progress(len(rows))
    clock = time.perf_counter()
    with conn.transaction():
        mode.leave(conn, TABLES)
    spent["constraints"] = time.perf_counter() - clock
    log.info("replay_bulk_build", events=total, chunk=chunk,
             **{f"{k}_seconds": round(v, 3) for k, v in spent.items()})
    return total

