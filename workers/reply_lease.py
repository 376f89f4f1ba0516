"""The lease a reply holds while it is written: it makes a reply run once, and it tells
when the worker writing one died.

A reply being written holds `{prefix}{replies}:lease:<message_id>` (owner token, expiring
after settings.reply_lease_seconds, renewed by a small thread every third of that while the
reply runs) and an entry in the hash `{prefix}{replies}:inflight` (message id → session id;
`{replies}` is a Redis Cluster hash tag: both in one slot). A
duplicate delivery finds the lease taken and leaves. A worker killed mid-reply stops
renewing; once its lease has run out, another worker's sweep (workers/main.py) takes the
entry (abandoned_replies) and records the reply as failed (AssistantReplyFailed with code
`worker_lost`, and a live `error` event for clients still following it).

Failed rather than re-run: clients may already have seen part of the reply, the user message
is kept, and the user can simply post again; a re-run would stream a second, different reply
under the same request. If the dead worker's message is redelivered later, the assistant
sees the failure in the store and leaves it alone.

Dramatiq alone would not do: it gives a dead worker's unacked message back only after the
broker's heartbeat timeout (a minute or more).
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from workers.runtime import WorkerRuntime

log = structlog.get_logger("reply_lease")

WORKER_LOST = "worker_lost"

# Take the lease and register the reply in one step, or leave both alone. A reply still
# registered in flight was started by a worker that died (its lease ran out, the sweep has
# not recorded it yet): a redelivery of its job (RabbitMQ hands it back at once) must not
# start it again, the sweep records it as failed.
_CLAIM_LUA = """
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
    return 0
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
    return 1
end
return 0
"""
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    redis.call('HDEL', KEYS[2], ARGV[2])
    return 1
end
return 0
"""

# The lease and the in-flight hash change together in one script, so they share a Redis
# Cluster hash tag ({replies}: one slot for every reply in flight).
def lease_key(runtime: WorkerRuntime, message_id: str) -> str:
    return f"{runtime.settings.redis_prefix}{{replies}}:lease:{message_id}"


def inflight_key(runtime: WorkerRuntime) -> str:
    return f"{runtime.settings.redis_prefix}{{replies}}:inflight"


def _lease_ms(runtime: WorkerRuntime) -> int:
    return max(100, int(runtime.settings.reply_lease_seconds * 1000))


@contextmanager
def reply_lease(runtime: WorkerRuntime, session_id: str, message_id: str) -> Iterator[bool]:
    """Holds the reply's lease while the block runs; yields False (holding nothing) when
    another worker is writing this reply right now."""
    keys = [lease_key(runtime, message_id), inflight_key(runtime)]
    token = f"{socket.gethostname()}:{threading.get_native_id()}:{secrets.token_hex(6)}"
    claim = runtime.redis.register_script(_CLAIM_LUA)
    if not claim(keys=keys, args=[token, _lease_ms(runtime), message_id, session_id]):
        log.info("reply_skipped", reason="in_progress_elsewhere", message_id=message_id)
        yield False
        return
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(runtime, keys[0], token, stop),
                               name="reply-lease", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        stop.set()
        renewer.join(timeout=5)
        try:
            runtime.redis.register_script(_RELEASE_LUA)(keys=keys, args=[token, message_id])
        except Exception:  # Redis down: the lease runs out and the sweep sees it answered
            log.warning("reply_lease_not_released", message_id=message_id, exc_info=True)


def _renew(runtime: WorkerRuntime, key: str, token: str, stop: threading.Event) -> None:
    renew = runtime.redis.register_script(_RENEW_LUA)
    every = runtime.settings.reply_lease_seconds / 3
    while not stop.wait(every):
        try:
            renew(keys=[key], args=[token, _lease_ms(runtime)])
        except Exception:  # keep trying: Redis may be back before the lease runs out
            log.warning("reply_lease_not_renewed", key=key, exc_info=True)



def abandoned_replies(runtime: WorkerRuntime) -> list[tuple[str, str]]:
    """Takes every reply whose worker stopped renewing its lease: (message id, session id)
    pairs that this caller must now record as failed."""
    client = runtime.redis
    inflight: dict[Any, Any] = client.hgetall(inflight_key(runtime))  # type: ignore[assignment]
    if not inflight:
        return []
    entries = [(_text(m), _text(s)) for m, s in inflight.items()]
    with client.pipeline(transaction=False) as pipe:
        for message_id, _ in entries:
            pipe.exists(lease_key(runtime, message_id))
        alive = pipe.execute()
    taken: list[tuple[str, str]] = []
    for (message_id, session_id), held in zip(entries, alive, strict=True):
        # HDEL decides which sweeper (of several workers) records it; a reply that
        # finished meanwhile removed its entry and is left alone.
        if held or not client.hdel(inflight_key(runtime), message_id):
            continue
        log.warning("reply_abandoned", session_id=session_id, message_id=message_id)
        taken.append((message_id, session_id))
    return taken


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
