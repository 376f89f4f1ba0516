"""The caller's own users row: the proof of identity and the body of GET /users/me."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
import redis.exceptions
import structlog
from psycopg import AsyncConnection
from psycopg.rows import class_row

from services.core import reply_slots
from services.core.settings import Settings
from services.http.sse import live_redis

log = structlog.get_logger("query.users")

# RLS (owner_read on users) shows the caller its own row only, so this also proves the
# X-User-ID names a user the read model knows.
SELECT_USER = """
SELECT user_id, email, display_name, avatar_url, created_at, updated_at
  FROM users
 WHERE user_id = %s
"""


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens the provider reported for the user's replies today (UTC), and the budget
    (0 = none); chats are refused with 429 token_budget_spent once it is spent."""

    tokens_today: int
    daily_token_budget: int


class UserProfile(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    email: str | None
    display_name: str | None
    avatar_url: str | None
    created_at: datetime | None
    updated_at: datetime | None
    usage: TokenUsage | None = None  # None when Redis did not answer


async def with_usage(user: UserProfile, state: Any) -> UserProfile:
    settings: Settings = state.settings
    try:
        spent = await reply_slots.tokens_today(live_redis(state, settings), settings,
                                               user.user_id)
    except (redis.exceptions.RedisError, OSError):
        log.warning("usage_unavailable", exc_info=True)
        return user
    return msgspec.structs.replace(user, usage=TokenUsage(
        tokens_today=spent, daily_token_budget=settings.daily_token_budget))


async def fetch_user(conn: AsyncConnection[Any], user_id: UUID) -> UserProfile | None:
    async with conn.cursor(row_factory=class_row(UserProfile)) as cur:
        await cur.execute(SELECT_USER, (user_id,))
        return await cur.fetchone()
