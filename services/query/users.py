"""The caller's own users row: the proof of identity and the body of GET /users/me."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from psycopg import AsyncConnection
from psycopg.rows import class_row

# RLS (owner_read on users) shows the caller its own row only, so this also proves the
# X-User-ID names a user the read model knows.
SELECT_USER = """
SELECT user_id, email, display_name, avatar_url, created_at, updated_at
  FROM users
 WHERE user_id = %s
"""


class UserProfile(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    email: str | None
    display_name: str | None
    avatar_url: str | None
    created_at: datetime | None
    updated_at: datetime | None


async def fetch_user(conn: AsyncConnection[Any], user_id: UUID) -> UserProfile | None:
    async with conn.cursor(row_factory=class_row(UserProfile)) as cur:
        await cur.execute(SELECT_USER, (user_id,))
        return await cur.fetchone()
