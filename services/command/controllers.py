"""The HTTP handlers: parse a Struct, call one function, return a Struct. Nothing else."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from litestar import Controller, Request, Response, delete, patch, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_202_ACCEPTED
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from services.command import chat, erasure, legacy, projects, sessions, users
from services.command.auth import Caller, authenticate, verified
from services.core.settings import Settings
from services.core.wakeup import Wake
from services.http.auth import USER_HEADER
from services.http.context import RequestIds
from services.http.errors import ApiError, error_responses
from services.http.ratelimit import hit_or_refuse, scope_ip
from services.http.sse import SseEvent, forget_session, live_redis
from services.http.stream_leases import StreamLease, too_many_streams

log = structlog.get_logger("command")

EVENT_STREAM = "text/event-stream"
JSON = "application/json"


class UserController(Controller):
    path = "/api/v1/users"
    tags = ("users",)

    @post("", operation_id="createUser", responses=error_responses(400, 409, 413, 422))
    async def create_user(
        self,
        data: JSONBody[users.RegisterUser],
        pool: NamedDependency[AsyncConnectionPool[Any]],
        wake: NamedDependency[Wake],
        request_ids: NamedDependency[RequestIds],
    ) -> users.UserCreated:
        """Registers a user; the server picks the id. The e-mail is unique in any case.
        With a `password` (and an e-mail) the user can sign in (POST /api/v1/auth/signin)."""
        return await users.register_user(pool, wake, request_ids, data)

    @delete("/me", operation_id="deleteMe", responses=error_responses(401, 403))
    async def delete_me(self, claimed_caller: NamedDependency[Caller], state: State) -> None:
        """Deletes the caller's account: every session, message and project link, the
        profile and the credentials; docs/data-erasure.md says what is erased where."""
        await erasure.delete_account(state.pool, state.redis, state.wake, state.settings,
                                     claimed_caller)

    @patch("/me", operation_id="updateMe", responses=error_responses(400, 401, 403))
    async def update_me(
        self,
        data: JSONBody[users.UpdateProfile],
        claimed_caller: NamedDependency[Caller],
        pool: NamedDependency[AsyncConnectionPool[Any]],
        wake: NamedDependency[Wake],
    ) -> users.ProfileUpdated:
        """Changes the caller's display name and/or avatar URL."""
        return await users.update_profile(pool, wake, claimed_caller, data)


class ChatController(Controller):
    path = "/api/v1/chat"
    tags = ("chat",)

    @post(
        "",
        operation_id="postChat",
        status_code=202,
        responses={
            200: ResponseSpec(
                SseEvent, media_type="text/event-stream", generate_examples=False,
                description="The default answer: server-sent events `session`, then "
                "`delta`..., `message`, `done` (or `error`).",
            ),
            **error_responses(400, 401, 404, 409, 413, 429, 503),
        },
    )
    async def post_chat(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[chat.PostChat],
        claimed_caller: NamedDependency[Caller],
        state: State,
    ) -> Response[Any]:
        """Posts the user's message (starting a session, and a project, when none is given)
        which asks the assistant to reply. With `Accept: application/json`: 202 with the ids
        and `stream_url`; otherwise the reply itself as server-sent events."""
        # The pool, wake-up and settings straight from the app's state (what their providers
        # return): Litestar resolves a batch of several dependencies in an anyio task group,
        # a cost on every request of the hottest route.
        pool: AsyncConnectionPool[Any] = state.pool
        wake: Wake = state.wake
        settings: Settings = state.settings
        redis = live_redis(state, settings)
        if request.accept.best_match([EVENT_STREAM, JSON], default=EVENT_STREAM) == JSON:
            # the user is checked inside post_chat's transaction; the reply slot it takes
            # (services/core/reply_slots.py) bounds this form as the stream slot bounds the other
            accepted = await chat.post_chat(pool, wake, settings, claimed_caller, data, redis)
            return Response(accepted, status_code=HTTP_202_ACCEPTED)
        # Streamed: the user is checked before a stream slot is taken, as for any caller.
        caller = await verified(pool, claimed_caller)
        lease = await StreamLease.acquire(redis, settings, caller.user_id,
                                          scope_ip(request.scope, settings.trusted_proxies))
        if lease is None:
            raise too_many_streams(settings)
        try:
            accepted = await chat.post_chat(pool, wake, settings, caller, data, redis)
        except BaseException:
            await lease.release()
            raise
        return chat.reply_events(redis, settings, accepted, lease)


