"""The one broker module: the broker from settings (Redis by default, RabbitMQ in
production), and the one message we send.

Messages carry ids, never objects. Only the workers enqueue (the reply dispatcher,
workers/dispatcher.py); the command side hands over through the event store alone.
"""

from __future__ import annotations

import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from services.core.settings import Settings

ASSISTANT_QUEUE = "assistant"
ASSISTANT_ACTOR = "assistant_reply"


# pika's defaults let a dead or blocked RabbitMQ hang an enqueue (and the dispatcher behind
# it) for minutes: the same bounds as the Redis broker's socket time-outs, unless the URL sets
# its own (pika reads these from the URL's query string).
_AMQP_DEFAULTS = {"socket_timeout": "5", "stack_timeout": "10",
                  "blocked_connection_timeout": "5", "connection_attempts": "1"}


def _amqp_url(url: str) -> str:
    parts = urlsplit(url)
    query = dict(_AMQP_DEFAULTS, **dict(parse_qsl(parts.query)))
    return urlunsplit(parts._replace(query=urlencode(query)))


def make_broker(settings: Settings) -> dramatiq.Broker:
    """The broker settings.broker_url names: `amqp://` / `amqps://` is Dramatiq's RabbitMQ
    broker, anything else (by default settings.redis_url) its Redis broker. Both get the same
    actors, Dramatiq's default middleware (retries, time limits) and dead-letter storage: the
    Redis broker's `<namespace>.XQ` sets, RabbitMQ's `<queue>.XQ` queues."""
    url = settings.broker_url or settings.redis_url
    broker: dramatiq.Broker
    if urlsplit(url).scheme in ("amqp", "amqps"):
        # confirm_delivery: an enqueue returns once RabbitMQ holds the message, as a Redis
        # LPUSH does, and a queue deleted under us is declared again.
        broker = RabbitmqBroker(url=_amqp_url(url), confirm_delivery=True)
    else:
        # Socket time-outs: a hung Redis must fail an enqueue, not hang the dispatcher.
        broker = RedisBroker(url=url, namespace=f"{settings.redis_prefix}dramatiq",
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
