"""BROKER_URL picks Dramatiq's broker: Redis by default, RabbitMQ for amqp:// URLs."""

from __future__ import annotations

from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from services.core.settings import Settings
from workers.broker import make_broker


def test_the_redis_broker_is_the_default() -> None:
    broker = make_broker(Settings.from_env({}))
    assert isinstance(broker, RedisBroker)


def test_an_amqp_url_selects_rabbitmq_with_bounded_time_outs() -> None:
    broker = make_broker(Settings.from_env(
        {"BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/chat?socket_timeout=2"}))
    assert isinstance(broker, RabbitmqBroker)
    params = broker.parameters
    assert params.virtual_host == "chat"
    assert params.socket_timeout == 2  # the URL's own setting wins
    assert params.blocked_connection_timeout == 5  # bounded by default
    assert broker.confirm_delivery
