"""`chatctl import-legacy`: the seed's phase 4. Legacy conversations become events.

What is legacy: turns that belong to no session (`session_id IS NULL`), written by the old
system (or the legacy POST /chat) straight into dossier and turns. Everything goes through
the event store, so the read model, replays and the analytics stream all see the imported
conversations like any other.

The mapping, per dossier that has legacy turns:

- Owner. The user already linked to the project (user_projects, earliest link) when there
  is one; else an account made for it: UserRegistered(user_id = uuid5(owner:<project>),
  email NULL, display_name 'Legacy owner of <title>') on its own user stream.
- Project. The dossier row stays as it is (with its description and dates) and is never
  re-created: ProjectLinked(owner, project) on the owner's stream links it. No
  `project-<id>` stream is made, so replay keeps treating the dossier row as legacy data
  and copies it across (workers/replay.py).
- Session. One per project: SessionStarted(session_id = uuid5(session:<project>), owner,
  project, title = the dossier's title), holding the project's turns in created_at order.
- Messages. Per turn: MessagePosted(role=user, content=user_text, turn_id=the turn's own
  id) and, when the turn has an answer, MessagePosted(role=assistant, reply_to the user
  message). Message ids are uuid5(user:<turn>) and uuid5(assistant:<turn>); message
  metadata keeps the turn's original time (`legacy_created_at`), as the read model dates
  rows by when their events were recorded. The projector links the existing turn row to
  the session instead of inserting it (the ON CONFLICT in its INSERT_TURNS), so a later
  session delete removes the legacy turn's text too.

Idempotent: the ids are deterministic and a turn is imported only if its session stream
holds no message for it yet, read from the event store (not the read model, which may lag);
appends check stream versions, so two concurrent imports cannot both append. A dossier whose
imported session was deleted by its owner is skipped (its stream refuses appends).
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, TextIO

import psycopg
import structlog

from services.core import events as ev
from services.core.eventstore import StreamAppend, append_sync, stream_info_sync

log = structlog.get_logger("legacy_import")

# Fixed forever: the ids derived from it are what makes a re-run find its earlier work.
NAMESPACE = uuid.UUID("5b0d9a2e-6c1f-4f57-9a51-0c7d3e1e2a64")
SOURCE = "legacy-import"

SELECT_PROJECTS = """
SELECT d.project_id, d.title FROM dossier d
 WHERE EXISTS (SELECT 1 FROM turns t WHERE t.project_id = d.project_id AND t.session_id IS NULL)
 ORDER BY d.created_at, d.project_id
"""
SELECT_TURNS = """
SELECT turn_id, user_text, assistant_text, created_at FROM turns
 WHERE project_id = %s AND session_id IS NULL
 ORDER BY created_at, turn_id
"""
SELECT_LINKED_USER = """
SELECT user_id FROM user_projects WHERE project_id = %s ORDER BY created_at, user_id LIMIT 1
"""
SELECT_IMPORTED_TURNS = """
SELECT DISTINCT (data->>'turn_id')::uuid FROM events
 WHERE stream_id = %s AND type = 'MessagePosted' AND data ? 'turn_id'
