"""What the assistant may be asked for, decided when a chat is posted (the command side) and
given back when the reply ends (the worker): admission control in Redis.

- A reply slot per posted message: `{prefix}replies:pending:{user}` and the global
  `{prefix}replies:pending` hold the message while its reply is pending (sorted sets scored
  by expiry, so a slot a crash never gave back frees itself after reply_slot_seconds).
  Taken in the transaction that appends the message (services/command/chat.py), while the
  session's row is locked, so two posts into one session cannot both pass:
  * a session with a reply still pending refuses another message (409 reply_in_progress):
    at most one reply in flight per session, each written with the one before in context;
  * a user with max_pending_replies_per_user pending replies is refused (429
    too_many_pending_replies): one user's backlog in the assistant's queue is that small,
    so it delays another user's reply by at most that many jobs;
  * past max_pending_replies pending in all, every post is refused (503 assistant_busy
    + Retry-After): back-pressure instead of a reply that silently waits.
- A daily token budget per user: `{prefix}tokens:{user}:{UTC date}` counts the tokens the
  provider reported for the user's replies (the worker adds them); past
  daily_token_budget a post is refused (429 token_budget_spent, Retry-After until UTC
  midnight). GET /api/v1/users/me shows the count.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid

import redis
import redis.asyncio as aioredis

from services.core.settings import Settings

# KEYS: user set, global set. ARGV: now, expiry, member, session prefix, user cap, global cap.
# -1 session busy, -2 user over its cap, -3 everyone over the cap, 1 taken.
TAKE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local prefix = ARGV[4]
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if string.sub(member, 1, #prefix) == prefix then return -1 end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return -2 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then return -3 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
local ttl = math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return 1
"""
SESSION_BUSY, USER_FULL, ALL_FULL, TAKEN = -1, -2, -3, 1
TOKENS_TTL_SECONDS = 2 * 86_400


# One hash tag for both sets: the script that takes a slot touches both, and on a Redis
# Cluster they must share a slot.
def user_key(settings: Settings, user_id: uuid.UUID | str) -> str:
    return f"{settings.redis_prefix}{{replies}}:pending:{user_id}"


def global_key(settings: Settings) -> str:
    return f"{settings.redis_prefix}{{replies}}:pending"


def member(session_id: uuid.UUID | str, message_id: uuid.UUID | str) -> str:
    return f"{session_id}:{message_id}"


def tokens_key(settings: Settings, user_id: uuid.UUID | str, day: dt.date | None = None) -> str:
    day = day or dt.datetime.now(dt.UTC).date()
    return f"{settings.redis_prefix}tokens:{{{user_id}}}:{day.isoformat()}"


def seconds_to_utc_midnight() -> int:
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    return max(1, int((midnight - now).total_seconds()))


# The command side (async) -----------------------------------------------------------------


async def take_slot(client: aioredis.Redis, settings: Settings, user_id: uuid.UUID,
                    session_id: uuid.UUID, message_id: uuid.UUID) -> int:
    """One of SESSION_BUSY, USER_FULL, ALL_FULL, TAKEN."""
    now = time.time()
    result = await client.eval(  # type: ignore[misc]
        TAKE_LUA, 2, user_key(settings, user_id), global_key(settings),
        now, now + settings.reply_slot_seconds, member(session_id, message_id),
        f"{session_id}:", settings.max_pending_replies_per_user, settings.max_pending_replies)
    return int(result)


async def give_back_async(client: aioredis.Redis, settings: Settings, user_id: uuid.UUID,
                          session_id: uuid.UUID, message_id: uuid.UUID) -> None:
    async with client.pipeline(transaction=False) as pipe:
        pipe.zrem(user_key(settings, user_id), member(session_id, message_id))
        pipe.zrem(global_key(settings), member(session_id, message_id))
        await pipe.execute()


async def tokens_today(client: aioredis.Redis, settings: Settings, user_id: uuid.UUID) -> int:
    value = await client.get(tokens_key(settings, user_id))
    return int(value or 0)


# The worker (sync) ------------------------------------------------------------------------


def give_back(client: redis.Redis, settings: Settings, user_id: uuid.UUID | str,
              session_id: uuid.UUID | str, message_id: uuid.UUID | str) -> None:
    """The reply ended (stored, failed, or not needed): its slot is free."""
    with client.pipeline(transaction=False) as pipe:
        pipe.zrem(user_key(settings, user_id), member(session_id, message_id))
        pipe.zrem(global_key(settings), member(session_id, message_id))
        pipe.execute()


def count_tokens(client: redis.Redis, settings: Settings, user_id: uuid.UUID | str,
                 tokens: int) -> None:
    if tokens <= 0:
        return
    key = tokens_key(settings, user_id)
    with client.pipeline(transaction=False) as pipe:
        pipe.incrby(key, tokens)
        pipe.expire(key, TOKENS_TTL_SECONDS)
        pipe.execute()
