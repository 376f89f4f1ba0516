"""Redis (a private redis-server, no persistence) killed and restarted while users post
chats to real service and worker processes: no committed message is lost, posting needs no
Redis (the event store is the hand-off), what does need it (live streams) answers 503 quickly
while it is down (never a hang, never a 500), and everything recovers without restarting
the services."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.integration.conftest import wait_until
from tests.integration.faultkit import (
    assert_event_store_consistent,
    assert_read_model_has_no_duplicates,
    projected_message_ids,
    redis_server,
    stored_message_ids,
    system,
    unanswered,
)

BOUND_SECONDS = 6.0  # what needs Redis answers within this while Redis is down
USERS = 4


class Load:
    """USERS clients posting (JSON) into a session each, as fast as answers come."""

    def __init__(self, command_url: str, users: list[str]) -> None:
        self.url, self.users = command_url, users
        self.results: list[tuple[float, int, dict[str, Any], float]] = []  # at, status, body, took
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(u,), daemon=True)
                         for u in users]

    def _run(self, user: str) -> None:
        session: str | None = None
        with httpx.Client(timeout=BOUND_SECONDS * 2) as c:
            n = 0
            while not self._stop.is_set():
                n += 1
                started = time.monotonic()
                try:
                    r = c.post(f"{self.url}/api/v1/chat",
                               json={"text": f"chapter {n}", "session_id": session},
                               headers={"X-User-ID": user, "Accept": "application/json"})
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                body = r.json()
                self.results.append((started, r.status_code, body, time.monotonic() - started))
                session = body.get("session_id") or session
                time.sleep(0.05)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=BOUND_SECONDS * 3)


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_a_redis_restart_loses_no_message_and_every_message_is_answered_after(
    make_database: Callable[[], str], tmp_path: Path
) -> None:
    url = make_database()
    with redis_server(tmp_path) as redis, system(
        url, redis.url, tmp_path, llm_offline_delay_seconds="0",
        reply_recovery_sweep_seconds="0.2", projector_sweep_seconds="1",
        sse_heartbeat_seconds="1",
    ) as sys_, psycopg.connect(url, autocommit=True) as db:
        sys_.service("command")
        sys_.service("query")
        sys_.worker()
        users = []
        for i in range(USERS):
            r = httpx.post(f"{sys_.command_url}/api/v1/users", json={"display_name": f"u{i}"},
                           timeout=10)
            users.append(r.json()["user_id"])
        with Load(sys_.command_url, users) as load:
            wait_until(lambda: sum(s == 202 for _, s, _, _ in load.results) >= 20, timeout=20)
            some = next(b for _, s, b, _ in load.results if s == 202)
            wait_until(lambda: db.execute("SELECT 1 FROM sessions WHERE session_id = %s",
                                          (some["session_id"],)).fetchone(), timeout=10)
            redis.kill()
            down_at = time.monotonic()
            headers = {"X-User-ID": users[0]}
            own = next(b for _, s, b, _ in load.results
                       if s == 202 and db.execute(
                           "SELECT user_id::text FROM sessions WHERE session_id = %s",
                           (b["session_id"],)).fetchone() == (users[0],))
            # a post needs no Redis: stored, and answered once Redis is back
            posted, took = _timed(lambda: httpx.post(
                f"{sys_.command_url}/api/v1/chat", json={"text": "while down"},
                headers={**headers, "Accept": "application/json"}, timeout=BOUND_SECONDS * 2))
            assert posted.status_code == 202 and took < BOUND_SECONDS, (posted.text, took)
            # what needs Redis while it is down (the live reply): 503, quickly
            streamed, took = _timed(lambda: httpx.post(
                f"{sys_.command_url}/api/v1/chat", json={"text": "streamed while down"},
                headers=headers, timeout=BOUND_SECONDS * 2))
            assert streamed.status_code == 503 and took < BOUND_SECONDS, (streamed.text, took)
            stream, took = _timed(lambda: httpx.get(
                f"{sys_.query_url}/api/v1/sessions/{own['session_id']}/stream",
                headers=headers, timeout=BOUND_SECONDS * 2))
            assert stream.status_code == 503 and took < BOUND_SECONDS, (stream.text, took)
            for answer in (streamed, stream):  # one code for Redis down, in both services
                assert answer.json()["error"] == "redis_unavailable", answer.text
            listed = httpx.get(f"{sys_.query_url}/api/v1/sessions", headers=headers, timeout=10)
            assert listed.status_code == 200  # reads need no Redis
            time.sleep(max(0.0, 3 - (time.monotonic() - down_at)))
            redis.start()
            up_at = time.monotonic()
            wait_until(lambda: any(at > up_at and s == 202 for at, s, _, _ in load.results),
                       timeout=10)
            time.sleep(2)
        assert load.errors == []
        statuses = {s for _, s, _, _ in load.results}
        assert statuses == {202}, statuses
        # the load did meet Redis down
        assert any(down_at < at < up_at for at, *_ in load.results)
        assert max(took for *_, took in load.results) < BOUND_SECONDS
        # every message a client was told about is stored ...
        told = {b["message_id"] for _, _, b, _ in load.results if "message_id" in b}
        told.add(posted.json()["message_id"])
        assert told <= stored_message_ids(db)
        # ... projected, and answered: the dispatcher asks for them once Redis is back
        wait_until(lambda: stored_message_ids(db) <= projected_message_ids(db), timeout=20)
        wait_until(lambda: not unanswered(db), timeout=90)  # hundreds, on a loaded machine
        # the live stream works again, without a restart of the services
        again = httpx.post(f"{sys_.command_url}/api/v1/chat",
                           json={"text": "after", "session_id": own["session_id"]},
                           headers=headers, timeout=30)
        assert again.status_code == 200 and "event: done" in again.text, again.text[-300:]
        assert_event_store_consistent(db)
        assert_read_model_has_no_duplicates(db)
