"""Every error the command API answers, and the one place they become JSON responses.

Body: {"error": "<short code>", "detail": "<human message>"} (plus ids where the write
happened, see AssistantUnavailable). Codes are part of the API contract; clients branch on
them, not on the detail text.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec
import psycopg
import redis.exceptions
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

log = structlog.get_logger("command.errors")


class ErrorBody(msgspec.Struct, frozen=True):
    error: str
    detail: str


class CommandError(Exception):
    """A refusal the client can act on. Subclasses fix the status and the default code."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(
        self, detail: str, *, code: str | None = None, extra: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.code
        self.extra = dict(extra or {})


class BadRequest(CommandError):
    status_code, code = 400, "bad_request"


class Unauthorized(CommandError):
    status_code, code = 401, "unauthenticated"


class NotFound(CommandError):
    status_code, code = 404, "not_found"


class Conflict(CommandError):
    status_code, code = 409, "conflict"


class TooLarge(CommandError):
    status_code, code = 413, "too_large"


class TooManyStreams(CommandError):
    status_code, code = 429, "too_many_streams"


class Unavailable(CommandError):
    status_code, code = 503, "unavailable"


# Litestar's own refusals (routing, body parsing, size limit) under our codes.
_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


def _response(
    status: int,
    code: str,
    detail: str,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"error": code, "detail": detail, **(extra or {})}
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _validation_detail(exc: ValidationException) -> str:
    # Litestar says "Validation failed for POST /x" and lists the problems in `extra`.
    problems: list[str] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        key, message = item.get("key"), str(item.get("message", ""))
        if key == "data":  # the body parameter's name
            key = "body"
            if message == "'data'":  # a KeyError: there was no body at all
                message = "a JSON object is required"
        if message.startswith("Expected `str` matching regex"):  # the regex helps nobody
            message = "is not in the expected format"
        problems.append(f"{key}: {message}" if key else message)
    return "; ".join(problems) or exc.detail


def command_error(_: Request[Any, Any, Any], exc: CommandError) -> Response[dict[str, Any]]:
    return _response(exc.status_code, exc.code, exc.detail, exc.extra)


def validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return _response(400, "invalid_request", _validation_detail(exc))


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    code = _HTTP_CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_")
    detail = exc.detail if status < 500 else HTTPStatus(status).phrase
    return _response(status, code, detail, headers=exc.headers)


def too_deep(_: Request[Any, Any, Any], exc: RecursionError) -> Response[dict[str, Any]]:
    # Litestar decodes the JSON body into builtins before our Struct sees it, so absurdly
    # nested input ([[[[...) overflows the decoder's stack: that is the client's bad input.
    return _response(400, "invalid_request", "the JSON body is nested too deeply")


def not_utf8(_: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[dict[str, Any]]:
    # Also raised by Litestar's JSON decoding, before our Struct: bad bytes are bad input.
    return _response(400, "invalid_request", "the body is not valid UTF-8")


def database_unavailable(
    _: Request[Any, Any, Any], exc: psycopg.OperationalError
) -> Response[dict[str, Any]]:
    # Connection lost, server down, pool exhausted (PoolTimeout is one of these): retryable.
    log.error("database_unavailable", error=repr(exc))
    return _response(503, "database_unavailable", "the database is unavailable; try again")


def redis_unavailable(
    _: Request[Any, Any, Any], exc: redis.exceptions.RedisError
) -> Response[dict[str, Any]]:
    # Redis down or restarting (live streams, stream leases): retryable, never a 500.
    log.error("redis_unavailable", error=repr(exc))
    return _response(503, "redis_unavailable", "the live reply service is unavailable; try again")


def unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # Never leak internals to the client; the log carries the request id to find it.
    log.error("unhandled_error", exc_info=exc)
    return _response(500, "internal_error", "an unexpected error occurred")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    CommandError: command_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    RecursionError: too_deep,
    UnicodeDecodeError: not_utf8,
    psycopg.OperationalError: database_unavailable,
    redis.exceptions.RedisError: redis_unavailable,
    Exception: unexpected_error,
}
