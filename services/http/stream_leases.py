"""The caps on concurrent live streams (per user, per client IP, and in all), held across
every service instance."""

from __future__ import annotations

import secrets
import time
import uuid

import redis.asyncio as aioredis

from services.core.settings import Settings
from services.http.errors import ApiError


def streams_key(settings: Settings, user_id: uuid.UUID | str) -> str:
    # hash-tagged by user: one key (one Redis Cluster slot) per user
    return f"{settings.redis_prefix}streams:{{{user_id}}}"


# The per-user, per-IP and overall sets live in different Cluster slots: a lease's
# pipeline is not a transaction (each set counts its own new member: racing acquires near a
# cap may both be refused, never both admitted past it).
def ip_streams_key(settings: Settings, ip: str) -> str:
    return f"{settings.redis_prefix}streams-ip:{{{ip}}}"


def all_streams_key(settings: Settings) -> str:
    return f"{settings.redis_prefix}streams-all"


class StreamLease:
    """One open stream of a user, counted in Redis so the cap holds across every service
    instance (and both services). Each lease is a member of a sorted set scored by its
    expiry: a process that dies without releasing frees its slots when the lease runs out,
    and live streams renew theirs while they run (at least once per heartbeat)."""

    def __init__(self, client: aioredis.Redis, keys: list[str], token: str,
                 seconds: float) -> None:
        self._client, self._keys, self._token, self._seconds = client, keys, token, seconds
        self._renewed = time.monotonic()

    @classmethod
    async def acquire(
        cls, client: aioredis.Redis, settings: Settings, user_id: uuid.UUID,
        ip: str | None = None,
    ) -> StreamLease | None:
        """A lease, or None when the user already has settings.max_streams_per_user, the
        client IP settings.max_streams_per_ip, or everyone settings.max_streams."""
        caps = [(streams_key(settings, user_id), settings.max_streams_per_user)]
        if ip is not None and settings.max_streams_per_ip > 0:
            caps.append((ip_streams_key(settings, ip), settings.max_streams_per_ip))
        if settings.max_streams > 0:
            caps.append((all_streams_key(settings), settings.max_streams))
        seconds = 3 * settings.sse_heartbeat_seconds + 10
        token = secrets.token_hex(8)
        now = time.time()
        async with client.pipeline(transaction=False) as pipe:
            for key, _ in caps:
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.zadd(key, {token: now + seconds})
                pipe.zcard(key)
                pipe.expire(key, int(seconds) + 1)
            results = await pipe.execute()
        counts = results[2::4]
        keys = [key for key, _ in caps]
        if any(count > cap for count, (_, cap) in zip(counts, caps, strict=True)):
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zrem(key, token)
                await pipe.execute()
            return None
        return cls(client, keys, token, seconds)

    async def renew(self) -> None:
        if time.monotonic() - self._renewed < self._seconds / 3:
            return
        self._renewed = time.monotonic()
        async with self._client.pipeline(transaction=False) as pipe:
            for key in self._keys:
                pipe.zadd(key, {self._token: time.time() + self._seconds}, xx=True)
                pipe.expire(key, int(self._seconds) + 1)
            await pipe.execute()

    async def release(self) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for key in self._keys:
                pipe.zrem(key, self._token)
            await pipe.execute()


def too_many_streams(settings: Settings) -> ApiError:
    return ApiError("too_many_streams",
                    f"at most {settings.max_streams_per_user} open streams per user, "
                    f"{settings.max_streams_per_ip} per address", retry_after=5)
