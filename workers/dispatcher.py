"""The reply dispatcher: a user's MessagePosted → the assistant's job.

A follower of the event store (workers/follower.py) with its own checkpoint,
`reply_dispatcher`. For each user message posted through the API (its event metadata carries
a request id; imported history and messages seeded below HTTP carry none) it enqueues the
`assistant_reply` job, and the checkpoint moves only after the enqueue, in the same step: a
message is asked for at least once, whatever crashes or Redis outages come between. The
reply is keyed by the message it answers, so it is written exactly once: the assistant skips
a message already answered (or whose reply failed) and one being answered (the reply lease,
workers/reply_lease.py).

The checkpoint starts at the end of the store when the dispatcher is deployed on an existing
database (db/migrations/0011_reply_dispatcher.sql): history is not answered again.

At least once holds as long as the broker keeps what it acknowledged. A Redis without
persistence that restarts (or is flushed) loses the jobs it held, which is the one way a
message can go unasked: the worker's sweep keeps a marker key in that Redis, and when it
finds it gone it moves the checkpoint back before the oldest API message of the last
settings.reply_recovery_window_seconds (and before the checkpoint) that has neither a reply
nor a recorded failure, so those are asked for again (the assistant skips any that turn out
answered). On the first start against a Redis the marker is missing too: unanswered
messages of that window are then asked for, which is what a user waiting on one wants.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import psycopg
import structlog

from services.core.events import MessagePosted
from services.core.eventstore import (
    Checkpoint,
    RecordedEvent,
    claim_checkpoint_sync,
    save_checkpoint_sync,
)
from services.core.settings import Settings
from services.core.wakeup import wake_followers_sync
from workers.broker import request_reply
from workers.follower import Follower
from workers.runtime import WorkerRuntime

log = structlog.get_logger("dispatcher")

DISPATCHER = "reply_dispatcher"
BATCH_SIZE = 200

# The oldest user message posted through the API, in the window and before the checkpoint,
# with neither a reply nor a failure after it in a live session.
OLDEST_UNANSWERED = """
SELECT q.txid::text::bigint, q.position FROM events q
  JOIN event_streams s ON s.stream_id = q.stream_id AND NOT s.deleted
 WHERE q.type = 'MessagePosted' AND q.data->>'role' = 'user'
   AND q.metadata->>'request_id' IS NOT NULL
   AND q.recorded_at > now() - make_interval(secs => %(window)s)
   AND (q.txid, q.position) <= (%(txid)s::text::xid8, %(position)s)
   AND NOT EXISTS (
       SELECT 1 FROM events a
        WHERE a.stream_id = q.stream_id AND a.version > q.version
          AND a.type IN ('MessagePosted', 'AssistantReplyFailed')
          AND a.data->>'reply_to' = q.data->>'message_id')
 ORDER BY q.txid, q.position
 LIMIT 1
"""


def marker_key(settings: Settings) -> str:
    return f"{settings.redis_prefix}dispatcher:broker-marker"


def asks_for_reply(recorded: RecordedEvent) -> bool:
    e = recorded.event
    return (isinstance(e, MessagePosted) and e.role == "user"
            and recorded.metadata.get("request_id") is not None)


def recover_lost_jobs(runtime: WorkerRuntime) -> int | None:
    """Run by the worker's sweep: when the marker in the broker's Redis is gone (and is now
    set again), moves the checkpoint back before the oldest unanswered message and wakes the
    dispatcher. Returns the position it moved back to, if it did."""
    s = runtime.settings
    if not runtime.wake_redis.set(marker_key(s), b"1", nx=True):
        return None
    with runtime.pool.connection() as conn, conn.transaction():
        at = claim_checkpoint_sync(conn, DISPATCHER, wait=True)
        assert at is not None  # waited for it
        row = conn.execute(OLDEST_UNANSWERED, {
            "window": s.reply_recovery_window_seconds, "txid": str(at.txid),
            "position": at.position}).fetchone()
        if row is None:
            return None
        save_checkpoint_sync(conn, DISPATCHER, Checkpoint(row[0], row[1] - 1))
    log.warning("replies_requested_again", reason="broker_lost_jobs", from_position=row[1])
    wake_followers_sync(runtime.wake_redis, s)
    return int(row[1])


def dispatcher_follower(broker: dramatiq.Broker, batch_size: int = BATCH_SIZE) -> Follower:
    def handle(conn: psycopg.Connection[Any], batch: list[RecordedEvent]) -> list[RecordedEvent]:
        for recorded in batch:
            e = recorded.event
            if asks_for_reply(recorded) and isinstance(e, MessagePosted):
                request_reply(broker, e.session_id, e.message_id)
                log.info("reply_requested", session_id=str(e.session_id),
                         message_id=str(e.message_id), position=recorded.position,
                         request_id=recorded.metadata.get("request_id"))
        return batch

    return Follower(DISPATCHER, handle, batch_size)
