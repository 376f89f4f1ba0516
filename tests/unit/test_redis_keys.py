"""Redis Cluster: the keys one script or transaction touches share a hash slot."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

from redis.cluster import key_slot

from services.core.livewire import latest_key, live_key, stop_key
from services.core.redisconn import _cluster_options
from services.core.settings import Settings
from services.http.stream_leases import streams_key
from workers.reply_lease import inflight_key, lease_key


def _slot(key: str) -> int:
    return int(key_slot(key.encode()))


def test_a_sessions_live_keys_share_a_slot_and_sessions_spread() -> None:
    s = Settings.from_env({})
    sessions = [uuid.uuid4() for _ in range(50)]
    for sid in sessions:
        assert _slot(live_key(s, sid)) == _slot(latest_key(s, sid)) == _slot(stop_key(s, sid))
    assert len({_slot(live_key(s, sid)) for sid in sessions}) > 40  # not one hot slot
    users = [uuid.uuid4() for _ in range(50)]
    assert len({_slot(streams_key(s, u)) for u in users}) > 40


def test_a_reply_lease_shares_its_slot_with_the_inflight_hash() -> None:
    runtime: Any = SimpleNamespace(settings=Settings.from_env({}))
    message = str(uuid.uuid4())
    assert _slot(lease_key(runtime, message)) == _slot(inflight_key(runtime))


def test_cluster_urls_name_every_startup_node_and_the_first_ones_credentials() -> None:
    o = _cluster_options("redis://app:s%40cret@10.0.0.1:7000, redis://10.0.0.2:7001")
    assert o["nodes"] == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert (o["username"], o["password"], o["ssl"]) == ("app", "s@cret", False)
