"""The per-user cap on concurrent live streams, held across every service instance."""

from __future__ import annotations

import secrets
import time
import uuid

import redis.asyncio as aioredis

from services.core.settings import Settings


def streams_key(settings: Settings, user_id: uuid.UUID | str) -> str:
    # hash-tagged by user: one key (one Redis Cluster slot) per user
    return f"{settings.redis_prefix}streams:{{{user_id}}}"


class StreamLease:
    """One open stream of a user, counted in Redis so the cap holds across every service
    instance (and both services). Each lease is a member of a sorted set scored by its
    expiry: a process that dies without releasing frees its slots when the lease runs out,
    and live streams renew theirs while they run (at least once per heartbeat)."""

    def __init__(self, client: aioredis.Redis, key: str, token: str, seconds: float) -> None:
        self._client, self._key, self._token, self._seconds = client, key, token, seconds
        self._renewed = time.monotonic()

    @classmethod
    async def acquire(
        cls, client: aioredis.Redis, settings: Settings, user_id: uuid.UUID
    ) -> StreamLease | None:
        """A lease, or None when the user already has settings.max_streams_per_user."""
        key = streams_key(settings, user_id)
        seconds = 3 * settings.sse_heartbeat_seconds + 10
        token = secrets.token_hex(8)
        now = time.time()
        async with client.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {token: now + seconds})
            pipe.zcard(key)
            pipe.expire(key, int(seconds) + 1)
            _, _, count, _ = await pipe.execute()
        if count > settings.max_streams_per_user:
            await client.zrem(key, token)
            return None
        return cls(client, key, token, seconds)

    async def renew(self) -> None:
        if time.monotonic() - self._renewed < self._seconds / 3:
            return
        self._renewed = time.monotonic()
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.zadd(self._key, {self._token: time.time() + self._seconds}, xx=True)
            pipe.expire(self._key, int(self._seconds) + 1)
            await pipe.execute()

    async def release(self) -> None:
        await self._client.zrem(self._key, self._token)
