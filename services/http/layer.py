"""What every service's Litestar app is built with, so both behave as one."""

from __future__ import annotations

from typing import Any

import structlog

from services.core.settings import Settings
from services.http.auth import CallerCheckMiddleware, user_header_trusted
from services.http.body import ApiRequest
from services.http.context import RequestContextMiddleware
from services.http.credentials import CredentialCheck
from services.http.errors import EXCEPTION_HANDLERS, error_table_markdown
from services.http.metrics import MetricsMiddleware
from services.http.ratelimit import RateLimitMiddleware


def http_layer(service: str, settings: Settings) -> dict[str, Any]:
    """Litestar(...) keyword arguments: middleware (outermost first: metrics, request ids,
    caller checks, rate limits), the error handlers, the request class that explains bad
    bodies, and the body size limit; and the credential check's pool, closed at shutdown."""
    credentials = CredentialCheck(settings.database_url)  # its pool opens on first use
    if user_header_trusted(settings):
        structlog.get_logger("http.auth").warning(
            "user_header_trusted", service=service,
            detail="loopback only: a client may name the caller with X-User-ID (the "
                   "seed's examples); any other bind refuses it")

    return {
        "on_shutdown": [credentials.close],
        "middleware": [MetricsMiddleware(service), RequestContextMiddleware(),
                       CallerCheckMiddleware(settings, credentials),
                       RateLimitMiddleware(settings)],
        "exception_handlers": EXCEPTION_HANDLERS,
        "request_class": ApiRequest,
        "request_max_body_size": settings.max_body_bytes,
    }


def api_description(summary: str) -> str:
    """An OpenAPI `info.description`: the service's summary, then the table of error codes."""
    return (f'{summary}\n\nErrors are `{{"error": code, "detail": text}}`; clients branch on '
            f"the code, never on the text:\n\n{error_table_markdown()}")
