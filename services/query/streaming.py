"""GET /api/v1/sessions/{id}/stream: the session's live reply as Server-Sent Events.

The events come from services/http/sse.py (a Redis Stream per session), so this handler
only checks who may listen: the caller must be a known user and own the session, read under
RLS as the query role like every other query route (another user's session is the same 404
as a missing one), and may hold at most settings.max_streams_per_user streams at once (its
IP max_streams_per_ip, everyone max_streams), counted in Redis (a lease per stream, see
StreamLease) so the caps hold across instances.

The ownership check runs in its own short transaction before streaming starts: a stream
may stay open for minutes and must not pin a pooled connection (the app's Reader
dependency would hold one for the whole response).
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from uuid import UUID

import structlog
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, PathParameter, QueryParameter
from litestar.response import ServerSentEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from services.core.db import SET_USER
from services.core.events import session_stream, user_stream
from services.core.settings import Settings
from services.http.auth import USER_HEADER, parse_user_id, unknown_user
from services.http.errors import ApiError, error_responses
from services.http.ratelimit import scope_ip
from services.http.sse import SseEvent, live_redis, sse_response, sse_stream
from services.http.stream_leases import StreamLease, too_many_streams
from services.query.consistency import (
    MIN_POSITION_HEADER,
    catch_up,
    check_before_waiting,
    parse_min_position,
    wait_for_position,
)
from services.query.messages import SESSION_NOT_FOUND, parse_session_id
from services.query.params import (
    CALLER_SECURITY,
    LAST_EVENT_ID_PATTERN,
    LAST_EVENT_ID_SCHEMA,
    POSITION_SCHEMA,
    UUID_SCHEMA,
    parse_uuid,
)
from services.query.users import fetch_user

log = structlog.get_logger("query.streaming")

SESSION_VISIBLE = "SELECT 1 FROM sessions WHERE session_id = %s"  # RLS: the caller's only
CONNECTION_TIMEOUT_SECONDS = 10.0


async def check_session_owner(
    pool: AsyncConnectionPool[Any], user_id: UUID, session_id: UUID, catch_up_seconds: float
) -> None:
    """401 for an unknown user, 404 unless the session is the caller's (RLS decides); what
    the event store already holds but the read model not yet is waited for (catch_up)."""
    async with pool.connection(timeout=CONNECTION_TIMEOUT_SECONDS) as conn, conn.transaction():
        await conn.execute(SET_USER, (str(user_id),))
        user = await fetch_user(conn, user_id)
        if user is None and await catch_up(conn, user_stream(user_id), user_id, catch_up_seconds):
            user = await fetch_user(conn, user_id)
        if user is None:
            raise unknown_user()
        visible = await _session_visible(conn, session_id)
        if not visible and await catch_up(
            conn, session_stream(session_id), user_id, catch_up_seconds
        ):
            visible = await _session_visible(conn, session_id)
        if not visible:
            raise ApiError(SESSION_NOT_FOUND, "session not found")


async def _session_visible(conn: AsyncConnection[Any], session_id: UUID) -> bool:
    cur = await conn.execute(SESSION_VISIBLE, (session_id,))
    return await cur.fetchone() is not None


def _parse_last_event_id(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not re.match(LAST_EVENT_ID_PATTERN, raw):
        raise ApiError("invalid_last_event_id",
                       "Last-Event-ID must be an event id this stream sent")
    return raw


def _parse_reply_to(raw: str | None) -> UUID | None:
    if raw is None:
        return None
    return parse_uuid(raw, what="reply_to (a message id)", code="invalid_reply_to")


class StreamController(Controller):
    path = "/api/v1/sessions"
    tags = ("sessions",)
    security = CALLER_SECURITY

    @get(
        "/{session_id:str}/stream",
        operation_id="streamSession",
        responses={
            200: ResponseSpec(SseEvent, media_type="text/event-stream", generate_examples=False,
                              description="Server-sent events: `delta`..., `message`, `done`."),
            **error_responses(400, 401, 404, 429),
        },
    )
    async def stream(
        self,
        request: Request[Any, Any, Any],
        state: State,
        session_id: Annotated[
            str, PathParameter(description="The session's id.", schema_extra=UUID_SCHEMA)
        ],
        x_user_id: Annotated[
            str | None,
            HeaderParameter(name=USER_HEADER, include_in_schema=False),  # the `caller` scheme
        ] = None,
        last_event_id: Annotated[
            str | None,
            HeaderParameter(
                name="Last-Event-ID",
                description="Resume after this event id (an `id:` this stream sent).",
                schema_extra=LAST_EVENT_ID_SCHEMA,
            ),
        ] = None,
        x_min_position: Annotated[
            str | None,
            HeaderParameter(
                name=MIN_POSITION_HEADER,
                description="Wait until the read model has this event (a new session).",
                schema_extra=POSITION_SCHEMA,
            ),
        ] = None,
        min_position: Annotated[
            str | None,
            QueryParameter(
                name="min_position", description="As X-Min-Position.", schema_extra=POSITION_SCHEMA
            ),
        ] = None,
        reply_to: Annotated[
            str | None,
            QueryParameter(
                name="reply_to",
                description="Follow the reply to this user message (the `message_id` POST "
                "/chat answered), waiting for it to start, instead of the latest reply.",
                schema_extra=UUID_SCHEMA,
            ),
        ] = None,
    ) -> ServerSentEvent:
        """The session's live reply: `delta` events ({"text"}), the stored `message`, then
        `done` (or `error`); heartbeat comments while idle. Without Last-Event-ID it starts
        at the beginning of the latest reply, waiting for one if none is being written;
        with `reply_to`, at the beginning of the reply to that message (right after POST
        /chat the latest reply may still be the previous one)."""
        user_id = parse_user_id(x_user_id)
        sid = parse_session_id(session_id)
        reply = _parse_reply_to(reply_to)
        resume_after = _parse_last_event_id(last_event_id)
        settings: Settings = state.settings
        position = parse_min_position(x_min_position, min_position)
        if position is not None:
            await check_before_waiting(state.pool, user_id, position)
            await wait_for_position(state.pool, position, settings.min_position_wait_seconds)
        await check_session_owner(state.pool, user_id, sid, settings.min_position_wait_seconds)
        redis = live_redis(state, settings)
        lease = await StreamLease.acquire(redis, settings, user_id,
                                          scope_ip(request.scope, settings.trusted_proxies))
        if lease is None:
            raise too_many_streams(settings)
        log.info("stream_opened", session_id=str(sid), resume=resume_after is not None)
        # Following one message's reply ends with an `error` if it never starts; the plain
        # stream waits for the next reply as long as the client stays.
        start_timeout = settings.reply_start_timeout_seconds if reply is not None else None
        return sse_response(sse_stream(
            redis, settings, sid, resume_after, reply_to=reply, start_timeout=start_timeout,
            lease=lease,
        ))
