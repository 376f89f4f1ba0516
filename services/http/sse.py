"""The live reply relay's reader and the SSE responses built on it, shared by the query
service's GET .../stream and the command service's streamed POST /chat. The format is
services/core/livewire.py's; the writer is the assistant's (workers/live_writer.py)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis
import structlog
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from services.core.livewire import (
    ERROR,
    FINAL,
    STARTED,
    STOP_TTL_SECONDS,
    latest_key,
    live_key,
    stop_key,
    text,
)
from services.core.metrics import SSE_CONNECTIONS
from services.core.settings import Settings
from services.http.stream_leases import StreamLease

log = structlog.get_logger("live")

_STREAM_ID = re.compile(r"^\d+-\d+$")
_MAX_SEQ = 2**64 - 1
_READ_COUNT = 256
# One XREAD blocks at most this long, then the loop reads again: redis-py 8 clients time a
# read out after socket_timeout (5 s by default), and an idle stream's longer block (up to
# a heartbeat, 15 s) then killed the stream mid-response (found by bench/soak.py).
_MAX_BLOCK_SECONDS = 2.0


async def request_stop(client: aioredis.Redis, settings: Settings, session_id: uuid.UUID) -> None:
    """Asks the reply being written in the session to stop. The assistant clears the key
    when it starts a reply, so a stop sent while nothing runs cannot cut the next one short."""
    await client.set(stop_key(settings, session_id), "1", ex=STOP_TTL_SECONDS)


async def forget_session(client: aioredis.Redis, settings: Settings,
                         session_id: uuid.UUID) -> None:
    """After a session is deleted: stop a reply being written, and remove its live relay
    (which holds the whole reply text) now rather than when it expires."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(stop_key(settings, session_id), "1", ex=STOP_TTL_SECONDS)
        pipe.delete(live_key(settings, session_id), latest_key(settings, session_id))
        await pipe.execute()


def _before(entry_id: str) -> str:
    """The largest stream id below `entry_id`: XREAD is exclusive, and we want to read the
    `started` entry itself."""
    ms, seq = (int(part) for part in entry_id.split("-"))
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{_MAX_SEQ}" if ms > 0 else "0-0"


def heartbeat() -> ServerSentEventMessage:
    # A comment line: keeps proxies and clients from timing the connection out, and is
    # ignored by EventSource (data=None: no `data:` line, so no event is dispatched).
    return ServerSentEventMessage(comment="heartbeat", data=None)


def _entries(response: Any) -> list[tuple[str, dict[str, str]]]:
    """XREAD's answer (RESP2 list or RESP3 dict) → [(id, fields)]."""
    if not response:
        return []
    streams = response.values() if isinstance(response, dict) else (r[1] for r in response)
    out: list[tuple[str, dict[str, str]]] = []
    for entries in streams:
        for entry_id, fields in entries:
            out.append((text(entry_id), {text(k): text(v) for k, v in fields.items()}))
    return out


class _Cursor:
    """Where to start reading and which reply to follow; see relay()."""

    def __init__(self, position: str, target: str | None, following: bool) -> None:
        self.position = position
        self.target = target
        self.following = following


async def _start(
    client: aioredis.Redis,
    settings: Settings,
    session_id: str,
    last_event_id: str | None,
    reply_to: str | None,
) -> _Cursor:
    if last_event_id is not None:
        # Resume: follow the reply the client was in. If that entry ended its reply (or is
        # gone), the client has all of it and gets the next reply to start.
        rows = await client.xrange(
            live_key(settings, session_id), last_event_id, last_event_id, count=1
        )
        if rows:
            fields = {text(k): text(v) for k, v in (rows[0][1] or {}).items()}
            if fields.get("type") in FINAL:
                return _Cursor(last_event_id, reply_to, following=False)
            return _Cursor(last_event_id, reply_to or fields.get("reply"), following=True)
        return _Cursor(last_event_id, reply_to, following=reply_to is None)
    latest = await client.get(latest_key(settings, session_id))
    # No latest reply: the stream is empty or expired with it (they expire together), so
    # reading from the very beginning catches the next reply's `started` without a race.
    start = _before(text(latest)) if latest else "0-0"
    return _Cursor(start, reply_to, following=False)


