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
"""

from __future__ import annotations

from typing import Any

import dramatiq
import psycopg
import structlog

from services.core.events import MessagePosted
from services.core.eventstore import RecordedEvent
from workers.broker import request_reply
from workers.follower import Follower

log = structlog.get_logger("dispatcher")

DISPATCHER = "reply_dispatcher"
BATCH_SIZE = 200


def asks_for_reply(recorded: RecordedEvent) -> bool:
    e = recorded.event
    return (isinstance(e, MessagePosted) and e.role == "user"
            and recorded.metadata.get("request_id") is not None)


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
