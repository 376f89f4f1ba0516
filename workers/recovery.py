"""Replies that a dead worker left half-written, and replies nobody was asked for.

Dramatiq gives a dead worker's unacked message back only after the broker's heartbeat
timeout (a minute or more), and a reply request lost between the command's commit and its
enqueue (Redis down or restarted) is never delivered at all. Neither may leave a user
waiting, so the worker's sweep (workers/main.py) runs ReplyRecovery:

- A reply being written holds a lease: `{prefix}reply:{message_id}` (owner token, expiring
  after settings.reply_lease_seconds, renewed by a small thread every third of that while
  the reply runs) and an entry in the hash `{prefix}replies:inflight` (message id → session
  id). The lease also makes a reply run once: a duplicate delivery finds it taken and leaves.
  A worker killed mid-reply stops renewing; once its lease has run out, the sweep finds the
  entry without a lease and records the reply as failed (AssistantReplyFailed with code
  `worker_lost`, and a live `error` event for clients still following it).

  Failed rather than re-run: clients may already have seen part of the reply, the user
  message is kept, and the user can simply post again; a re-run would stream a second,
  different reply under the same request. If the dead worker's message is redelivered
  later, the assistant sees the failure in the store and leaves it alone.

- A user message posted through the API (its event metadata carries a request id) that has
  neither a reply nor a failure after settings.reply_request_grace_seconds, and no reply
  being written, is asked for again, once per message (guarded by
  `{prefix}reply-requested:{message_id}` for a window). Only messages younger than
  settings.reply_recovery_window_seconds are considered (0 turns this off); the scan reads
  the event store's tail by position, from a low-water mark kept in memory.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import structlog

from workers.broker import request_reply
from workers.runtime import WorkerRuntime

log = structlog.get_logger("recovery")

WORKER_LOST = "worker_lost"
UNANSWERED_BATCH = 100
SCAN_EVERY_SWEEPS = 5  # the unanswered scan reads the database: less often than leases
INITIAL_TAIL_EVENTS = 100_000  # how far back a fresh worker looks (bounded by the window)

# Take the lease and register the reply in one step, or leave both alone.
_CLAIM_LUA = """
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

# User messages posted through the API (request_id in the metadata) since `low`, older than
# the grace period, in a live session, with neither a reply nor a failure recorded after it.
UNANSWERED = """
SELECT q.position, q.data->>'session_id', q.data->>'message_id'
  FROM events q
  JOIN event_streams s ON s.stream_id = q.stream_id AND NOT s.deleted
 WHERE q.position > %(low)s
   AND q.type = 'MessagePosted' AND q.data->>'role' = 'user'
   AND q.metadata->>'request_id' IS NOT NULL
   AND q.recorded_at < now() - make_interval(secs => %(grace)s)
   AND q.recorded_at > now() - make_interval(secs => %(window)s)
   AND NOT EXISTS (
       SELECT 1 FROM events a
        WHERE a.stream_id = q.stream_id AND a.version > q.version
          AND a.type IN ('MessagePosted', 'AssistantReplyFailed')
          AND a.data->>'reply_to' = q.data->>'message_id')
 ORDER BY q.position
 LIMIT %(limit)s
"""
# Everything at or below the returned position is older than the window: never look again.
EXPIRED_UPTO = """
SELECT coalesce(max(position), %(low)s) FROM events
 WHERE position > %(low)s AND recorded_at < now() - make_interval(secs => %(window)s)
"""
TAIL_START = "SELECT greatest(coalesce(max(position), 0) - %s, 0) FROM events"


def lease_key(runtime: WorkerRuntime, message_id: str) -> str:
    return f"{runtime.settings.redis_prefix}reply:{message_id}"


def inflight_key(runtime: WorkerRuntime) -> str:
    return f"{runtime.settings.redis_prefix}replies:inflight"


def requested_key(runtime: WorkerRuntime, message_id: str) -> str:
    return f"{runtime.settings.redis_prefix}reply-requested:{message_id}"


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


class RecoveryReport(msgspec.Struct, kw_only=True):
    failed: list[str] = msgspec.field(default_factory=list)  # message ids recorded as failed
    requested: list[str] = msgspec.field(default_factory=list)  # message ids asked again


class ReplyRecovery:
    """One per worker process, run from its sweep thread (not thread-safe)."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self._low: int | None = None
        self._sweeps = 0
        self._next = 0.0

    def maybe_run(self) -> RecoveryReport | None:
        """Runs at most every settings.reply_recovery_sweep_seconds."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.runtime.settings.reply_recovery_sweep_seconds
        return self.run()

    def run(self) -> RecoveryReport:
        report = RecoveryReport(failed=self.fail_abandoned())
        self._sweeps += 1
        if self._sweeps % SCAN_EVERY_SWEEPS == 1 or SCAN_EVERY_SWEEPS == 1:
            report.requested = self.request_unanswered()
        if report.failed or report.requested:
            log.info("replies_recovered", failed=report.failed, requested=report.requested)
        return report

    def fail_abandoned(self) -> list[str]:
        """Records every reply whose worker stopped renewing its lease as failed."""
        from workers.assistant import record_interrupted

        client = self.runtime.redis
        inflight: dict[Any, Any] = client.hgetall(inflight_key(self.runtime))  # type: ignore[assignment]
        if not inflight:
            return []
        entries = [(_text(m), _text(s)) for m, s in inflight.items()]
        with client.pipeline(transaction=False) as pipe:
            for message_id, _ in entries:
                pipe.exists(lease_key(self.runtime, message_id))
            alive = pipe.execute()
        failed: list[str] = []
        for (message_id, session_id), held in zip(entries, alive, strict=True):
            # HDEL decides which sweeper (of several workers) records it; a reply that
            # finished meanwhile removed its entry and is left alone.
            if held or not client.hdel(inflight_key(self.runtime), message_id):
                continue
            log.warning("reply_abandoned", session_id=session_id, message_id=message_id)
            if record_interrupted(self.runtime, uuid.UUID(session_id), uuid.UUID(message_id),
                                  WORKER_LOST, "the worker writing the reply stopped"):
                failed.append(message_id)
        return failed

    def request_unanswered(self) -> list[str]:
        """Asks again for replies to API-posted user messages nobody is answering."""
        s = self.runtime.settings
        if s.reply_recovery_window_seconds <= 0:
            return []
        params = {"grace": s.reply_request_grace_seconds,
                  "window": s.reply_recovery_window_seconds, "limit": UNANSWERED_BATCH}
        with self.runtime.pool.connection() as conn:
            if self._low is None:
                row = conn.execute(TAIL_START, (INITIAL_TAIL_EVENTS,)).fetchone()
                self._low = int(row[0]) if row else 0
            rows = conn.execute(UNANSWERED, {**params, "low": self._low}).fetchall()
            expired = conn.execute(EXPIRED_UPTO, {**params, "low": self._low}).fetchone()
            conn.rollback()  # read only; the pool wants the connection idle
        if expired:
            self._low = max(self._low, int(expired[0]))
        client = self.runtime.redis
        requested: list[str] = []
        for _, session_id, message_id in rows:
            if client.exists(lease_key(self.runtime, message_id)):
                continue  # being written right now
            window = max(1, int(s.reply_recovery_window_seconds))
            if not client.set(requested_key(self.runtime, message_id), "1", nx=True, ex=window):
                continue  # asked once already; it is queued or its answer failed quietly
            log.warning("reply_requested_again", session_id=session_id, message_id=message_id)
            request_reply(self.runtime.broker, uuid.UUID(session_id), uuid.UUID(message_id))
            requested.append(message_id)
        return requested


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
