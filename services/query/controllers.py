"""HTTP handlers: parse, call one function, return a Struct. Errors: services/http/errors.py."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, get
from litestar.datastructures import ResponseHeader, State
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from services.core.events import session_stream
from services.http.errors import ApiError, error_responses
from services.query import messages, projects, sessions
from services.query.consistency import LAG_HEADER
from services.query.params import (
    ANCHOR_SCHEMA,
    BOOLEAN_SCHEMA,
    CALLER_SECURITY,
    UUID_SCHEMA,
    parse_boolean,
    parse_uuid,
)
from services.query.reader import Reader
from services.query.users import UserProfile, with_usage

LAG_RESPONSE_HEADER = ResponseHeader(
    name=LAG_HEADER,
    documentation_only=True,
    required=False,
    description="`true` when min_position was given and the read model had not applied it "
    "within the wait bound: the body is what there is, possibly without the caller's write.",
)


class SessionsController(Controller):
    path = "/api/v1/sessions"
    tags = ("sessions",)
    security = CALLER_SECURITY
    response_headers = (LAG_RESPONSE_HEADER,)

    @get("/", operation_id="listSessions", responses=error_responses(400, 401, 409))
    async def list_sessions(
        self,
        reader: NamedDependency[Reader],
        limit: Annotated[
            int, QueryParameter(ge=1, le=sessions.MAX_LIMIT, description="Page size.")
        ] = sessions.DEFAULT_LIMIT,
        before: Annotated[
            str | None,
            QueryParameter(
                description="The `next_cursor` of the previous page.",
                schema_extra=sessions.CURSOR_SCHEMA,
            ),
        ] = None,
        archived: Annotated[
            str | None,
            QueryParameter(
                description="true: the archived sessions instead of the active ones.",
                schema_extra=BOOLEAN_SCHEMA,
            ),
        ] = None,
        project_id: Annotated[
            str | None,
            QueryParameter(
                description="Only the sessions of this project (one of the caller's).",
                schema_extra=UUID_SCHEMA,
            ),
        ] = None,
    ) -> Response[sessions.SessionPage]:
        """The caller's sessions, newest activity first: the active ones, or the archived
        ones with `?archived=true`; of one project with `?project_id=`."""
        show_archived = archived is not None and parse_boolean(archived, name="archived")
        project = (parse_uuid(project_id, what="project_id", code="invalid_parameter")
                   if project_id is not None else None)
        cursor = sessions.decode_cursor(before) if before is not None else None
        page = await sessions.list_sessions(reader.conn, reader.user.user_id, limit, cursor,
                                            archived=show_archived, project_id=project)
        return reader.respond(page)

    @get(
        "/{session_id:str}/messages",
        operation_id="listSessionMessages",
        responses=error_responses(400, 401, 404, 409),
    )
    async def list_messages(
        self,
        reader: NamedDependency[Reader],
        session_id: Annotated[
            str, PathParameter(description="The session's id.", schema_extra=UUID_SCHEMA)
        ],
        limit: Annotated[
            int, QueryParameter(ge=1, le=messages.MAX_LIMIT, description="Page size.")
        ] = messages.DEFAULT_LIMIT,
        offset: Annotated[
            int,
            QueryParameter(
                ge=0,
                le=messages.MAX_OFFSET,
                description="Messages to skip; with after/before, sequence numbers to move "
                "the anchor by, away from it.",
            ),
        ] = 0,
        after: Annotated[
            str | None,
            QueryParameter(
                description="Keyset: messages after this sequence number or message id "
                "(a message id not in this session is 404 `message_not_found`). "
                "Combines with offset.",
                schema_extra=ANCHOR_SCHEMA,
            ),
        ] = None,
        before: Annotated[
            str | None,
            QueryParameter(
                description="Keyset: the messages just before this sequence number or "
                "message id, still in chronological order. Combines with offset.",
                schema_extra=ANCHOR_SCHEMA,
            ),
        ] = None,
    ) -> Response[messages.MessagePage]:
        """A page of the session's messages in chronological order."""
        sid = messages.parse_session_id(session_id)
        anchors = messages.parse_anchor("after", after), messages.parse_anchor("before", before)

        async def read() -> messages.MessagePage:
            return await messages.page_of_messages(
                reader.conn, sid, limit=limit, offset=offset, after=anchors[0], before=anchors[1]
            )

        try:
            page = await read()
        except ApiError as miss:  # a session the command side has just started?
            if miss.code != messages.SESSION_NOT_FOUND or not await reader.caught_up(
                session_stream(sid)
            ):
                raise
            page = await read()
        return reader.respond(page)


class ProjectsController(Controller):
    """Issue 17: the caller's projects."""

    path = "/api/v1/projects"
    tags = ("projects",)
    security = CALLER_SECURITY
    response_headers = (LAG_RESPONSE_HEADER,)

    @get("/", operation_id="listProjects", responses=error_responses(400, 401, 409))
    async def list_projects(
        self,
        reader: NamedDependency[Reader],
        limit: Annotated[
            int, QueryParameter(ge=1, le=projects.MAX_LIMIT, description="Page size.")
        ] = projects.DEFAULT_LIMIT,
        before: Annotated[
            str | None,
            QueryParameter(
                description="The `next_cursor` of the previous page.",
                schema_extra=sessions.CURSOR_SCHEMA,
            ),
        ] = None,
    ) -> Response[projects.ProjectPage]:
        """The caller's projects, newest activity first, with their session counts."""
        cursor = sessions.decode_cursor(before) if before is not None else None
        page = await projects.list_projects(reader.conn, reader.user.user_id, limit, cursor)
        return reader.respond(page)


class UsersController(Controller):
    path = "/api/v1/users"
    tags = ("users",)
    security = CALLER_SECURITY
    response_headers = (LAG_RESPONSE_HEADER,)

    @get("/me", operation_id="getCurrentUser", responses=error_responses(400, 401, 409))
    async def me(self, reader: NamedDependency[Reader], state: State) -> Response[UserProfile]:
        """The caller's profile, with today's token usage against the daily budget."""
        return reader.respond(await with_usage(reader.user, state))
