"""POST /chat: the legacy endpoint, kept working for clients written before sessions.

It takes what the old endpoint took, `{"text", "project_id"?}`, with no session and no user
header, and answers with the streamed reply. Each project has one legacy conversation: the
session the legacy import (services/core/legacy_import.py) makes for it, with the same
deterministic ids, so legacy posts and imported turns land in one place:

- no project_id: a new project, owned by a new legacy owner account;
- a project whose legacy session exists (imported or posted to before): that session;
- a project created through the new API: its legacy session is started, owned by the
  project's owner;
- a legacy dossier row no event knows yet: its turns are imported first (the import of
  that one project), then as above;
- anything else: 404.

Who may post where (issue 15: a project id used to be a capability for anyone):
- without credentials, only into a project still owned by its legacy owner (the account
  made for it, uuid5(owner:<project>)) and linked to no other user; a project created
  through the new API, or whose legacy conversation belongs to a real user, is 404;
- with credentials (X-User-ID, or the token's user), only into a project the caller owns
  or is linked to (ProjectLinked on the caller's stream); anything else is 404.
New projects (no project_id) are limited per client IP (RATE_LIMIT_LEGACY_NEW_PROJECT_PER_IP,
services/command/controllers.py). LEGACY_CHAT_ENABLED=false turns the route off (410).

Every user message still becomes a legacy `turns` row (the projector writes one per user
message, and fills in the assistant's text when the reply is stored).
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from services.command.auth import Caller
from services.command.chat import ChatAccepted, accepted_as, clean_text, message_posted
from services.command.store import in_transaction
from services.core import events as ev
from services.core import legacy_import
from services.core.eventstore import StreamAppend, append, stream_info
from services.core.settings import Settings
from services.http.context import RequestIds
from services.http.errors import ApiError

LEGACY_DOSSIER_EXISTS = "SELECT title FROM dossier WHERE project_id = %s"
# Is the project linked to a user other than `owner` (events_project_linked_idx, 0036)?
LINKED_TO_ANOTHER = """
SELECT EXISTS (SELECT 1 FROM events
                WHERE type = 'ProjectLinked' AND data->>'project_id' = %(project)s
                  AND data->>'user_id' <> %(owner)s)
"""
# Is the project linked to this user (on the user's own stream)?
LINKED_TO_CALLER = """
SELECT EXISTS (SELECT 1 FROM events
                WHERE stream_id = %(user_stream)s AND type = 'ProjectLinked'
                  AND data->>'project_id' = %(project)s)
"""


class LegacyChat(msgspec.Struct, frozen=True, kw_only=True):
    """Unknown fields are ignored here, unlike the new API: old clients send what they
    always sent."""

    text: str
    project_id: uuid.UUID | None = None


async def post_legacy_chat(
    pool: AsyncConnectionPool[Any], settings: Settings, ids: RequestIds, body: LegacyChat,
    caller: uuid.UUID | None = None,
) -> ChatAccepted:
    """`caller`: the verified user when the request carried credentials, else None."""
    text = clean_text(body.text, settings.max_message_chars)
    project = body.project_id
    if project is not None:
        await _import_if_legacy(pool, settings, project)

    async def work(conn: psycopg.AsyncConnection[Any]) -> ChatAccepted:
        if project is None:
            return await _new_project(conn, ids, text)
        return await _post_to_project(conn, ids, project, text, caller)

    return await in_transaction(pool, work)


async def _import_if_legacy(
    pool: AsyncConnectionPool[Any], settings: Settings, project: uuid.UUID
) -> None:
    """A dossier no event knows yet: import its turns first, so they come before this one."""
    async with pool.connection() as conn:
        known = await stream_info(conn, ev.session_stream(legacy_import.session_id(project)))
        if known is not None or await stream_info(conn, ev.project_stream(project)):
            return
        cur = await conn.execute(LEGACY_DOSSIER_EXISTS, (project,))
        row = await cur.fetchone()
    if row is None:
        raise ApiError("project_not_found", "project not found")

    def import_one() -> None:
        with psycopg.connect(settings.database_url, autocommit=True) as sync_conn:
            legacy_import.import_project(sync_conn, project, row[0],
                                         legacy_import.ImportSummary(), "legacy-chat")

    await anyio.to_thread.run_sync(import_one)


async def _new_project(
    conn: psycopg.AsyncConnection[Any], ids: RequestIds, text: str
) -> ChatAccepted:
    project = uuid.uuid4()
    owner = legacy_import.owner_id(project)
    caller = Caller(owner, ids)
    registered = StreamAppend(
        stream_id=ev.user_stream(owner), expected_version=0, stream_type="user",
        owner_id=owner,
        events=[ev.UserRegistered(user_id=owner, display_name="Legacy owner")],
    )
    created = StreamAppend(
        stream_id=ev.project_stream(project), expected_version=0, stream_type="project",
        owner_id=owner, events=[ev.ProjectCreated(project_id=project, owner_id=owner)],
    )
    return await _start(conn, caller, project, text, [registered, created])


async def _may_post(conn: psycopg.AsyncConnection[Any], project: uuid.UUID,
                    owner: uuid.UUID, caller: uuid.UUID | None) -> None:
    """404 unless this caller (None: anonymous) may post into the project (module doc)."""
    if caller is None:
        allowed = owner == legacy_import.owner_id(project)
        if allowed:
            cur = await conn.execute(LINKED_TO_ANOTHER, {"project": str(project),
                                                         "owner": str(owner)})
            row = await cur.fetchone()
            allowed = not (row and row[0])
    else:
        allowed = owner == caller
        if not allowed:
            cur = await conn.execute(LINKED_TO_CALLER, {"user_stream": ev.user_stream(caller),
                                                        "project": str(project)})
            row = await cur.fetchone()
            allowed = bool(row and row[0])
    if not allowed:
        raise ApiError("project_not_found", "project not found")


async def _post_to_project(
    conn: psycopg.AsyncConnection[Any], ids: RequestIds, project: uuid.UUID, text: str,
    caller: uuid.UUID | None,
) -> ChatAccepted:
    session = legacy_import.session_id(project)
    stream = ev.session_stream(session)
    info = await stream_info(conn, stream)
    if info is not None:
        if info.deleted or info.owner_id is None:
            raise ApiError("project_not_found", "project not found")
        await _may_post(conn, project, info.owner_id, caller)
        message = message_posted(Caller(info.owner_id, ids), session, text)
        positions = await append(
            conn, [StreamAppend(stream_id=stream, expected_version=info.version,
                                events=[message])],
            Caller(info.owner_id, ids).event_metadata())
        return accepted_as(message, project, False, positions)
    project_info = await stream_info(conn, ev.project_stream(project))
    if project_info is None or project_info.owner_id is None:
        raise ApiError("project_not_found", "project not found")
    await _may_post(conn, project, project_info.owner_id, caller)
    return await _start(conn, Caller(project_info.owner_id, ids), project, text, [])


async def _start(
    conn: psycopg.AsyncConnection[Any], caller: Caller, project: uuid.UUID, text: str,
    appends: list[StreamAppend],
) -> ChatAccepted:
    session = legacy_import.session_id(project)
    message = message_posted(caller, session, text)
    started = ev.SessionStarted(session_id=session, user_id=caller.user_id,
                                project_id=project, title="Legacy conversation")
    appends.append(StreamAppend(
        stream_id=ev.session_stream(session), expected_version=0, stream_type="session",
        owner_id=caller.user_id, events=[started, message]))
    positions = await append(conn, appends, caller.event_metadata())
    return accepted_as(message, project, True, positions)
