"""The read-model projector: events → users, sessions, chat_messages, user_projects,
dossier and the legacy turns.

It is a follower of the event store (workers/follower.py): the checkpoint is written in the
same transaction as the rows (exactly-once effect), so wake-ups are only hints: lost or
duplicated ones never lose or double anything. One projector applies the projection at a
time (the checkpoint row is locked).

Messages are buffered and written with one INSERT per batch, so the statement-level trigger
on chat_messages updates each session once per batch, not once per row.

Poison events: when a batch fails, it is re-applied one event at a time, each in a
savepoint. The failing event's attempts are counted in parked_events; the checkpoint stops
just before it and the next run retries. After projector_max_attempts it is parked (left
in parked_events with parked = true, logged with its position) and the projection goes on.
Operators list parked events with `SELECT * FROM parked_events WHERE parked`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
import structlog

from services.core import events as ev
from services.core.eventstore import RecordedEvent
from workers.follower import Follower, Handler
from workers.follower import catch_up as follow

PROJECTION = "read_model"

log = structlog.get_logger("projector")
_json = msgspec.json.Encoder()

COUNT_FAILURE = """
INSERT INTO parked_events AS p (projection, position, error, parked)
VALUES (%(projection)s, %(position)s, %(error)s, %(max_attempts)s <= 1)
ON CONFLICT (projection, position) DO UPDATE
   SET attempts = p.attempts + 1, error = EXCLUDED.error,
       parked = p.attempts + 1 >= %(max_attempts)s, updated_at = clock_timestamp()
RETURNING parked
"""

INSERT_USER = """
INSERT INTO users (user_id, email, display_name, avatar_url, created_at, updated_at)
VALUES (%s, %s, %s, %s, %s, %s)
"""
UPDATE_USER = """
UPDATE users SET email = coalesce(%s, email), display_name = coalesce(%s, display_name),
       avatar_url = coalesce(%s, avatar_url), updated_at = %s
 WHERE user_id = %s
"""
INSERT_PROJECT = """
INSERT INTO dossier (project_id, title, created_at, updated_at) VALUES (%s, %s, %s, %s)
"""
LINK_PROJECT = """
INSERT INTO user_projects (user_id, project_id, created_at) VALUES (%s, %s, %s)
ON CONFLICT DO NOTHING
"""
INSERT_SESSION = """
INSERT INTO sessions (session_id, user_id, project_id, title, created_at, updated_at,
                      last_message_at)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""
RENAME_SESSION = "UPDATE sessions SET title = %s, updated_at = %s WHERE session_id = %s"
ARCHIVE_SESSION = "UPDATE sessions SET is_active = false, updated_at = %s WHERE session_id = %s"
DELETE_SESSION_TURNS = "DELETE FROM turns WHERE session_id = %s"
DELETE_SESSION = "DELETE FROM sessions WHERE session_id = %s"

# A legacy turn per user message; its project and owner come from the session. A turn that
# already exists without a session is a legacy one being imported (services/core/legacy_import.py
# posts its message with the turn's own id): it is linked to the session and left exactly
# as a fresh insert would be, so a replay (which inserts it fresh) gives the same row.
INSERT_TURNS = """
INSERT INTO turns (turn_id, project_id, user_text, created_at, session_id, user_id)
SELECT t.turn_id, s.project_id, t.user_text, t.created_at, s.session_id, s.user_id
  FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::timestamptz[])
       AS t(turn_id, session_id, user_text, created_at)
  JOIN sessions s USING (session_id)
ON CONFLICT (turn_id) DO UPDATE
   SET project_id = EXCLUDED.project_id, user_text = EXCLUDED.user_text,
       assistant_text = NULL, created_at = EXCLUDED.created_at,
       session_id = EXCLUDED.session_id, user_id = EXCLUDED.user_id
 WHERE turns.session_id IS NULL
"""
# The per-session sequence continues from sessions.last_seq (kept by the trigger).
INSERT_MESSAGES = """
INSERT INTO chat_messages (message_id, session_id, turn_id, role, content, metadata,
                           created_at, updated_at, user_id, seq)
SELECT m.message_id, m.session_id, m.turn_id, m.role, m.content, m.metadata,
       m.created_at, m.created_at, s.user_id,
       s.last_seq + row_number() OVER (PARTITION BY m.session_id ORDER BY m.ord)
  FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::text[], %s::text[], %s::jsonb[],
              %s::timestamptz[]) WITH ORDINALITY
       AS m(message_id, session_id, turn_id, role, content, metadata, created_at, ord)
  JOIN sessions s USING (session_id)
"""
# The assistant's answer completes the legacy turn.
ANSWER_TURNS = """
UPDATE turns t SET assistant_text = a.content
  FROM unnest(%s::uuid[], %s::text[]) AS a(turn_id, content)
 WHERE t.turn_id = a.turn_id
"""


