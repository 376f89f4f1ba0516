"""The query service on a PostgreSQL streaming replica (QUERY_DATABASE_URLS): a primary and
a real hot standby started here (tests/integration/pgreplica.py), a worker projecting on
the primary, the command and query services over HTTP.

- reads are served by the replica (with its replay paused, a read shows the older state);
- read-your-writes across replication lag: a position the paused replica has not replayed
  is honoured by the primary, without X-Projection-Lag;
- the replica killed under load: reads go on from the primary, no 500, at most the reads in
  flight on it answer 503 (the documented retry);
- RLS holds for the query role on the replica.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import msgspec
import psycopg
import pytest

from services.command.app import create_app as create_command_app
from services.core.db import QUERY_ROLE, SET_USER
from services.core.settings import Settings
from services.query.app import create_app as create_query_app
from tests.integration.conftest import serve, wait_until
from tests.integration.pgreplica import Pair, can_run, primary_and_standby
from workers.main import running_worker

if (reason := can_run()) is not None:
    pytest.skip(f"no primary + standby pair here: {reason}", allow_module_level=True)


class System(msgspec.Struct):
    pair: Pair
    command: str
    query: str


@pytest.fixture(scope="module")
def system(settings: Settings) -> Iterator[System]:
    with ExitStack() as stack:
        pair = stack.enter_context(primary_and_standby())
        s = msgspec.structs.replace(
            settings, database_url=pair.primary.url(), query_database_urls=pair.standby.url(),
            redis_prefix=f"{settings.redis_prefix}replica:", replica_wait_seconds=0.5,
            replica_retry_seconds=2.0, min_position_wait_seconds=5.0)
        stack.enter_context(running_worker(s, threads=2))
        yield System(pair, stack.enter_context(serve(create_command_app(s))),
                     stack.enter_context(serve(create_query_app(s))))


def _user(system: System) -> str:
    r = httpx.post(f"{system.command}/api/v1/users", json={}, timeout=10)
    assert r.status_code == 201, r.text
    return str(r.json()["user_id"])


def _post(system: System, user: str, text: str, session_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"text": text, **({"session_id": session_id} if session_id else {})}
    r = httpx.post(f"{system.command}/api/v1/chat", json=body, timeout=10,
                   headers={"X-User-ID": user, "Accept": "application/json"})
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def _user_messages_on(conn: psycopg.Connection[Any], session_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM chat_messages WHERE session_id = %s"
                       " AND role = 'user'", (session_id,)).fetchone()
    return int(row[0]) if row else 0


def _user_messages_read(system: System, user: str, session_id: str,
                        position: int | None = None) -> tuple[int, httpx.Response]:
    headers = {"X-User-ID": user, **({"X-Min-Position": str(position)} if position else {})}
    r = httpx.get(f"{system.query}/api/v1/sessions/{session_id}/messages",
                  params={"limit": 200}, headers=headers, timeout=20)
    assert r.status_code == 200, r.text
    return sum(1 for m in r.json()["messages"] if m["role"] == "user"), r


def _session_on_both(system: System) -> tuple[str, str]:
    """A user with a session of one message, projected and replayed on the standby."""
    user = _user(system)
    first = _post(system, user, "A story about a lighthouse")
    with system.pair.primary.connect() as p:
        wait_until(lambda: _user_messages_on(p, first["session_id"]) == 1, timeout=30)
    system.pair.wait_replayed()
    return user, first["session_id"]


def test_reads_are_served_by_the_replica(system: System) -> None:
    user, session_id = _session_on_both(system)
    with system.pair.replay_paused(), system.pair.primary.connect() as p:
        _post(system, user, "And then?", session_id)
        wait_until(lambda: _user_messages_on(p, session_id) == 2, timeout=30)
        # the primary has it; a read without a position is the paused replica's
        for _ in range(3):
            assert _user_messages_read(system, user, session_id)[0] == 1
    # replay resumed: the replica catches up
    wait_until(lambda: _user_messages_read(system, user, session_id)[0] == 2, timeout=30)


def test_a_position_the_replica_has_not_replayed_is_read_from_the_primary(
    system: System
) -> None:
    user, session_id = _session_on_both(system)
    with system.pair.replay_paused():
        second = _post(system, user, "What happens next?", session_id)
        count, r = _user_messages_read(system, user, session_id, second["position"])
        assert count == 2 and "x-projection-lag" not in r.headers
        # without the position, the lagging replica's older page
        assert _user_messages_read(system, user, session_id)[0] == 1
    # caught up: the replica honours the position itself
    system.pair.wait_replayed()
    count, r = _user_messages_read(system, user, session_id, second["position"])
    assert count == 2 and "x-projection-lag" not in r.headers


def test_rls_holds_for_the_query_role_on_the_replica(system: System) -> None:
    owner, session_id = _session_on_both(system)
    intruder = _user(system)
    system.pair.wait_replayed()
    with system.pair.standby.connect() as s:
        assert s.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with s.transaction():
            s.execute(f"SET LOCAL ROLE {QUERY_ROLE}")
            assert s.execute("SELECT count(*) FROM sessions").fetchone() == (0,)  # nobody set
            s.execute(SET_USER, (intruder,))
            assert s.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
            assert s.execute("SELECT count(*) FROM chat_messages WHERE session_id = %s",
                             (session_id,)).fetchone() == (0,)
            s.execute(SET_USER, (owner,))
            rows = s.execute("SELECT session_id::text FROM sessions").fetchall()
            assert rows == [(session_id,)]
    # and over HTTP, served by the replica: another user's session is a 404
    r = httpx.get(f"{system.query}/api/v1/sessions/{session_id}/messages",
                  headers={"X-User-ID": intruder}, timeout=20)
    assert r.status_code == 404


def test_a_replica_killed_under_load_leaves_reads_to_the_primary(system: System) -> None:
    user, session_id = _session_on_both(system)
    statuses: Counter[int] = Counter()
    after_kill: Counter[int] = Counter()
    killed = threading.Event()
    stop = threading.Event()
    clients = 4

    def read(with_position: bool) -> None:
        params: dict[str, Any] = {"limit": 50}
        if with_position:
            params["min_position"] = 1
        with httpx.Client(timeout=20) as c:
            while not stop.is_set():
                r = c.get(f"{system.query}/api/v1/sessions/{session_id}/messages",
                          params=params, headers={"X-User-ID": user})
                (after_kill if killed.is_set() else statuses)[r.status_code] += 1

    threads = [threading.Thread(target=read, args=(i % 2 == 0,), daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    wait_until(lambda: statuses[200] >= 20, timeout=30)
    killed.set()
    system.pair.standby.stop("immediate")  # a crash: every connection to it drops at once
    wait_until(lambda: after_kill[200] >= 100, timeout=60)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    print(f"replica killed under load: before {dict(statuses)}, after {dict(after_kill)}")
    assert set(statuses) == {200}
    assert set(after_kill) <= {200, 503}
    assert after_kill[503] <= clients  # at most the reads in flight on the replica
    system.pair.standby.start()  # back for the tests after this one
    system.pair.wait_replayed()
    # it is read from again once its retry period is over (and its pool has reconnected,
    # with psycopg_pool's back-off: up to several seconds after a longer outage)
    deadline = time.monotonic() + 60
    with system.pair.replay_paused(), system.pair.primary.connect() as p:
        _post(system, user, "Once more", session_id)
        wait_until(lambda: _user_messages_on(p, session_id) == 2, timeout=30)
        while _user_messages_read(system, user, session_id)[0] != 1:
            assert time.monotonic() < deadline, "reads never went back to the replica"
            time.sleep(0.2)
