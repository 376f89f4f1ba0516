"""The shapes of the query API's parameters: one strict parser and one exact OpenAPI schema
for each, side by side, so that what the document declares valid is exactly what the code
accepts (an empty value is invalid for every one of them, and is a 400).

Handlers take these parameters as plain strings and parse them here, so the errors carry
our codes; `schema_extra` replaces the generated `string | null` with the real shape.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from services.http.errors import ApiError

# X-User-ID, the caller's identity, is documented as the OpenAPI security scheme CALLER_SCHEME
# (services/query/app.py), which every operation requires.
CALLER_SCHEME = "caller"
CALLER_SECURITY: list[dict[str, list[str]]] = [{CALLER_SCHEME: []}]

MAX_BIGINT = 2**63 - 1  # event positions and message sequence numbers are bigints
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID = re.compile(UUID_PATTERN)

UUID_SCHEMA: dict[str, Any] = {
    "oneOf": None, "type": "string", "format": "uuid", "pattern": UUID_PATTERN}
# A live stream's event ids are Redis Stream entry ids ("<ms>-<seq>").
LAST_EVENT_ID_PATTERN = r"^[0-9]+-[0-9]+$"
LAST_EVENT_ID_SCHEMA: dict[str, Any] = {
    "oneOf": None, "type": "string", "pattern": LAST_EVENT_ID_PATTERN}
POSITION_SCHEMA: dict[str, Any] = {
    "oneOf": None, "type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_BIGINT}
# A boolean query parameter is spelled `true` or `false` (OpenAPI's serialization), nothing else.
BOOLEAN_SCHEMA: dict[str, Any] = {"oneOf": None, "type": "boolean"}
ANCHOR_SCHEMA: dict[str, Any] = {"oneOf": [
    {"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_BIGINT},
    {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
]}


def parse_uuid(raw: str, *, what: str, code: str) -> UUID:
    """The canonical hyphenated form only (what the document's pattern says)."""
    if not _UUID.match(raw):
        raise ApiError(code, f"{what} must be a UUID")
    return UUID(raw)


def parse_integer(raw: str, *, minimum: int, maximum: int = MAX_BIGINT) -> int | None:
    """ASCII digits within [minimum, maximum], else None (the caller says what is wrong)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(maximum)):
        return None
    value = int(raw)
    return value if minimum <= value <= maximum else None


def parse_boolean(raw: str, *, name: str) -> bool:
    """`true` or `false` exactly (BOOLEAN_SCHEMA), else a 400 naming the parameter."""
    if raw not in ("true", "false"):
        raise ApiError("invalid_parameter", f"{name} must be true or false")
    return raw == "true"
