"""Posting a user's message: into a session (started here when none is given, with a project
when none is given). The stored MessagePosted is the request for a reply: the workers' reply
dispatcher (workers/dispatcher.py) follows the event store and asks the assistant.

`post_chat` returns the metadata of what was stored; how it is answered (JSON now, an event
stream later, by Accept header) is the handler's business.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import psycopg
import structlog
from litestar.response import ServerSentEvent, ServerSentEventMessage
from psycopg_pool import AsyncConnectionPool
from redis import asyncio as aioredis

from services.command.auth import Caller, known_user, verified
from services.command.store import (
    append,
    check_storable,
    in_transaction,
    owned_version,
)
from services.core import reply_slots
from services.core.events import (
    MessagePosted,
    ProjectCreated,
    SessionStarted,
    project_stream,
    session_stream,
    user_stream,
)
from services.core.eventstore import StreamAppend
from services.core.settings import Settings
from services.core.wakeup import Wake
from services.http.errors import ApiError
from services.http.sse import sse_response, sse_stream
from services.http.stream_leases import StreamLease

log = structlog.get_logger("command.chat")

# One statement, one round trip, for what a post needs to know before it appends: whether
# the caller is a registered user (auth.USER_EXISTS), the target stream's row (the session's
# locked FOR UPDATE, as store.LOCK_STREAM; a project's only read, as store.READ_STREAM_ROW)
# and a session's project, fixed when it starts: version 1 is always SessionStarted. A stream
# that does not exist leaves its columns NULL.
_CALLER_KNOWN = """
SELECT EXISTS (
    SELECT 1 FROM event_streams WHERE stream_id = %(user_stream)s AND stream_type = 'user'
       AND NOT deleted
) AS known
"""
CALLER_AND_SESSION = f"""
SELECT caller.known, s.stream_type, s.owner_id, s.version, s.deleted, started.project_id
  FROM ({_CALLER_KNOWN}) caller
  LEFT JOIN (SELECT stream_type, owner_id, version, deleted FROM event_streams
              WHERE stream_id = %(stream_id)s FOR UPDATE) s ON true
  LEFT JOIN (SELECT (data->>'project_id')::uuid AS project_id FROM events
              WHERE stream_id = %(stream_id)s AND version = 1) started ON true
"""
CALLER_AND_PROJECT = f"""
SELECT caller.known, p.stream_type, p.owner_id, p.version, p.deleted
  FROM ({_CALLER_KNOWN}) caller
  LEFT JOIN (SELECT stream_type, owner_id, version, deleted FROM event_streams
              WHERE stream_id = %(stream_id)s) p ON true
"""

TITLE_CHARS = 60
# A streamed POST gives up (with an `error` event) when no worker starts the reply by then.


class PostChat(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: str
    session_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None


class ChatAccepted(msgspec.Struct, frozen=True, kw_only=True):
    session_id: uuid.UUID
    project_id: uuid.UUID
    turn_id: uuid.UUID
    message_id: uuid.UUID
    created: bool  # the session was started by this message
    position: int  # the largest global position written: read-your-writes for the query side
    stream_url: str


def clean_text(text: str, max_chars: int) -> str:
    # the length as sent, as the document's maxLength counts it; stored trimmed
    if len(text) > max_chars:
        raise ApiError("message_too_long", f"text is longer than {max_chars} characters")
    text = text.strip()
    if not text:
        raise ApiError("empty_text", "text is empty")
    check_storable(text, "text")
    return text


def title_from(text: str) -> str:
    """A new session's title: the first line of its first message, cut to 60 characters."""
    return text.splitlines()[0].strip()[:TITLE_CHARS]


def stream_url(session_id: uuid.UUID, position: int, message_id: uuid.UUID) -> str:
    """Where the reply is followed: waits for this message to be projected (so the session
    exists on the query side) and starts at the reply to it, not at an earlier one."""
    return f"/api/v1/sessions/{session_id}/stream?min_position={position}&reply_to={message_id}"


