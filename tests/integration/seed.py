"""Events appended the way the command service appends them, for tests that start below
HTTP (the projector, the assistant, the live stream)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from services.core import events as ev
from services.core.eventstore import StreamAppend, append_sync


def user_message(session_id: uuid.UUID, user_id: uuid.UUID, text: str) -> ev.MessagePosted:
    return ev.MessagePosted(session_id=session_id, message_id=uuid.uuid4(), user_id=user_id,
                            role="user", content=text, turn_id=uuid.uuid4())


def register(conn: psycopg.Connection[Any], user_id: uuid.UUID | None = None,
             email: str | None = None) -> uuid.UUID:
    """UserRegistered on a new user stream."""
    user = user_id or uuid.uuid4()
    with conn.transaction():
        append_sync(conn, [StreamAppend(
            stream_id=ev.user_stream(user), expected_version=0, stream_type="user",
            owner_id=user, events=[ev.UserRegistered(user_id=user, email=email)])])
    return user


def start_session(
    conn: psycopg.Connection[Any], user_id: uuid.UUID, texts: list[str], *,
    project_id: uuid.UUID | None = None, metadata: dict[str, Any] | None = None,
) -> tuple[uuid.UUID, list[ev.MessagePosted]]:
    """SessionStarted and the user's messages on a new session stream; with no project_id,
    ProjectCreated on a new project stream in the same transaction."""
    session = uuid.uuid4()
    messages = [user_message(session, user_id, t) for t in texts]
    appends = []
    if project_id is None:
        project_id = uuid.uuid4()
        appends.append(StreamAppend(
            stream_id=ev.project_stream(project_id), expected_version=0,
            stream_type="project", owner_id=user_id,
            events=[ev.ProjectCreated(project_id=project_id, owner_id=user_id)]))
    appends.append(StreamAppend(
        stream_id=ev.session_stream(session), expected_version=0, stream_type="session",
        owner_id=user_id,
        events=[ev.SessionStarted(session_id=session, user_id=user_id, project_id=project_id,
                                  title="t"), *messages]))
    with conn.transaction():
        append_sync(conn, appends, metadata or {})
    return session, messages
