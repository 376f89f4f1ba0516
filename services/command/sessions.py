"""Renaming, archiving and deleting sessions. Deleting erases what the user wrote from the
stream."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from services.command.auth import Caller
from services.command.store import (
    append,
    check_storable,
    in_transaction,
    owned_stream_version,
)
from services.core.events import (
    SessionArchived,
    SessionDeleted,
    SessionRenamed,
    SessionUnarchived,
    session_stream,
)
from services.core.eventstore import MARK_STREAM_DELETED, StreamAppend
from services.core.wakeup import Wake
from services.http.errors import ApiError

log = structlog.get_logger("command.sessions")

# Redacts content and titles of the stream's events before the given version (0006_purge.sql).
PURGE_STREAM_CONTENT = "SELECT purge_stream_content(%s, %s)"

MAX_TITLE_CHARS = 200


class RenameSession(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    title: str


class SessionTitle(msgspec.Struct, frozen=True, kw_only=True):
    session_id: uuid.UUID
    title: str


def clean_title(title: str) -> str:
    # the length as sent, as the document's maxLength counts it; stored trimmed
    if len(title) > MAX_TITLE_CHARS or not title.strip():
        raise ApiError("invalid_title",
                       f"title must be at most {MAX_TITLE_CHARS} characters and not blank")
    title = title.strip()
    check_storable(title, "title")
    return title


async def rename_session(
    pool: AsyncConnectionPool[Any],
    wake: Wake,
    caller: Caller,
    session_id: uuid.UUID,
    body: RenameSession,
) -> SessionTitle:
    title = clean_title(body.title)
    stream_id = session_stream(session_id)

    async def work(conn: psycopg.AsyncConnection[Any]) -> None:
        version = await owned_stream_version(conn, stream_id, "session", caller.user_id, lock=True)
        event = SessionRenamed(session_id=session_id, title=title)
        await append(
            conn,
            [StreamAppend(stream_id=stream_id, expected_version=version, events=[event])],
            caller.event_metadata(),
        )

    await in_transaction(pool, work)
    log.info("session_renamed", session_id=str(session_id))
    await wake()
    return SessionTitle(session_id=session_id, title=title)


async def delete_session(
    pool: AsyncConnectionPool[Any],
    wake: Wake,
    caller: Caller,
    session_id: uuid.UUID,
) -> None:
    stream_id = session_stream(session_id)

    async def work(conn: psycopg.AsyncConnection[Any]) -> None:
        version = await owned_stream_version(conn, stream_id, "session", caller.user_id, lock=True)
        await append(
            conn,
            [StreamAppend(
                stream_id=stream_id,
                expected_version=version,
                events=[SessionDeleted(session_id=session_id)],
            )],
            caller.event_metadata(),
        )
        # SessionDeleted is version + 1: everything before it is redacted, in this same
        # transaction, so no reader ever sees the deletion without the purge.
        await conn.execute(PURGE_STREAM_CONTENT, (stream_id, version + 1))
        await conn.execute(MARK_STREAM_DELETED, (stream_id,))

    await in_transaction(pool, work)
    log.info("session_deleted", session_id=str(session_id))
    await wake()


async def set_archived(
    pool: AsyncConnectionPool[Any],
    wake: Wake,
    caller: Caller,
    session_id: uuid.UUID,
    archived: bool,
) -> None:
    """Archives (hides from the default list) or unarchives a session; its messages stay.
    Appended every time, so the last call wins whatever the projection has reached."""
    stream_id = session_stream(session_id)
    event = (SessionArchived if archived else SessionUnarchived)(session_id=session_id)

    async def work(conn: psycopg.AsyncConnection[Any]) -> None:
        version = await owned_stream_version(conn, stream_id, "session", caller.user_id, lock=True)
        await append(
            conn,
            [StreamAppend(stream_id=stream_id, expected_version=version, events=[event])],
            caller.event_metadata(),
        )

    await in_transaction(pool, work)
    log.info("session_archived" if archived else "session_unarchived",
             session_id=str(session_id))
    await wake()