async def post_chat(
    pool: AsyncConnectionPool[Any],
    wake: Wake,
    settings: Settings,
    caller: Caller,
    body: PostChat,
    redis: aioredis.Redis | None = None,
) -> ChatAccepted:
    """`caller` may be unverified (auth.Caller.verified): its user is then checked in the
    transaction, by the statement that reads the target stream, and an unknown user answers
    401 before anything else about the request, as when the check was its own.

    With `redis` (and settings.reply_slots_enabled) the post is admitted first
    (services/core/reply_slots.py): the daily token budget, then a reply slot taken in the
    append's transaction, while the session's row is locked."""
    try:
        text = clean_text(body.text, settings.max_message_chars)
    except Exception:
        await verified(pool, caller)  # 401 comes first
        raise
    admission = Admission(redis, settings, caller.user_id) if (
        redis is not None and settings.reply_slots_enabled) else None
    if admission is not None:
        await admission.check_budget()

    async def work(conn: psycopg.AsyncConnection[Any]) -> ChatAccepted:
        if body.session_id is None:
            accepted = await _start_session(conn, caller, body.project_id, text)
        else:
            accepted = await _continue_session(conn, caller, body.session_id, text)
        if admission is not None:
            await admission.take(accepted)
        return accepted

    try:
        accepted = await in_transaction(pool, work)
    except BaseException:
        if admission is not None:
            await admission.give_back_all_but(None)
        raise
    if admission is not None:
        await admission.give_back_all_but(accepted)
    await announce(wake, accepted)
    return accepted