"""


def owner_id(project_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"owner:{project_id}")


def session_id(project_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"session:{project_id}")


def message_id(turn_id: uuid.UUID, role: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{role}:{turn_id}")


@dataclass
class ImportSummary:
    projects: int = 0
    owners_created: int = 0
    sessions_created: int = 0
    turns_imported: int = 0
    messages: int = 0
    skipped_deleted: int = 0

    def __str__(self) -> str:
        return (f"{self.projects} project(s) imported: {self.turns_imported} turn(s)"
                f" imported as {self.messages} message(s), {self.sessions_created} session(s)"
                f" and {self.owners_created} owner account(s) created,"
                f" {self.skipped_deleted} project(s) skipped (session deleted)")


def _owner(conn: psycopg.Connection[Any], project: uuid.UUID, title: str | None,
           summary: ImportSummary) -> tuple[uuid.UUID, list[StreamAppend]]:
    """The project's owner, and the appends that create and link one when needed."""
    made = owner_id(project)
    if stream_info_sync(conn, ev.user_stream(made)) is not None:
        return made, []
    linked = conn.execute(SELECT_LINKED_USER, (project,)).fetchone()
    if linked is not None:
        return linked[0], []
    summary.owners_created += 1
    return made, [StreamAppend(
        stream_id=ev.user_stream(made), expected_version=0, stream_type="user", owner_id=made,
        events=[
            ev.UserRegistered(user_id=made, display_name=f"Legacy owner of {title or project}"),
            ev.ProjectLinked(user_id=made, project_id=project),
        ])]


def _messages(session: uuid.UUID, owner: uuid.UUID,
              turns: list[tuple[Any, ...]]) -> list[ev.Event]:
    out: list[ev.Event] = []
    for turn_id, user_text, assistant_text, created_at in turns:
        meta = {"imported_from": "turns", "legacy_created_at": created_at.isoformat()}
        asked = message_id(turn_id, "user")
        out.append(ev.MessagePosted(session_id=session, message_id=asked, user_id=owner,
                                    role="user", content=user_text, turn_id=turn_id,
                                    metadata=meta))
        if assistant_text is not None:
            out.append(ev.MessagePosted(
                session_id=session, message_id=message_id(turn_id, "assistant"),
                user_id=owner, role="assistant", content=assistant_text, turn_id=turn_id,
                reply_to=asked, metadata=meta))
    return out


def import_project(conn: psycopg.Connection[Any], project: uuid.UUID, title: str | None,
                   summary: ImportSummary, run_id: str) -> None:
    """Imports one project's legacy turns in one transaction."""
    with conn.transaction():
        session = session_id(project)
        stream = ev.session_stream(session)
        info = stream_info_sync(conn, stream)
        if info is not None and info.deleted:
            summary.skipped_deleted += 1
            return
        done = {r[0] for r in conn.execute(SELECT_IMPORTED_TURNS, (stream,))}
        turns = [t for t in conn.execute(SELECT_TURNS, (project,)) if t[0] not in done]
        if not turns:
            return
        owner, appends = (info.owner_id, []) if info and info.owner_id else _owner(
            conn, project, title, summary)
        events = _messages(session, owner, turns)
        if info is None:
            summary.sessions_created += 1
            events.insert(0, ev.SessionStarted(session_id=session, user_id=owner,
                                               project_id=project, title=title))
        appends.append(StreamAppend(
            stream_id=stream, expected_version=info.version if info else 0,
            stream_type="session", owner_id=owner, events=events))
        append_sync(conn, appends, {"correlation_id": run_id, "source": SOURCE})
        summary.projects += 1
        summary.turns_imported += len(turns)
        summary.messages += sum(isinstance(e, ev.MessagePosted) for e in events)


def import_legacy(database_url: str, out: TextIO | None = None) -> ImportSummary:
    """Imports every legacy turn not imported yet; progress on `out` (stderr)."""
    out = out or sys.stderr
    summary = ImportSummary()
    run_id = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as conn:
        projects = conn.execute(SELECT_PROJECTS).fetchall()
        shown = time.monotonic()
        for i, (project, title) in enumerate(projects, 1):
            # a ConcurrencyError (another import, or the owner, appended meanwhile) stops the
            # run; what was imported stays, and a re-run goes on from there
            import_project(conn, project, title, summary, run_id)
            if time.monotonic() - shown > 0.5 or i == len(projects):
                shown = time.monotonic()
                out.write(f"import-legacy: {i}/{len(projects)} projects,"
                          f" {summary.turns_imported} turns\n")
                out.flush()
    log.info("legacy_import_finished", run_id=run_id, **vars(summary))
    return summary
