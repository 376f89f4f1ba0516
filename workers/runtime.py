"""What a worker process holds: settings, a database pool, Redis and the broker.

Built once at worker boot (or by a test) and handed to the plain functions the actors call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dramatiq
import redis
from psycopg_pool import ConnectionPool
from redis import Redis

from services.core.db import open_pool
from services.core.redisconn import sync_plain_redis, sync_redis
from services.core.settings import Settings
from workers.broker import make_broker


@dataclass
class WorkerRuntime:
    settings: Settings
    pool: ConnectionPool  # as the migrating (owner) user; the projector SETs its own role
    redis: redis.Redis  # the live data: a Redis Cluster with REDIS_CLUSTER_URLS
    broker: dramatiq.Broker
    closed: bool = field(default=False)
    owns_broker: bool = field(default=False)  # made by open(): closed with the runtime
    # REDIS_URL's Redis when the live data is on a cluster (services/core/redisconn.py)
    plain_redis: Redis | None = field(default=None)

    @property
    def wake_redis(self) -> Redis:
        """Where the followers' wake-ups travel and the dispatcher's broker marker lives."""
        return self.plain_redis or self.redis

    @classmethod
    def open(cls, settings: Settings, broker: dramatiq.Broker | None = None) -> WorkerRuntime:
        live = sync_redis(settings)
        plain = sync_plain_redis(settings, live)
        return cls(
            settings=settings,
            pool=open_pool(settings.database_url, max_size=12),
            redis=live,
            broker=broker or make_broker(settings),
            owns_broker=broker is None,
            plain_redis=plain if plain is not live else None,
        )

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.close()
            self.redis.close()
            if self.plain_redis is not None:
                self.plain_redis.close()
            if self.owns_broker:
                self.broker.close()  # RabbitMQ: one AMQP connection per thread that used it
