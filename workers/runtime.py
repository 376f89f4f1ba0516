"""What a worker process holds: settings, a database pool, Redis and the broker.

Built once at worker boot (or by a test) and handed to the plain functions the actors call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dramatiq
import redis
from psycopg_pool import ConnectionPool

from services.core.db import open_pool
from services.core.settings import Settings
from workers.broker import make_broker


@dataclass
class WorkerRuntime:
    settings: Settings
    pool: ConnectionPool  # as the migrating (owner) user; the projector SETs its own role
    redis: redis.Redis
    broker: dramatiq.Broker
    closed: bool = field(default=False)
    owns_broker: bool = field(default=False)  # made by open(): closed with the runtime

    @classmethod
    def open(cls, settings: Settings, broker: dramatiq.Broker | None = None) -> WorkerRuntime:
        return cls(
            settings=settings,
            pool=open_pool(settings.database_url, max_size=12),
            redis=redis.Redis.from_url(settings.redis_url),
            broker=broker or make_broker(settings),
            owns_broker=broker is None,
        )

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.close()
            self.redis.close()
            if self.owns_broker:
                self.broker.close()  # RabbitMQ: one AMQP connection per thread that used it
