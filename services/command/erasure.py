"""Deleting an account (DELETE /api/v1/users/me): everything the user wrote or is, erased.

In one transaction: each live session gets SessionDeleted and loses its text (as
delete-session does), each project the user created loses its title, the user stream gets
UserDeleted and loses e-mail, name and avatar (db/migrations/0031_erase_account.sql), all
these streams are marked deleted, and the credentials and e-mail reservation rows go. The
followers then do the rest: the projector deletes the read-model rows, the analytics
publisher XDELs the user's entries. After the commit the live-relay keys go from Redis.
docs/data-erasure.md says what lingers where.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool
from redis import asyncio as aioredis
from redis import exceptions as redis_errors

from services.command.auth import Caller
from services.command.sessions import PURGE_STREAM_CONTENT
from services.command.store import LOCK_STREAM, append, in_transaction
from services.core.events import SessionDeleted, UserDeleted, user_stream
from services.core.eventstore import MARK_STREAM_DELETED, StreamAppend
from services.core.livewire import latest_key, live_key, stop_key
from services.core.settings import Settings
from services.core.wakeup import Wake
from services.http.auth import unknown_user

log = structlog.get_logger("command.erasure")

LOCK_OWNED_STREAMS = """
SELECT stream_id, stream_type, version FROM event_streams
 WHERE owner_id = %s AND NOT deleted AND stream_type IN ('session', 'project')
 ORDER BY stream_id
   FOR UPDATE
"""
PURGE_PERSONAL_DATA = "SELECT purge_personal_data(%s, %s)"
DELETE_CREDENTIALS = (
    "DELETE FROM user_credentials WHERE user_id = %s",
    "DELETE FROM user_passwords WHERE user_id = %s",
    "DELETE FROM user_emails WHERE user_id = %s",
    "DELETE FROM user_identities WHERE user_id = %s",
)


async def delete_account(pool: AsyncConnectionPool[Any], redis: aioredis.Redis,
                         wake: Wake, settings: Settings, caller: Caller) -> None:
    user_stream_id = user_stream(caller.user_id)

    async def work(conn: psycopg.AsyncConnection[Any]) -> list[str]:
        cur = await conn.execute(LOCK_STREAM, (user_stream_id,))
        row = await cur.fetchone()
        if row is None or row[0] != "user" or row[3]:
            raise unknown_user()
        user_version = int(row[2])
        owned = await (await conn.execute(LOCK_OWNED_STREAMS, (caller.user_id,))).fetchall()
        sessions = []
        for stream_id, stream_type, version in owned:
            if stream_type == "session":
                session_id = uuid.UUID(stream_id.removeprefix("session-"))
                await append(conn, [StreamAppend(
                    stream_id=stream_id, expected_version=version,
                    events=[SessionDeleted(session_id=session_id)])], caller.event_metadata())
                await conn.execute(PURGE_STREAM_CONTENT, (stream_id, version + 1))
                sessions.append(session_id)
            else:
                await conn.execute(PURGE_STREAM_CONTENT, (stream_id, version + 1))
            await conn.execute(MARK_STREAM_DELETED, (stream_id,))
        await append(conn, [StreamAppend(
            stream_id=user_stream_id, expected_version=user_version,
            events=[UserDeleted(user_id=caller.user_id)])], caller.event_metadata())
        await conn.execute(PURGE_PERSONAL_DATA, (user_stream_id, user_version + 1))
        await conn.execute(MARK_STREAM_DELETED, (user_stream_id,))
        for statement in DELETE_CREDENTIALS:
            await conn.execute(statement, (caller.user_id,))
        return sessions

    sessions = await in_transaction(pool, work)
    keys = [key(settings, s) for s in sessions for key in (live_key, latest_key, stop_key)]
    try:
        if keys:
            await redis.delete(*keys)
    except redis_errors.RedisError as exc:  # they expire with live_stream_ttl_seconds anyway
        log.warning("account_live_keys_left", error=str(exc), keys=len(keys))
    log.info("account_deleted", sessions=len(sessions))
    await wake()
