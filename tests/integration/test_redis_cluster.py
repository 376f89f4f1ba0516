"""Live replies on a Redis Cluster (REDIS_CLUSTER_URLS): a local 3-primary cluster with a
replica each, started here; the command and query services and a worker use redis-py's
cluster client for live streams, leases and stop flags, the broker stays on plain Redis.
A streamed chat, a stream resumed with Last-Event-ID, and a primary SIGKILLed and failed
over to its replica with chats going on."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import msgspec
import pytest
import redis
from httpx_sse import connect_sse

from services.command.app import create_app as create_command_app
from services.core.livewire import live_key
from services.core.redisconn import sync_redis
from services.core.settings import Settings
from services.http.stream_leases import streams_key
from services.query.app import create_app as create_query_app
from tests.integration.conftest import serve
from tests.integration.rediscluster import LocalCluster, binaries, local_cluster
from workers.main import running_worker

if binaries() is None:
    pytest.skip("redis-server / redis-cli not installed: no local Redis Cluster",
                allow_module_level=True)


class System(msgspec.Struct):
    settings: Settings
    command: str
    query: str
    cluster: LocalCluster


@pytest.fixture(scope="module")
def system(settings: Settings, make_database: Callable[[], str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with ExitStack() as stack:
        cluster = stack.enter_context(local_cluster(tmp_path_factory.mktemp("cluster")))
        s = msgspec.structs.replace(settings, database_url=make_database(),
                                    redis_cluster_urls=cluster.urls,
                                    llm_offline_delay_seconds=0.05)
        stack.enter_context(running_worker(s, threads=2))
        yield System(s, stack.enter_context(serve(create_command_app(s))),
                     stack.enter_context(serve(create_query_app(s))), cluster)


def _user(system: System) -> str:
    r = httpx.post(f"{system.command}/api/v1/users", json={}, timeout=10)
    assert r.status_code == 201, r.text
    return str(r.json()["user_id"])


def _chat(system: System, user: str, text: str, session_id: str | None = None
          ) -> list[tuple[str, str, str]]:
    """A streamed POST /chat: [(event, data, id)]."""
    body: dict[str, Any] = {"text": text, **({"session_id": session_id} if session_id else {})}
    with httpx.Client(timeout=30) as c, connect_sse(
        c, "POST", f"{system.command}/api/v1/chat", json=body, headers={"X-User-ID": user}
    ) as source:
        assert source.response.status_code == 200, source.response.read()
        return [(e.event, e.data, e.id) for e in source.iter_sse()]


def _follow(system: System, user: str, session_id: str, last_event_id: str | None = None,
            stop_after: int | None = None) -> list[tuple[str, str, str]]:
    """GET .../stream (the latest reply, or from Last-Event-ID): [(event, data, id)]."""
    headers = {"X-User-ID": user, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    seen: list[tuple[str, str, str]] = []
    with httpx.Client(timeout=30) as c, connect_sse(
        c, "GET", f"{system.query}/api/v1/sessions/{session_id}/stream", headers=headers
    ) as source:
        assert source.response.status_code == 200, source.response.read()
        for e in source.iter_sse():
            seen.append((e.event, e.data, e.id))
            if stop_after is not None and len(seen) >= stop_after:
                break
    return seen


def _text(events: list[tuple[str, str, str]]) -> str:
    return "".join(json.loads(data)["text"] for kind, data, _ in events if kind == "delta")


def _stored(events: list[tuple[str, str, str]]) -> str:
    (message,) = [data for kind, data, _ in events if kind == "message"]
    return str(json.loads(message)["content"])


def test_a_streamed_chat_runs_its_live_reply_through_the_cluster(system: System) -> None:
    user = _user(system)
    events = _chat(system, user, "I want to write a horror story")
    kinds = [k for k, _, _ in events]
    assert kinds[0] == "session" and kinds[-2:] == ["message", "done"], kinds
    assert _text(events) == _stored(events)
    session_id = json.loads(events[0][1])["session_id"]
    cluster = sync_redis(system.settings)
    plain = redis.Redis.from_url(system.settings.redis_url)
    try:
        key = live_key(system.settings, session_id)
        assert cluster.xlen(key) >= len(events) - 1  # the reply's entries live in the cluster
        assert not plain.exists(key)  # ... and not on the broker's Redis
        # the user's stream cap is counted in the cluster too (released when it ended)
        assert cluster.zcard(streams_key(system.settings, user)) == 0
    finally:
        cluster.close()
        plain.close()


def test_a_stream_resumes_after_a_reconnect_with_last_event_id(system: System) -> None:
    user = _user(system)
    first = _chat(system, user, "Start a ghost story")
    session_id = json.loads(first[0][1])["session_id"]
    part = _follow(system, user, session_id, stop_after=3)  # dropped after three events
    assert [k for k, _, _ in part] == ["delta"] * 3
    rest = _follow(system, user, session_id, last_event_id=part[-1][2])
    assert [k for k, _, _ in rest][-2:] == ["message", "done"]
    assert {i for _, _, i in part}.isdisjoint(i for _, _, i in rest)
    assert _text(part) + _text(rest) == _stored(rest) == _stored(first)


def _until_ok(action: Callable[[], Any], timeout: float) -> Any:
    """Retries action until it stops raising (a 503 or a reset while the cluster fails over)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except (AssertionError, httpx.HTTPError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_killed_primary_fails_over_and_the_sessions_on_it_go_on(system: System) -> None:
    user = _user(system)
    first = _chat(system, user, "A story about a lighthouse")
    session_id = json.loads(first[0][1])["session_id"]
    key = live_key(system.settings, session_id)
    primary = system.cluster.primary_for(key)
    # the reply reached the replica before the kill (replication is asynchronous)
    assert primary.client().execute_command("WAIT", 1, 5000) >= 1

    primary.kill()
    killed = time.monotonic()
    system.cluster.wait_healthy()  # a replica took over the dead primary's slots
    assert system.cluster.primary_for(key).port != primary.port

    # the same session (its keys on the promoted replica) chats on without a restart
    second = _until_ok(lambda: _chat(system, user, "What next?", session_id), timeout=30)
    print(f"failover: chats answered again {time.monotonic() - killed:.1f} s after the kill")
    assert [k for k, _, _ in second][-2:] == ["message", "done"]
    assert _text(second) == _stored(second)
    # and the reply written before the kill is still there to resume
    replay = _follow(system, user, session_id, last_event_id=first[1][2])
    assert replay and replay[0][0] == "delta"
