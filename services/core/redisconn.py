"""The Redis clients for the live data: live reply streams, stream and reply leases, stop
flags, the analytics stream.

One Redis (REDIS_URL) by default; with REDIS_CLUSTER_URLS, redis-py's cluster client on a
Redis Cluster. Every key those parts write carries a hash tag (services/core/livewire.py,
services/http/stream_leases.py, workers/reply_lease.py) so each script and pipeline touches
one slot. Dramatiq's broker (workers/broker.py, or RabbitMQ: BROKER_URL), the followers'
wake-up (services/core/wakeup.py, PUBLISH/SUBSCRIBE) and the dispatcher's broker marker stay
on REDIS_URL: the *_plain_redis clients.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster

from services.core.settings import Settings


def _cluster_options(urls: str) -> dict[str, Any]:
    """`redis://[user:pass@]host:port,redis://host:port,...` → the startup nodes (any one
    will do: the client learns the rest of the cluster from it) and the first URL's
    credentials and TLS."""
    parts = [urlsplit(u.strip()) for u in urls.split(",") if u.strip()]
    first = parts[0]
    return {
        "nodes": [(p.hostname or "127.0.0.1", p.port or 6379) for p in parts],
        "username": unquote(first.username) if first.username else None,
        "password": unquote(first.password) if first.password else None,
        "ssl": first.scheme == "rediss",
    }


def sync_redis(settings: Settings, **options: Any) -> redis.Redis:
    """A blocking client (workers, CLI). Typed as redis.Redis: the cluster client takes the
    same calls for keys of one slot, which is all our code sends."""
    if not settings.redis_cluster_urls:
        return redis.Redis.from_url(settings.redis_url, **options)
    o = _cluster_options(settings.redis_cluster_urls)
    return cast(redis.Redis, redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in o["nodes"]],
        username=o["username"], password=o["password"], ssl=o["ssl"], **options))


def async_redis(settings: Settings, **options: Any) -> aioredis.Redis:
    """An asyncio client (the HTTP services); see sync_redis."""
    if not settings.redis_cluster_urls:
        return aioredis.Redis.from_url(settings.redis_url, **options)
    o = _cluster_options(settings.redis_cluster_urls)
    return cast(aioredis.Redis, aiocluster.RedisCluster(
        startup_nodes=[aiocluster.ClusterNode(h, p) for h, p in o["nodes"]],
        username=o["username"], password=o["password"], ssl=o["ssl"], **options))


def sync_plain_redis(settings: Settings, live: redis.Redis) -> redis.Redis:
    """REDIS_URL's Redis (wake-ups, the broker's marker): `live` itself unless a cluster
    holds the live data."""
    return redis.Redis.from_url(settings.redis_url) if settings.redis_cluster_urls else live


def async_plain_redis(settings: Settings, live: aioredis.Redis) -> aioredis.Redis:
    """The asyncio form of sync_plain_redis."""
    if settings.redis_cluster_urls:
        return aioredis.Redis.from_url(settings.redis_url)
    return live
