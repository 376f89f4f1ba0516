"""The one broker module: the Redis broker from settings, and the one message we send.

Messages carry ids, never objects. Only the workers enqueue (the reply dispatcher,
workers/dispatcher.py); the command side hands over through the event store alone.
"""

from __future__ import annotations

import uuid

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from services.core.settings import Settings

ASSISTANT_QUEUE = "assistant"
ASSISTANT_ACTOR = "assistant_reply"


def make_broker(settings: Settings) -> RedisBroker:
    """A Redis broker whose keys live under the deployment's prefix."""
    # Socket time-outs: a hung Redis must fail an enqueue, not hang the dispatcher.
    broker = RedisBroker(url=settings.redis_url, namespace=f"{settings.redis_prefix}dramatiq",
                         socket_timeout=5, socket_connect_timeout=2)
    broker.declare_queue(ASSISTANT_QUEUE)
    return broker


def request_reply(broker: dramatiq.Broker, session_id: uuid.UUID, message_id: uuid.UUID) -> None:
    """Asks the assistant to answer user message `message_id` in `session_id`."""
    broker.enqueue(dramatiq.Message(
        queue_name=ASSISTANT_QUEUE,
        actor_name=ASSISTANT_ACTOR,
        args=(str(session_id), str(message_id)),
        kwargs={},
        options={},
    ))
