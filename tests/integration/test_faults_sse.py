"""A client that opens and drops 500 SSE streams leaves nothing behind in the query service:
measured from outside (a private redis-server's CLIENT LIST, pg_stat_activity, the process's
open file descriptors, the per-user stream leases in Redis)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import redis

from tests.integration.conftest import wait_until
from tests.integration.faultkit import System, redis_server, system

USERS, STREAMS, PARALLEL = 10, 500, 20


def _measure(sys_: System, client: redis.Redis, db: psycopg.Connection[Any],
             pid: int) -> dict[str, int]:
    clients = client.client_list()
    own = client.client_id()
    leases = [k for k in client.scan_iter(match=f"{sys_.prefix}streams:*")]
    return {
        "redis_clients": sum(1 for c in clients if int(c["id"]) != own),
        "redis_blocked_readers": sum(1 for c in clients
                                     if "b" in c.get("flags", "") and c.get("cmd") == "xread"),
        "pg_connections": db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()").fetchone()[0],  # type: ignore[index]
        "fds": psutil.Process(pid).num_fds(),
        "leases": sum(int(client.zcard(k)) for k in leases),  # type: ignore[arg-type]
    }


def _open_and_drop(url: str, user: str) -> int:
    with httpx.Client(timeout=10) as c, c.stream(
        "GET", url, headers={"X-User-ID": user}
    ) as response:
        if response.status_code == 200:
            for _ in response.iter_lines():  # the first heartbeat or event, then drop
                break
        return response.status_code


def test_opening_and_dropping_500_streams_leaks_nothing(
    make_database: Callable[[], str], tmp_path: Path
) -> None:
    url = make_database()
    with redis_server(tmp_path) as server, system(
        url, server.url, tmp_path, sse_heartbeat_seconds="0.3", llm_offline_delay_seconds="0"
    ) as sys_, psycopg.connect(url, autocommit=True) as db:
        sys_.service("command")
        query = sys_.service("query")
        sys_.worker()
        streams: list[tuple[str, str]] = []
        for i in range(USERS):
            user = httpx.post(f"{sys_.command_url}/api/v1/users",
                              json={"display_name": f"s{i}"}, timeout=10).json()["user_id"]
            chat = httpx.post(f"{sys_.command_url}/api/v1/chat", json={"text": "hello"},
                              headers={"X-User-ID": user, "Accept": "application/json"},
                              timeout=10).json()
            streams.append((f"{sys_.query_url}/api/v1/sessions/{chat['session_id']}/stream",
                            user))
        wait_until(lambda: db.execute("SELECT count(*) FROM chat_messages WHERE role ="
                                      " 'assistant'").fetchone() == (USERS,), timeout=20)

        def churn(count: int) -> list[int]:
            with ThreadPoolExecutor(PARALLEL) as pool:
                return list(pool.map(lambda i: _open_and_drop(*streams[i % USERS]),
                                     range(count)))

        client = redis.Redis.from_url(server.url)

        def settled() -> dict[str, int]:
            # every dropped stream has noticed (heartbeats every 0.3 s) and let go
            return dict(wait_until(lambda: (m := _measure(sys_, client, db, query.pid))[
                "leases"] == 0 and m["redis_blocked_readers"] == 0 and m, timeout=60))

        assert set(churn(2 * PARALLEL)) == {200}  # warm-up: pools at their working size
        before = settled()
        assert set(churn(STREAMS)) == {200}
        after = settled()
        print(f"SSE churn, before/after {STREAMS} dropped streams: {before} / {after}")
        assert after["leases"] == 0 and after["redis_blocked_readers"] == 0, after
        # pools may still grow to the peak concurrency (PARALLEL), never with the count
        assert after["redis_clients"] <= before["redis_clients"] + PARALLEL, (before, after)
        # the query pool may still grow towards its max_size (10) under 20 parallel opens;
        # a leak would grow with the 500
        assert after["pg_connections"] <= before["pg_connections"] + 10, (before, after)
        assert after["fds"] <= before["fds"] + PARALLEL + 5, (before, after)
        # and the service still streams
        assert _open_and_drop(*streams[0]) == 200
        client.close()
