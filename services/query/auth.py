"""Who is asking: X-User-ID, set by the gateway, parsed strictly."""

from __future__ import annotations

from uuid import UUID

from services.query.errors import BadRequest, Unauthorized

USER_HEADER = "X-User-ID"


def parse_user_id(raw: str | None) -> UUID:
    """Missing → 401; present but not a UUID → 400. Whether the user exists is checked
    under RLS in the request's transaction (services/query/reader.py)."""
    if raw is None or not raw.strip():
        raise Unauthorized(f"the {USER_HEADER} header is required", code="unauthorized")
    try:
        return UUID(raw.strip())
    except ValueError:
        raise BadRequest(f"{USER_HEADER} must be a UUID", code="invalid_user_id") from None


def unknown_user() -> Unauthorized:
    return Unauthorized(f"{USER_HEADER} names no known user", code="unauthorized")
