"""Every error becomes `{"error": "<code>", "detail": "<message>"}`, here and nowhere else."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import msgspec
import psycopg
import redis.exceptions
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.types import ExceptionHandlersMap
from psycopg_pool import PoolTimeout

log = structlog.get_logger("query.errors")


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    error: str
    detail: str


class ApiError(Exception):
    """An expected failure with a stable machine-readable code."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status_code = 400
    code = "invalid_parameter"


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


def _code_for(status_code: int) -> str:
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        return "error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


def _validation_detail(exc: ValidationException) -> str:
    """Litestar's own parameter checks (limit, offset): name the parameter and the rule."""
    if isinstance(exc.extra, list) and exc.extra:
        parts = []
        for item in exc.extra:
            if isinstance(item, dict):
                key, message = item.get("key"), item.get("message")
                parts.append(f"{key}: {message}" if key else str(message))
        if parts:
            return "; ".join(parts)
    return exc.detail


def _body(
    status_code: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    return Response(ErrorBody(error=code, detail=detail), status_code=status_code, headers=headers)


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if isinstance(exc, ApiError):
        return _body(exc.status_code, exc.code, exc.detail)
    if isinstance(exc, ValidationException):
        return _body(400, "invalid_parameter", _validation_detail(exc))
    if isinstance(exc, HTTPException):
        # keeps what the exception says about the response (405's Allow, for one)
        return _body(exc.status_code, _code_for(exc.status_code), exc.detail, exc.headers)
    if isinstance(exc, PoolTimeout | psycopg.OperationalError):
        log.warning("database_unavailable", error=str(exc))
        return _body(503, "unavailable", "the database is unavailable; retry later")
    if isinstance(exc, redis.exceptions.RedisError):  # live streams need Redis
        log.warning("redis_unavailable", error=str(exc))
        return _body(503, "unavailable", "the live reply service is unavailable; retry later")
    log.exception("unhandled_error", path=request.url.path)
    return _body(500, "internal_error", "internal server error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {Exception: handle_exception}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route can answer."""
    descriptions = {
        400: ("invalid_parameter", "A parameter is malformed or out of range."),
        401: ("unauthorized", "X-User-ID is missing or names no known user."),
        404: ("session_not_found", "No such resource for this user (another's looks the same)."),
        503: ("unavailable", "The database is unavailable."),
    }
    return {
        status: ResponseSpec(
            data_container=ErrorBody,
            description=descriptions.get(status, ("", HTTPStatus(status).phrase))[1],
            examples=[
                Example(
                    value={
                        "error": descriptions.get(status, (_code_for(status), ""))[0],
                        "detail": "...",
                    }
                )
            ],
        )
        for status in statuses
    }
