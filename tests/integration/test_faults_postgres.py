"""PostgreSQL connections killed under load (pg_terminate_backend on every backend of the
database, again and again): requests fail cleanly (503, never 500, never a hang), the pools
recover on their own, and nothing is half-written."""

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
    stored_message_ids,
    system,
)

TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
"""
KILL_SECONDS, KILL_EVERY = 6.0, 0.3
USERS = 4


class Load:
    """Per user: post a chat, list sessions, read the session's messages; in a loop."""

    def __init__(self, command_url: str, query_url: str, users: list[str]) -> None:
        self.command_url, self.query_url = command_url, query_url
        self.results: list[tuple[float, str, int, dict[str, Any]]] = []  # at, what, status, body
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(u,), daemon=True)
                         for u in users]

    def _call(self, what: str, call: Callable[[], httpx.Response]) -> dict[str, Any]:
        started = time.monotonic()
        try:
            r = call()
        except httpx.HTTPError as exc:
            self.errors.append(f"{what}: {exc!r}")
            return {}
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") \
            else {}
        self.results.append((started, what, r.status_code, body))
        return body if r.status_code < 300 else {}

    def _run(self, user: str) -> None:
        session: str | None = None
        position = 0
        h = {"X-User-ID": user}
        with httpx.Client(timeout=15, headers=h) as c:
            n = 0
            while not self._stop.is_set():
                n += 1
                chat = {"text": f"scene {n}", "session_id": session}
                body = self._call("post", lambda chat=chat: c.post(
                    f"{self.command_url}/api/v1/chat", json=chat,
                    headers={"Accept": "application/json"}))
                session = body.get("session_id") or session
                position = body.get("position", position)
                self._call("list", lambda: c.get(f"{self.query_url}/api/v1/sessions"))
                if session:  # read-your-writes: a new session is projected by then
                    page = f"{self.query_url}/api/v1/sessions/{session}/messages"
                    self._call("page", lambda page=page, p=position: c.get(
                        page, headers={"X-Min-Position": str(p)}))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def test_killed_database_connections_fail_cleanly_and_the_pools_recover(
    make_database: Callable[[], str], redis_url: str, tmp_path: Path
) -> None:
    url = make_database()
    with system(url, redis_url, tmp_path, llm_offline_delay_seconds="0") as sys_, \
            psycopg.connect(url, autocommit=True) as db:
        sys_.service("command")
        sys_.service("query")
        sys_.worker()
        users = [httpx.post(f"{sys_.command_url}/api/v1/users", json={"display_name": "P"},
                            timeout=10).json()["user_id"] for _ in range(USERS)]
        wait_until(lambda: db.execute("SELECT count(*) FROM users").fetchone() == (USERS,),
                   timeout=10)  # known to the query side before it is asked
        with Load(sys_.command_url, sys_.query_url, users) as load:
            time.sleep(1)
            killed = 0
            until = time.monotonic() + KILL_SECONDS
            while time.monotonic() < until:
                killed += db.execute(TERMINATE).fetchone()[0]  # type: ignore[index]
                time.sleep(KILL_EVERY)
            calm_from = time.monotonic() + 1.0
            time.sleep(3)
        assert killed > 20, killed
        assert load.errors == [], load.errors[:5]
        statuses = {(what, status) for _, what, status, _ in load.results}
        assert {s for _, s in statuses} <= {200, 202, 503}, statuses
        for _, _, status, body in load.results:
            if status == 503:
                assert body.get("error") == "database_unavailable", body
        # the pools recovered by themselves: a second after the last kill, all succeed
        after = [(what, status) for at, what, status, _ in load.results if at > calm_from]
        assert len(after) > 10 and all(status < 300 for _, status in after), after
        # nothing half-written; every accepted message stored, projected once
        told = {b["message_id"] for _, what, s, b in load.results if what == "post" and s == 202}
        assert told and told <= stored_message_ids(db)
        wait_until(lambda: stored_message_ids(db) <= projected_message_ids(db), timeout=20)
        assert_event_store_consistent(db)
        assert_read_model_has_no_duplicates(db)