@dataclass
class _MessageBuffer:
    """Messages collected across consecutive MessagePosted events, written in bulk."""

    messages: list[tuple[Any, ...]] = field(default_factory=list)
    turns: list[tuple[Any, ...]] = field(default_factory=list)
    answers: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, recorded: RecordedEvent, e: ev.MessagePosted) -> None:
        created = recorded.recorded_at
        if e.role == "user" and e.turn_id is not None:
            self.turns.append((e.turn_id, e.session_id, e.content, created))
        elif e.role == "assistant" and e.turn_id is not None:
            self.answers.append((e.turn_id, e.content))
        metadata = _json.encode(e.metadata).decode() if e.metadata else None
        self.messages.append(
            (e.message_id, e.session_id, e.turn_id, e.role, e.content, metadata, created)
        )

    def flush(self, conn: psycopg.Connection[Any]) -> None:
        if self.turns:
            conn.execute(INSERT_TURNS, _columns(self.turns, 4))
        if self.messages:
            conn.execute(INSERT_MESSAGES, _columns(self.messages, 7))
        if self.answers:
            conn.execute(ANSWER_TURNS, _columns(self.answers, 2))
        self.messages.clear()
        self.turns.clear()
        self.answers.clear()


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)] if rows else [[]] * width


def _apply(conn: psycopg.Connection[Any], recorded: RecordedEvent, buffer: _MessageBuffer) -> None:
    e = recorded.event
    at = recorded.recorded_at
    if isinstance(e, ev.MessagePosted):
        buffer.add(recorded, e)
        return
    buffer.flush(conn)  # everything else may depend on (or remove) buffered rows
    match e:
        case ev.UserRegistered():
            conn.execute(INSERT_USER, (e.user_id, e.email, e.display_name, e.avatar_url, at, at))
        case ev.UserProfileUpdated():
            conn.execute(UPDATE_USER, (e.email, e.display_name, e.avatar_url, at, e.user_id))
        case ev.ProjectCreated():
            conn.execute(INSERT_PROJECT, (e.project_id, e.title or None, at, at))
            conn.execute(LINK_PROJECT, (e.owner_id, e.project_id, at))
        case ev.ProjectLinked():
            conn.execute(LINK_PROJECT, (e.user_id, e.project_id, at))
        case ev.SessionStarted():
            conn.execute(INSERT_SESSION, (e.session_id, e.user_id, e.project_id, e.title,
                                          at, at, at))
        case ev.SessionRenamed():
            conn.execute(RENAME_SESSION, (e.title, at, e.session_id))
        case ev.SessionArchived():
            conn.execute(ARCHIVE_SESSION, (at, e.session_id))
        case ev.SessionDeleted():
            conn.execute(DELETE_SESSION_TURNS, (e.session_id,))
            conn.execute(DELETE_SESSION, (e.session_id,))
        case ev.AssistantReplyFailed():
            pass  # the live stream told the client; the read model keeps no failed replies


def apply_events(conn: psycopg.Connection[Any], batch: list[RecordedEvent]) -> None:
    """Writes the read-model rows for these events in the caller's transaction, through
    unqualified table names (replay points search_path at the tables it builds). Raises
    psycopg.Error when an event cannot be applied."""
    buffer = _MessageBuffer()
    for recorded in batch:
        _apply(conn, recorded, buffer)
    buffer.flush(conn)


def _handle(max_attempts: int) -> Handler:
    def handle(conn: psycopg.Connection[Any], batch: list[RecordedEvent]) -> list[RecordedEvent]:
        try:
            # the fast path, the whole batch in one savepoint; pipeline mode sends the
            # statements without waiting for each answer
            with conn.pipeline(), conn.transaction():
                apply_events(conn, batch)
            return batch
        except psycopg.Error:
            return _apply_carefully(conn, batch, max_attempts)

    return handle


def _projected(done: list[RecordedEvent]) -> None:
    """After commit: a line per event, carrying the ids of the request that caused it."""
    for recorded in done:
        log.info("event_projected", position=recorded.position, type=recorded.type,
                 stream_id=recorded.stream_id,
                 request_id=recorded.metadata.get("request_id"),
                 correlation_id=recorded.metadata.get("correlation_id"))


def read_model_follower(*, batch_size: int = 500, max_attempts: int = 3) -> Follower:
    """The projector as a follower of the event store (workers/follower.py)."""
    return Follower(PROJECTION, _handle(max_attempts), batch_size, committed=_projected)


def _apply_carefully(
    conn: psycopg.Connection[Any], batch: list[RecordedEvent], max_attempts: int
) -> list[RecordedEvent]:
    """One event per savepoint; returns the events the checkpoint may move past."""
    for i, recorded in enumerate(batch):
        try:
            with conn.transaction():
                apply_events(conn, [recorded])
        except psycopg.Error as exc:
            parked = conn.execute(COUNT_FAILURE, {
                "projection": PROJECTION, "position": recorded.position,
                "error": f"{type(exc).__name__}: {exc}", "max_attempts": max_attempts,
            }).fetchone()
            if parked and parked[0]:
                log.error("event_parked", projection=PROJECTION, position=recorded.position,
                          type=recorded.type, error=str(exc))
                continue
            log.warning("event_failed", projection=PROJECTION, position=recorded.position,
                        type=recorded.type, error=str(exc))
            return batch[:i]
    return batch


def catch_up(conn: psycopg.Connection[Any], *, batch_size: int = 500,
             max_attempts: int = 3) -> int:
    """Projects until there is nothing more to read (or another projector has the lock).

    Returns how many events were applied.
    """
    return follow(conn, read_model_follower(batch_size=batch_size, max_attempts=max_attempts))