async def relay(
    client: aioredis.Redis,
    settings: Settings,
    session_id: uuid.UUID | str,
    last_event_id: str | None = None,
    *,
    reply_to: uuid.UUID | str | None = None,
    start_timeout: float | None = None,
) -> AsyncGenerator[ServerSentEventMessage, None]:
    """One reply's SSE events: `delta` ({"text"}), `message` (the stored message), then
    `done` or `error`, each with id = its Redis entry id; heartbeat comments while idle.

    - no last_event_id: the latest reply from its start (waiting for one if there is none);
    - last_event_id: exactly the entries after it (a malformed id is ignored);
    - reply_to: the reply to that user message only, waiting for it to start (POST /chat);
      start_timeout then bounds the wait, ending with an `error` event (no id).
    Ends after `done` or `error`. Cancelling or closing it leaves nothing behind: the only
    resource is a pooled connection that redis-py returns (or drops) on cancellation.
    """
    sid = str(session_id)
    target_reply = str(reply_to) if reply_to is not None else None
    if last_event_id is not None and not _STREAM_ID.match(last_event_id.strip()):
        log.info("live_bad_last_event_id", session_id=sid, last_event_id=last_event_id[:64])
        last_event_id = None
    cursor = await _start(
        client, settings, sid, last_event_id and last_event_id.strip(), target_reply
    )
    key = live_key(settings, sid)
    beat = settings.sse_heartbeat_seconds
    last_sent = time.monotonic()
    deadline = None if start_timeout is None or cursor.following else last_sent + start_timeout
    try:
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                yield ServerSentEventMessage(
                    event=ERROR,
                    data=json.dumps(
                        {
                            "error": "reply_not_started",
                            "detail": "the reply did not start in time",
                            "reply_to": target_reply,
                        }
                    ),
                )
                return
            wait = beat - (now - last_sent)
            if wait <= 0:
                yield heartbeat()
                last_sent = time.monotonic()
                continue
            if deadline is not None:
                wait = min(wait, deadline - now)
            response = await client.xread(
                {key: cursor.position}, count=_READ_COUNT,
                block=max(1, int(min(wait, _MAX_BLOCK_SECONDS) * 1000)),
            )
            for entry_id, fields in _entries(response):
                cursor.position = entry_id
                kind, reply = fields.get("type", ""), fields.get("reply", "")
                if kind == STARTED:
                    if not cursor.following and cursor.target in (None, reply):
                        cursor.target, cursor.following, deadline = reply, True, None
                    continue
                if not cursor.following:
                    continue
                if cursor.target is None:
                    cursor.target = reply
                if reply != cursor.target:
                    continue  # another reply written concurrently in the same session
                yield ServerSentEventMessage(event=kind, id=entry_id, data=fields.get("data"))
                last_sent = time.monotonic()
                if kind in FINAL:
                    return
    finally:
        log.debug("live_relay_closed", session_id=sid, position=cursor.position)


async def sse_stream(
    client: aioredis.Redis,
    settings: Settings,
    session_id: uuid.UUID | str,
    last_event_id: str | None = None,
    *,
    reply_to: uuid.UUID | str | None = None,
    start_timeout: float | None = None,
    prelude: Iterable[ServerSentEventMessage] = (),
    lease: StreamLease | None = None,
) -> AsyncGenerator[ServerSentEventMessage, None]:
    """The body of a live SSE response: `prelude` (POST /chat's `session` event), then
    relay(). Renews `lease` as events and heartbeats flow and releases it however the
    stream ends, a client disconnect included. Ends after settings.max_stream_seconds (at
    the next event or heartbeat): no connection is held forever."""
    SSE_CONNECTIONS.inc()
    try:
        for event in prelude:
            yield event
        async with aclosing(
            relay(
                client,
                settings,
                session_id,
                last_event_id,
                reply_to=reply_to,
                start_timeout=start_timeout,
            )
        ) as events:
            ends = time.monotonic() + settings.max_stream_seconds
            async for event in events:
                if lease is not None:
                    await lease.renew()
                yield event
                if time.monotonic() >= ends:
                    # the client resumes with Last-Event-ID (EventSource does it by itself)
                    log.info("stream_lifetime_reached", session_id=str(session_id))
                    return
    finally:
        SSE_CONNECTIONS.dec()
        if lease is not None:
            # Litestar cancels the response's task group on disconnect and anyio keeps
            # cancelling every await in that scope: shield the release so it happens.
            with anyio.CancelScope(shield=True):
                await lease.release()


class SseEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a text/event-stream body, for the OpenAPI documents: tools read such a
    schema as the shape of each event (OpenAPI 3.2's itemSchema), not of the whole body."""

    event: str | None = None
    data: str | None = None
    id: str | None = None
    retry: int | None = None


def sse_response(events: AsyncIterator[ServerSentEventMessage],
                 headers: dict[str, str] | None = None) -> ServerSentEvent:
    """A text/event-stream response over sse_stream(); Litestar's own headers already turn
    off proxy buffering (X-Accel-Buffering: no) and caching."""
    # 200 whatever the route's default: POST /chat's is 202, for its JSON answer
    return ServerSentEvent(events, status_code=200, headers=headers)


def live_redis(state: Any, settings: Settings) -> aioredis.Redis:
    """The app's asyncio Redis client: `state.redis` when the app's lifespan opened one,
    else one made on first use and kept on the state (the apps' lifespans predate this)."""
    client = getattr(state, "redis", None) or getattr(state, "live_redis", None)
    if client is None:
        client = aioredis.Redis.from_url(settings.redis_url)
        state.live_redis = client
    return client  # type: ignore[no-any-return]