class SessionController(Controller):
    # The path parameter is parsed as a UUID by the signature, not the router: a bad id then
    # answers 400 with a message instead of the router's bare 404.
    path = "/api/v1/sessions/{session_id:str}"
    tags = ("sessions",)

    @put("/title", operation_id="renameSession",
         responses=error_responses(400, 401, 404, 409, 413))
    async def rename_session(
        self,
        session_id: FromPath[uuid.UUID],
        data: JSONBody[sessions.RenameSession],
        pool: NamedDependency[AsyncConnectionPool[Any]],
        wake: NamedDependency[Wake],
        caller: NamedDependency[Caller],
    ) -> sessions.SessionTitle:
        """Renames a session (at most 200 characters, not blank; stored trimmed)."""
        return await sessions.rename_session(pool, wake, caller, session_id, data)

    @delete("", operation_id="deleteSession", responses=error_responses(400, 401, 404, 409))
    async def delete_session(
        self,
        session_id: FromPath[uuid.UUID],
        pool: NamedDependency[AsyncConnectionPool[Any]],
        wake: NamedDependency[Wake],
        caller: NamedDependency[Caller],
        settings: NamedDependency[Settings],
        state: State,
    ) -> None:
        """Deletes a session and erases what was written in it from the event store (and
        its live relay from Redis)."""
        await sessions.delete_session(pool, wake, caller, session_id)
        try:
            await forget_session(live_redis(state, settings), settings, session_id)
        except (RedisError, OSError):  # stored already; the relay expires by itself
            log.warning("live_relay_not_removed", session_id=str(session_id), exc_info=True)

    @post("/archive", operation_id="archiveSession", status_code=204,
          responses=error_responses(400, 401, 404, 409))
    async def archive_session(
        self,
        session_id: FromPath[uuid.UUID],
        pool: NamedDependency[AsyncConnectionPool[Any]],
        wake: NamedDependency[Wake],
        caller: NamedDependency[Caller],
    ) -> None:
        """Archives a session: the list hides it unless `?archived=true`; its messages stay,
        and posting to it makes it active again."""
        await sessions.set_archived(pool, wake, caller, session_id, archived=True)

    @post("/unarchive", operation_id="unarchiveSession", status_code=204,
          responses=error_responses(400, 401, 404, 409))
    async def unarchive_session(
        self,
        session_id: FromPath[uuid.UUID],
        pool: NamedDependency[AsyncConnectionPool[Any]],
        wake: NamedDependency[Wake],
        caller: NamedDependency[Caller],
    ) -> None:
        """Makes an archived session active again (a no-op for an active one)."""
        await sessions.set_archived(pool, wake, caller, session_id, archived=False)

    @post("/move", operation_id="moveSession", status_code=200,
          responses=error_responses(400, 401, 404, 409, 413))
    async def move_session(
        self,
        session_id: FromPath[uuid.UUID],
        data: JSONBody[projects.MoveSession],
        pool: NamedDependency[AsyncConnectionPool[Any]],
        wake: NamedDependency[Wake],
        caller: NamedDependency[Caller],
    ) -> projects.SessionMovedTo:
        """Moves a session into another of the caller's projects."""
        return await projects.move_session(pool, wake, caller, session_id, data)


class ProjectController(Controller):
    """Issue 17: the caller's projects (listed by the query service)."""

    path = "/api/v1/projects"
    tags = ("projects",)

    @post("", operation_id="createProject", status_code=201,
          responses=error_responses(400, 401, 413))
    async def create_project(
        self,
        data: JSONBody[projects.NewProject],
        pool: NamedDependency[AsyncConnectionPool[Any]],
        wake: NamedDependency[Wake],
        caller: NamedDependency[Caller],
    ) -> projects.ProjectInfo:
        """Creates a project (title 1 to 200 characters, optional description)."""
        return await projects.create_project(pool, wake, caller, data)

    @put("/{project_id:str}", operation_id="renameProject",
         responses=error_responses(400, 401, 404, 409, 413))
    async def rename_project(
        self,
        project_id: FromPath[uuid.UUID],
        data: JSONBody[projects.NewProject],
        pool: NamedDependency[AsyncConnectionPool[Any]],
        wake: NamedDependency[Wake],
        caller: NamedDependency[Caller],
    ) -> projects.ProjectInfo:
        """Renames a project (a description, when given, replaces the old one)."""
        return await projects.rename_project(pool, wake, caller, project_id, data)


def legacy_headers(settings: Settings) -> dict[str, str]:
    """RFC 9745 Deprecation, RFC 8594 Sunset, and where to go instead."""
    return {"Deprecation": "true", "Sunset": settings.legacy_chat_sunset,
            "Link": '</api/v1/chat>; rel="successor-version"'}


class LegacyChatController(Controller):
    """The pre-session endpoint, kept for old clients (services/command/legacy.py)."""

    path = "/chat"
    tags = ("legacy",)

    @post(
        "",
        operation_id="legacyChat",
        status_code=200,
        responses={
            200: ResponseSpec(
                SseEvent, media_type="text/event-stream", generate_examples=False,
                description="Server-sent events: `session`, `delta`..., `message`, `done`.",
            ),
            **error_responses(400, 401, 404, 410, 413, 429, 503),
        },
    )
    async def legacy_chat(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[legacy.LegacyChat],
        pool: NamedDependency[AsyncConnectionPool[Any]],
        wake: NamedDependency[Wake],
        settings: NamedDependency[Settings],
        request_ids: NamedDependency[RequestIds],
        state: State,
    ) -> Response[Any]:
        """Posts to the project's legacy conversation (a new project when none is given) and
        streams the reply. Deprecated (see the Deprecation and Sunset headers): without
        credentials only into projects still owned by their legacy owner; with them, only
        into the caller's own or linked projects (services/command/legacy.py)."""
        if not settings.legacy_chat_enabled:
            raise ApiError("legacy_chat_disabled", "POST /chat is switched off; use "
                           "POST /api/v1/chat")
        claimed = request.headers.get(USER_HEADER)
        caller = None if claimed is None else await authenticate(pool, claimed)
        ip = scope_ip(request.scope, settings.trusted_proxies)
        if data.project_id is None:
            await hit_or_refuse(settings, settings.rate_limit_legacy_new_project_per_ip,
                                "legacy-new-project-ip", ip)
        redis = live_redis(state, settings)
        # the cap on open streams is per project (and per IP)
        lease = await StreamLease.acquire(redis, settings, data.project_id or uuid.uuid4(), ip)
        if lease is None:
            raise too_many_streams(settings)
        try:
            accepted = await legacy.post_legacy_chat(pool, settings, request_ids, data, caller)
            await chat.announce(wake, accepted)
        except BaseException:
            await lease.release()
            raise
        return chat.reply_events(redis, settings, accepted, lease,
                                 legacy_headers(settings))
