"""Admission of chats in real Redis (services/core/reply_slots.py): the caps per session,
per user and in all, and slots that free themselves."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import redis.asyncio as aioredis

from services.core import reply_slots
from services.core.settings import Settings


def _run(settings: Settings, steps):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            return await steps(client)
        finally:
            await client.aclose()
    return asyncio.run(main())


def test_caps_per_session_per_user_and_in_all(settings: Settings) -> None:
    s = msgspec.structs.replace(settings, redis_prefix=f"{settings.redis_prefix}slots-"
                                f"{uuid.uuid4().hex[:6]}:", max_pending_replies_per_user=2,
                                max_pending_replies=3)
    alice, bob, carol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    session = uuid.uuid4()

    async def steps(client: aioredis.Redis) -> list[int]:
        take = reply_slots.take_slot
        return [
            await take(client, s, alice, session, uuid.uuid4()),
            await take(client, s, alice, session, uuid.uuid4()),  # same session: busy
            await take(client, s, alice, uuid.uuid4(), uuid.uuid4()),
            await take(client, s, alice, uuid.uuid4(), uuid.uuid4()),  # alice is full
            await take(client, s, bob, uuid.uuid4(), uuid.uuid4()),
            await take(client, s, carol, uuid.uuid4(), uuid.uuid4()),  # everyone is full
        ]

    assert _run(s, steps) == [reply_slots.TAKEN, reply_slots.SESSION_BUSY, reply_slots.TAKEN,
                              reply_slots.USER_FULL, reply_slots.TAKEN, reply_slots.ALL_FULL]


def test_a_slot_given_back_or_expired_is_free_again(settings: Settings) -> None:
    s = msgspec.structs.replace(settings, redis_prefix=f"{settings.redis_prefix}slots-"
                                f"{uuid.uuid4().hex[:6]}:", max_pending_replies_per_user=1,
                                reply_slot_seconds=0.5)
    user, session, message = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    async def steps(client: aioredis.Redis) -> list[int]:
        take = reply_slots.take_slot
        results = [await take(client, s, user, session, message),
                   await take(client, s, user, session, uuid.uuid4())]
        await reply_slots.give_back_async(client, s, user, session, message)
        results.append(await take(client, s, user, session, uuid.uuid4()))
        await asyncio.sleep(1.0)  # never given back: it runs out
        results.append(await take(client, s, user, session, uuid.uuid4()))
        return results

    assert _run(s, steps) == [reply_slots.TAKEN, reply_slots.SESSION_BUSY, reply_slots.TAKEN,
                              reply_slots.TAKEN]


def test_stream_leases_are_capped_per_user_per_ip_and_in_all(settings: Settings) -> None:
    from services.http.stream_leases import StreamLease

    s = msgspec.structs.replace(settings, redis_prefix=f"{settings.redis_prefix}leases-"
                                f"{uuid.uuid4().hex[:6]}:", max_streams_per_user=2,
                                max_streams_per_ip=3, max_streams=4)
    alice, bob, carol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    async def steps(client: aioredis.Redis) -> list[bool]:
        async def take(user: uuid.UUID, ip: str) -> bool:
            return await StreamLease.acquire(client, s, user, ip) is not None

        results = [await take(alice, "a"), await take(alice, "a"),
                   await take(alice, "b"),  # alice's cap
                   await take(bob, "a"),
                   await take(bob, "a"),  # address a's cap
                   await take(bob, "b"),
                   await take(carol, "c")]  # everyone's cap
        lease = await StreamLease.acquire(client, msgspec.structs.replace(s, max_streams=5),
                                          carol, "c")
        assert lease is not None
        await lease.release()
        results.append(not await take(carol, "c"))  # given back, yet still 4 held of 4
        return results

    assert _run(s, steps) == [True, True, False, True, False, True, False, True]
