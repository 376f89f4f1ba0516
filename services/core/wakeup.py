"""The wake-up after an append: a Redis PUBLISH that tells the followers "there is news".

The event store is the only hand-off between the command side and the workers: whoever
appends commits first, then publishes this one empty message. The followers (workers/
follower.py) read the store from their own checkpoints, so the message carries nothing, and
a lost one (Redis down, nobody subscribed) only delays them until their sweep.

Why Redis and not PostgreSQL's NOTIFY: a NOTIFY, even in its own transaction after the
append's commit, is a write transaction of its own that takes the server's one global
notify lock and waits for a WAL flush while holding it; every wake-up would queue there.
A PUBLISH costs the database nothing, both sides already hold a Redis client, and it is as
fast (bench/append.py --wake measures the appends with it).
"""

from __future__ import annotations

import asyncio

import redis
import structlog
from redis import asyncio as aioredis

from services.core.settings import Settings

log = structlog.get_logger("wakeup")

# A wake-up is best effort: a Redis that hangs must not hold a request that has committed.
PUBLISH_TIMEOUT_SECONDS = 1.0


def channel(settings: Settings) -> str:
    return f"{settings.redis_prefix}events:appended"


def wake_followers_sync(client: redis.Redis, settings: Settings) -> None:
    """After a commit, from a worker thread. Never raises: the sweep covers a lost one."""
    try:
        client.publish(channel(settings), b"")
    except Exception as exc:
        log.warning("wakeup_failed", error=repr(exc))


class Wake:
    """The services' wake-up, called after every commit that appended events. The request
    does not wait for it: the PUBLISH runs as a task of its own, so a slow or absent Redis
    never delays an answer whose events are already stored. One PUBLISH at a time per
    process: commits made while one is on its way share the next one (the followers read
    everything new whatever woke them), so a busy service sends one per Redis round trip,
    not one per commit."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self._client = client
        self._channel = channel(settings)
        self._sending: asyncio.Task[None] | None = None
        self._again = False

    async def __call__(self) -> None:
        if self._sending is not None and not self._sending.done():
            self._again = True  # the PUBLISH on its way may predate this commit
            return
        self._sending = asyncio.ensure_future(self._publish())

    async def _publish(self) -> None:
        """Never raises: the events are stored, and the sweep covers a lost wake-up."""
        while True:
            self._again = False
            try:
                await asyncio.wait_for(self._client.publish(self._channel, b""),
                                       PUBLISH_TIMEOUT_SECONDS)
            except Exception as exc:
                log.warning("wakeup_failed", error=repr(exc))
            if not self._again:
                return
