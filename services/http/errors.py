"""The error vocabulary of every HTTP answer (gateway, command and query services), and the
one place errors become responses.

Body: `{"error": "<code>", "detail": "<message>"}` (plus ids where a write happened). Codes
are part of the API contract: clients branch on them, never on `detail`. ERRORS is the only
list of codes; its status is the code's status wherever it is answered, the README's
"Errors" section and the OpenAPI documents are made from it (a test keeps the README in step).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import psycopg
import redis.exceptions
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from services.http.body import BodyError, describe, explain_invalid_body

log = structlog.get_logger("http.errors")


class ErrorCode(NamedTuple):
    status: int
    meaning: str


ERRORS: dict[str, ErrorCode] = {
    # 400: the request is malformed; the same request will fail again.
    "invalid_request": ErrorCode(400, "The body is not what the route takes: not UTF-8, not "
                                      "JSON, nested too deeply, or a field missing, unknown "
                                      "or of the wrong type."),
    "invalid_parameter": ErrorCode(400, "A query, path or header parameter is malformed or "
                                        "out of range."),
    "invalid_path": ErrorCode(400, "The path has dot segments or encoded slashes, "
                                   "backslashes or dots."),
    "invalid_user_id": ErrorCode(400, "X-User-ID is not a UUID."),
    "invalid_session_id": ErrorCode(400, "The session id in the path is not a UUID."),
    "invalid_cursor": ErrorCode(400, "`before` is not a cursor this API returned."),
    "invalid_min_position": ErrorCode(400, "X-Min-Position / min_position is not a positive "
                                           "integer."),
    "invalid_reply_to": ErrorCode(400, "`reply_to` is not a message id."),
    "invalid_last_event_id": ErrorCode(400, "`Last-Event-ID` is not an event id a stream "
                                            "sent."),
    "empty_text": ErrorCode(400, "The message is blank (nothing left after trimming)."),
    "invalid_text": ErrorCode(400, "A text contains U+0000, which cannot be stored."),
    "invalid_title": ErrorCode(400, "The title is over 200 characters or blank."),
    "invalid_description": ErrorCode(400, "A project description is over 2000 characters."),
    # 401: who is calling is not established.
    "unauthenticated": ErrorCode(401, "X-User-ID is missing."),
    "unknown_user": ErrorCode(401, "X-User-ID (or the token's subject) names no registered "
                                   "user."),
    "token_required": ErrorCode(401, "Signed-token mode: `Authorization: Bearer <token>` is "
                                     "missing."),
    "invalid_token": ErrorCode(401, "Signed-token mode: the token is not valid (signature, "
                                    "algorithm, claims)."),
    "token_expired": ErrorCode(401, "Signed-token mode: the token has expired."),
    "invalid_credential": ErrorCode(401, "The session cookie or API token is unknown, expired "
                                         "or revoked (signed out)."),
    "sign_in_failed": ErrorCode(401, "No account with that e-mail and password (the same "
                                     "answer for both)."),
    "user_header_refused": ErrorCode(401, "X-User-ID from a client is refused here (not a "
                                          "loopback `make run`): sign in instead."),
    "gateway_proof_required": ErrorCode(401, "The request did not come through the gateway "
                                             "(GATEWAY_SECRET is set)."),
    # 403: who is calling is known, the request is not allowed.
    "csrf_failed": ErrorCode(403, "A cookie-authenticated write without the X-CSRF-Token "
                                  "header matching the chat_csrf cookie."),
    # 404: nothing there for this caller; another user's resource looks exactly the same.
    "not_found": ErrorCode(404, "No such route or file."),
    "session_not_found": ErrorCode(404, "No such session for this user."),
    "project_not_found": ErrorCode(404, "No such project for this user."),
    "message_not_found": ErrorCode(404, "`after`/`before` names a message not in this "
                                        "session."),
    "legacy_chat_disabled": ErrorCode(410, "LEGACY_CHAT_ENABLED is false: use POST "
                                           "/api/v1/chat."),
    "method_not_allowed": ErrorCode(405, "The path exists, not with this method (see Allow)."),
    # 409: the state changed under the request.
    "weak_password": ErrorCode(422, "The password is under 8 characters, over 256, or one of "
                                    "the most common passwords."),
    "email_taken": ErrorCode(409, "That e-mail address is already registered."),
    "unknown_position": ErrorCode(409, "min_position / X-Min-Position is beyond the last "
                                       "event written: no write of the caller's has it."),
    "concurrent_update": ErrorCode(409, "The session changed too often while writing; retry."),
    "reply_in_progress": ErrorCode(409, "The session's last message is still being answered: "
                                        "post after its reply (Retry-After)."),
    # 413 / 429 / 431: limits.
    "body_too_large": ErrorCode(413, "The body is over MAX_BODY_BYTES."),
    "message_too_long": ErrorCode(413, "The message is over MAX_MESSAGE_CHARS characters."),
    "too_many_streams": ErrorCode(429, "The caller already holds MAX_STREAMS_PER_USER live "
                                       "streams."),
    "rate_limited": ErrorCode(429, "Over a rate limit (per IP, per user, chats per user, "
                                   "sign-ups per IP); retry after Retry-After seconds."),
    "too_many_pending_replies": ErrorCode(429, "The caller already waits on "
                                               "MAX_PENDING_REPLIES_PER_USER replies."),
    "token_budget_spent": ErrorCode(429, "The caller's DAILY_TOKEN_BUDGET is spent until UTC "
                                         "midnight (Retry-After)."),
    "too_many_attempts": ErrorCode(429, "Too many sign-in attempts for this account or from "
                                        "this address; retry after Retry-After seconds."),
    "headers_too_large": ErrorCode(431, "The request headers are over MAX_HEADER_BYTES."),
    # 5xx: ours; retry later. The log line with the same request id says more.
    "internal_error": ErrorCode(500, "An unexpected error."),
    "database_unavailable": ErrorCode(503, "PostgreSQL is not answering; retry."),
    "assistant_busy": ErrorCode(503, "MAX_PENDING_REPLIES replies are pending in all; retry "
                                     "after Retry-After."),
    "redis_unavailable": ErrorCode(503, "Redis (live replies, stream leases) is not "
                                        "answering; retry."),
    "upstream_unavailable": ErrorCode(503, "Gateway: the service behind this route is not "
                                           "answering."),
    "projection_behind": ErrorCode(503, "The event store holds what was asked for, the read "
                                        "model has not caught up within the wait; retry."),
    "not_ready": ErrorCode(503, "Gateway /readyz: something is not answering (`checks`)."),
}

# Litestar's own refusals (routing, parameters, size limit) under our codes.
_STATUS_CODES = {400: "invalid_request", 401: "unauthenticated", 404: "not_found",
                 405: "method_not_allowed", 413: "body_too_large", 431: "headers_too_large"}

# The codes as an enum in the OpenAPI documents (a Literal built from the table).
ErrorCodeName: Any = Literal[tuple(ERRORS)]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    error: Annotated[ErrorCodeName, msgspec.Meta(description="See the table of codes.")]  # type: ignore[valid-type]
    detail: Annotated[str, msgspec.Meta(description="For people; may change any time.")]


class ApiError(Exception):
    """A refusal the client can act on; the code's status comes from ERRORS."""

    def __init__(self, code: str, detail: str, extra: Mapping[str, Any] | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status_code = ERRORS[code].status
        self.code = code
        self.detail = detail
        self.extra = dict(extra or {})
        self.retry_after = retry_after  # seconds, sent as Retry-After


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of an error, for code that answers outside Litestar (ASGI middleware,
    the gateway)."""
    return {"error": code, "detail": detail, **extra}


def error_table_markdown() -> str:
    """ERRORS as the README's and OpenAPI's table."""
    rows = [f"| `{code}` | {entry.status} | {entry.meaning} |" for code, entry in ERRORS.items()]
    return "\n".join(["| code | status | meaning |", "| --- | --- | --- |", *rows])


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route can answer, each naming its codes."""
    specs = {}
    for status in sorted(statuses):
        codes = ", ".join(f"`{code}`" for code, entry in ERRORS.items() if entry.status == status)
        specs[status] = ResponseSpec(
            ErrorBody, generate_examples=False,
            description=f"{HTTPStatus(status).phrase}: {codes or 'see the table of codes'}.")
    return specs


def _response(status: int, code: str, detail: str, extra: Mapping[str, Any] | None = None,
              headers: Mapping[str, str] | None = None) -> Response[dict[str, Any]]:
    return Response(error_body(code, detail, **(extra or {})), status_code=status,
                    media_type=MediaType.JSON, headers=headers)


def api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[dict[str, Any]]:
    headers = None
    retry = exc.retry_after if exc.retry_after is not None else exc.extra.get("retry_after")
    if retry is not None:  # a 429's (or 503's) seconds, also as the standard header
        headers = {"Retry-After": str(retry)}
    return _response(exc.status_code, exc.code, exc.detail, exc.extra, headers)


def invalid_body(_: Request[Any, Any, Any], exc: BodyError) -> Response[dict[str, Any]]:
    return _response(400, "invalid_request", exc.detail)


def validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Litestar's checks of the body and of parameters. Its messages are msgspec's wording,
    which changes between versions: the body's problems are explained by our own reading of
    it (services/http/body.py), the parameters' are named with our own text."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    if any(isinstance(p, dict) and p.get("source") == "body" for p in problems):
        return _response(400, "invalid_request", explain_invalid_body(request))
    names = sorted({str(p.get("key")) for p in problems if isinstance(p, dict) and p.get("key")})
    detail = "; ".join(f"{name}: {_parameter_rule(request, name)}" for name in names)
    return _response(400, "invalid_parameter", detail or "a parameter is not valid")


def _parameter_rule(request: Request[Any, Any, Any], name: str) -> str:
    """What the route's parameter `name` must be, from its declaration ("must be an integer
    from 1 to 100")."""
    handler = request.scope.get("route_handler")
    field = handler.parsed_fn_signature.parameters.get(name) if handler else None
    if field is None:
        return "is not valid"
    rule = f"must be {describe(field.annotation)}"
    low, high = (getattr(field.kwarg_definition, bound, None) for bound in ("ge", "le"))
    if low is not None and high is not None:
        return f"{rule} from {low} to {high}"
    if low is not None:
        return f"{rule} of at least {low}"
    if high is not None:
        return f"{rule} of at most {high}"
    return rule


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    if status >= 500:
        return _response(status, "internal_error", HTTPStatus(status).phrase)
    code = _STATUS_CODES.get(status, "invalid_request")
    detail = ERRORS[code].meaning if status in (400, 413) else exc.detail
    # keeps what the exception says about the response (405's Allow, for one)
    return _response(status, code, detail, headers=exc.headers)


def too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[dict[str, Any]]:
    # Absurdly nested JSON ([[[[...) can overflow a decoder's stack: the client's bad input.
    return _response(400, "invalid_request", "the JSON body is nested too deeply")


def database_unavailable(
    _: Request[Any, Any, Any], exc: psycopg.OperationalError
) -> Response[dict[str, Any]]:
    # Connection lost, server down, pool exhausted (PoolTimeout is one of these): retryable.
    log.error("database_unavailable", error=repr(exc))
    return _response(503, "database_unavailable", "the database is unavailable; try again")


def redis_unavailable(
    _: Request[Any, Any, Any], exc: redis.exceptions.RedisError
) -> Response[dict[str, Any]]:
    log.error("redis_unavailable", error=repr(exc))
    return _response(503, "redis_unavailable", "the live reply service is unavailable; try again")


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # Never leak internals to the client; the log carries the request id to find it.
    log.error("unhandled_error", path=request.url.path, exc_info=exc)
    return _response(500, "internal_error", "an unexpected error occurred")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ApiError: api_error,
    BodyError: invalid_body,
    ValidationException: validation_error,
    HTTPException: http_error,
    RecursionError: too_deep,
    psycopg.OperationalError: database_unavailable,
    redis.exceptions.RedisError: redis_unavailable,
    Exception: unexpected_error,
}