class Admission:
    """A post's admission (services/core/reply_slots.py). Redis not answering admits: the
    limits are a defence, the post is what matters."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, user_id: uuid.UUID) -> None:
        self.redis, self.settings, self.user_id = redis, settings, user_id
        self.taken: list[ChatAccepted] = []  # one per transaction attempt

    async def check_budget(self) -> None:
        budget = self.settings.daily_token_budget
        if budget <= 0:
            return
        try:
            spent = await reply_slots.tokens_today(self.redis, self.settings, self.user_id)
        except (aioredis.RedisError, OSError):
            log.warning("admission_unavailable", exc_info=True)
            return
        if spent >= budget:
            raise ApiError("token_budget_spent",
                           f"today's budget of {budget} tokens is spent ({spent})",
                           retry_after=reply_slots.seconds_to_utc_midnight())

    async def take(self, accepted: ChatAccepted) -> None:
        s = self.settings
        try:
            result = await reply_slots.take_slot(self.redis, s, self.user_id,
                                                 accepted.session_id, accepted.message_id)
        except (aioredis.RedisError, OSError):
            log.warning("admission_unavailable", exc_info=True)
            return
        if result == reply_slots.SESSION_BUSY:
            raise ApiError("reply_in_progress", "the session's last message is still being "
                           "answered", retry_after=2)
        if result == reply_slots.USER_FULL:
            raise ApiError("too_many_pending_replies", f"at most "
                           f"{s.max_pending_replies_per_user} replies pending per user",
                           retry_after=5)
        if result == reply_slots.ALL_FULL:
            raise ApiError("assistant_busy", "the assistant has too much to answer; retry",
                           retry_after=10)
        self.taken.append(accepted)

    async def give_back_all_but(self, kept: ChatAccepted | None) -> None:
        for accepted in self.taken:
            if accepted is kept:
                continue
            try:
                await reply_slots.give_back_async(self.redis, self.settings, self.user_id,
                                                  accepted.session_id, accepted.message_id)
            except (aioredis.RedisError, OSError):
                log.warning("admission_unavailable", exc_info=True)


async def announce(wake: Wake, accepted: ChatAccepted) -> None:
    """After commit: wake the followers (the projector, and the dispatcher that asks the
    assistant to reply). Nothing can be lost here: the message is the request."""
    log.info(
        "message_posted",
        session_id=str(accepted.session_id),
        message_id=str(accepted.message_id),
        created=accepted.created,
        position=accepted.position,
    )
    await wake()


def reply_events(
    redis: aioredis.Redis, settings: Settings, accepted: ChatAccepted, lease: StreamLease,
    headers: dict[str, str] | None = None,
) -> ServerSentEvent:
    """The streamed answer: a `session` event with what was stored, then the reply relayed
    from the session's live stream (delta..., message, done) by the code the query service's
    stream uses."""
    session = ServerSentEventMessage(
        event="session", data=msgspec.json.encode(accepted).decode()
    )
    return sse_response(sse_stream(
        redis, settings, accepted.session_id, reply_to=accepted.message_id,
        start_timeout=settings.reply_start_timeout_seconds, prelude=[session], lease=lease,
    ), headers)


def message_posted(caller: Caller, session_id: uuid.UUID, text: str) -> MessagePosted:
    return MessagePosted(
        session_id=session_id,
        message_id=uuid.uuid4(),
        turn_id=uuid.uuid4(),
        user_id=caller.user_id,
        role="user",
        content=text,
    )


def accepted_as(
    message: MessagePosted, project_id: uuid.UUID, created: bool, positions: list[int]
) -> ChatAccepted:
    assert message.turn_id is not None
    return ChatAccepted(
        session_id=message.session_id,
        project_id=project_id,
        turn_id=message.turn_id,
        message_id=message.message_id,
        created=created,
        position=max(positions),
        stream_url=stream_url(message.session_id, max(positions), message.message_id),
    )


def _caller_params(caller: Caller, stream_id: str) -> dict[str, Any]:
    return {"user_stream": user_stream(caller.user_id), "stream_id": stream_id}


def _check_caller(caller: Caller, known: bool) -> None:
    if not caller.verified:
        known_user(caller.user_id, known)


async def _start_session(
    conn: psycopg.AsyncConnection[Any], caller: Caller, project_id: uuid.UUID | None, text: str
) -> ChatAccepted:
    appends: list[StreamAppend] = []
    if project_id is None:
        if not caller.verified:
            cur = await conn.execute(_CALLER_KNOWN, {"user_stream": user_stream(caller.user_id)})
            known = await cur.fetchone()
            _check_caller(caller, bool(known and known[0]))
        project_id = uuid.uuid4()
        appends.append(StreamAppend(
            stream_id=project_stream(project_id),
            expected_version=0,
            events=[ProjectCreated(project_id=project_id, owner_id=caller.user_id, title="")],
            stream_type="project",
            owner_id=caller.user_id,
        ))
    else:
        cur = await conn.execute(
            CALLER_AND_PROJECT, _caller_params(caller, project_stream(project_id))
        )
        row = await cur.fetchone()
        assert row is not None  # the caller's row is always there
        _check_caller(caller, row[0])
        owned_version(row[1:], "project", caller.user_id)
    session_id = uuid.uuid4()
    started = SessionStarted(
        session_id=session_id,
        user_id=caller.user_id,
        project_id=project_id,
        title=title_from(text),
    )
    message = message_posted(caller, session_id, text)
    appends.append(StreamAppend(
        stream_id=session_stream(session_id),
        expected_version=0,
        events=[started, message],
        stream_type="session",
        owner_id=caller.user_id,
    ))
    positions = await append(conn, appends, caller.event_metadata())
    return accepted_as(message, project_id, True, positions)


async def _continue_session(
    conn: psycopg.AsyncConnection[Any], caller: Caller, session_id: uuid.UUID, text: str
) -> ChatAccepted:
    stream_id = session_stream(session_id)
    cur = await conn.execute(CALLER_AND_SESSION, _caller_params(caller, stream_id))
    row = await cur.fetchone()
    assert row is not None  # the caller's row is always there
    _check_caller(caller, row[0])
    version = owned_version(row[1:5], "session", caller.user_id)
    project_id = row[5]
    if project_id is None:  # a session stream always starts with SessionStarted
        raise RuntimeError(f"{stream_id} has no SessionStarted event")
    message = message_posted(caller, session_id, text)
    positions = await append(
        conn,
        [StreamAppend(stream_id=stream_id, expected_version=version, events=[message])],
        caller.event_metadata(),
    )
    return accepted_as(message, project_id, False, positions)
