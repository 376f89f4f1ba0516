"""The one broker module: the Redis broker from settings, and the messages we send.

Messages carry ids, never objects, and a projector message is only a nudge ("there is
news"): the projector reads the event store from its own checkpoint, so a lost, duplicated or
reordered nudge never loses or doubles anything. Senders enqueue by actor name, so the
command service needs no actor code to send.
"""

from __future__ import annotations

import uuid

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from services.core.settings import Settings

PROJECTOR_QUEUE = "projector"
ASSISTANT_QUEUE = "assistant"
PROJECT_ACTOR = "project_events"
ASSISTANT_ACTOR = "assistant_reply"


def make_broker(settings: Settings) -> RedisBroker:
    """A Redis broker whose keys live under the deployment's prefix."""
    # Socket time-outs: a hung Redis must fail an enqueue, not hang the request behind it.
    broker = RedisBroker(url=settings.redis_url, namespace=f"{settings.redis_prefix}dramatiq",
                         socket_timeout=5, socket_connect_timeout=2)
    broker.declare_queue(PROJECTOR_QUEUE)
    broker.declare_queue(ASSISTANT_QUEUE)
    return broker


def nudge_projector(broker: dramatiq.Broker) -> None:
    broker.enqueue(dramatiq.Message(
        queue_name=PROJECTOR_QUEUE, actor_name=PROJECT_ACTOR, args=(), kwargs={}, options={},
    ))


def request_reply(broker: dramatiq.Broker, session_id: uuid.UUID, message_id: uuid.UUID) -> None:
    """Asks the assistant to answer user message `message_id` in `session_id`."""
    broker.enqueue(dramatiq.Message(
        queue_name=ASSISTANT_QUEUE,
        actor_name=ASSISTANT_ACTOR,
        args=(str(session_id), str(message_id)),
        kwargs={},
        options={},
    ))


def nudge_and_request_reply(
    broker: dramatiq.Broker, session_id: uuid.UUID, message_id: uuid.UUID
) -> tuple[Exception | None, Exception | None]:
    """Both messages of a posted chat in one call (one thread hop for the command service):
    the nudge, then the reply request, each sent even when the other fails. Returns what
    each raised (None when sent) instead of raising."""
    errors: list[Exception | None] = []
    for send in (lambda: nudge_projector(broker),
                 lambda: request_reply(broker, session_id, message_id)):
        try:
            send()
            errors.append(None)
        except Exception as exc:
            errors.append(exc)
    return errors[0], errors[1]
