"""Projects (issue 17): create, rename, and move a session into another of the caller's
projects. A project is the caller's when its stream is: another user's is 404."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from services.command.auth import Caller
from services.command.sessions import clean_title
from services.command.store import append, check_storable, in_transaction, owned_stream_version
from services.core.events import (
    ProjectCreated,
    ProjectRenamed,
    SessionMoved,
    project_stream,
    session_stream,
)
from services.core.eventstore import StreamAppend
from services.core.wakeup import Wake
from services.http.errors import ApiError

log = structlog.get_logger("command.projects")

MAX_DESCRIPTION_CHARS = 2000


class NewProject(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    title: str
    description: str | None = None


class ProjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    project_id: uuid.UUID
    title: str
    description: str | None
    position: int  # pass as X-Min-Position to read it back


class MoveSession(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    project_id: uuid.UUID


class SessionMovedTo(msgspec.Struct, frozen=True, kw_only=True):
    session_id: uuid.UUID
    project_id: uuid.UUID
    position: int


def clean_description(description: str | None) -> str | None:
    if description is None:
        return None
    # the length as sent, as the document's maxLength counts it; stored trimmed
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise ApiError("invalid_description",
                       f"description must be at most {MAX_DESCRIPTION_CHARS} characters")
    description = description.strip()
    check_storable(description, "description")
    return description


async def create_project(
    pool: AsyncConnectionPool[Any], wake: Wake, caller: Caller, body: NewProject,
) -> ProjectInfo:
    title, description = clean_title(body.title), clean_description(body.description)
    project_id = uuid.uuid4()
    event = ProjectCreated(project_id=project_id, owner_id=caller.user_id, title=title,
                           description=description)

    async def work(conn: psycopg.AsyncConnection[Any]) -> list[int]:
        return await append(conn, [StreamAppend(
            stream_id=project_stream(project_id), expected_version=0, events=[event],
            stream_type="project", owner_id=caller.user_id)], caller.event_metadata())

    positions = await in_transaction(pool, work)
    log.info("project_created", project_id=str(project_id))
    await wake()
    return ProjectInfo(project_id=project_id, title=title, description=description,
                       position=positions[-1])


async def rename_project(
    pool: AsyncConnectionPool[Any], wake: Wake, caller: Caller, project_id: uuid.UUID,
    body: NewProject,
) -> ProjectInfo:
    title, description = clean_title(body.title), clean_description(body.description)
    stream_id = project_stream(project_id)
    event = ProjectRenamed(project_id=project_id, title=title, description=description)

    async def work(conn: psycopg.AsyncConnection[Any]) -> list[int]:
        version = await owned_stream_version(conn, stream_id, "project", caller.user_id, lock=True)
        return await append(conn, [StreamAppend(
            stream_id=stream_id, expected_version=version, events=[event])],
            caller.event_metadata())

    positions = await in_transaction(pool, work)
    log.info("project_renamed", project_id=str(project_id))
    await wake()
    return ProjectInfo(project_id=project_id, title=title, description=description,
                       position=positions[-1])


async def move_session(
    pool: AsyncConnectionPool[Any], wake: Wake, caller: Caller, session_id: uuid.UUID,
    body: MoveSession,
) -> SessionMovedTo:
    stream_id = session_stream(session_id)
    event = SessionMoved(session_id=session_id, project_id=body.project_id)

    async def work(conn: psycopg.AsyncConnection[Any]) -> list[int]:
        version = await owned_stream_version(conn, stream_id, "session", caller.user_id, lock=True)
        # the target must be one of the caller's own projects
        await owned_stream_version(conn, project_stream(body.project_id), "project",
                                   caller.user_id, lock=False)
        return await append(conn, [StreamAppend(
            stream_id=stream_id, expected_version=version, events=[event])],
            caller.event_metadata())

    positions = await in_transaction(pool, work)
    log.info("session_moved", session_id=str(session_id), project_id=str(body.project_id))
    await wake()
    return SessionMovedTo(session_id=session_id, project_id=body.project_id,
                          position=positions[-1])
