"""Real processes for the fault tests: `chatctl` services and workers as subprocesses, a
private redis-server to stop and restart, and checks of the event store's consistency."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 30.0


@dataclass
class Child:
    """One `chatctl` process; restartable with the same arguments and environment."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *self.argv], cwd=ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as when the machine or the OOM killer takes it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class System:
    """Services and workers of one test, on their own ports, Redis prefix and database."""

    database_url: str
    redis_url: str
    prefix: str
    tmp: Path
    extra: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    command_port: int = field(default_factory=free_port)
    query_port: int = field(default_factory=free_port)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "REDIS_PREFIX": self.prefix,
            "COMMAND_PORT": str(self.command_port),
            "QUERY_PORT": str(self.query_port),
            "HOST": "127.0.0.1",
            "LOG_JSON": "false",
            "RATE_LIMIT_ENABLED": "false",
            "REPLY_SLOTS_ENABLED": "false",
            **self.extra,
        }

    @property
    def command_url(self) -> str:
        return f"http://127.0.0.1:{self.command_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def spawn(self, name: str, *argv: str) -> Child:
        child = Child(name, list(argv), self.env, self.tmp / f"{name}.log").start()
        self.children.append(child)
        return child

    def worker(self, threads: int = 4) -> Child:
        return self.spawn("worker", "worker", "--threads", str(threads))

    def service(self, what: str) -> Child:
        child = self.spawn(what, "serve", what)
        url = self.command_url if what == "command" else self.query_url
        wait_http(f"{url}/healthz", child)
        return child

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()


@contextmanager
def system(database_url: str, redis_url: str, tmp: Path, **extra: str) -> Iterator[System]:
    """A System with a fresh Redis prefix; every child is stopped at the end."""
    prefix = f"chat-fault-{uuid.uuid4().hex[:10]}:"
    running = System(database_url, redis_url, prefix, tmp,
                     {k.upper(): v for k, v in extra.items()})
    try:
        yield running
    finally:
        running.close()
        client = redis.Redis.from_url(redis_url, socket_timeout=2)
        try:
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)
        except redis.RedisError:
            pass  # a private server that is already gone
        finally:
            client.close()


def wait_http(url: str, child: Child | None = None, timeout: float = START_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.process is not None and child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class RedisServer:
    """A redis-server of our own (never the machine's shared one), without persistence: a
    restart loses every key, like a crashed cache node."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.argv = [binary, "--port", str(free_port()), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(tmp)]
        self.port = int(self.argv[2])
        self.log_path = tmp / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


@contextmanager
def redis_server(tmp: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp)
    server.start()
    with ExitStack() as stack:
        stack.callback(server.kill)
        yield server


# Event store checks --------------------------------------------------------------------

GAPS = """
SELECT stream_id, count(*), min(version), max(version) FROM events
 GROUP BY stream_id HAVING min(version) <> 1 OR max(version) <> count(*)
"""
VERSION_MISMATCH = """
SELECT s.stream_id, s.version, coalesce(max(e.version), 0) FROM event_streams s
  LEFT JOIN events e USING (stream_id)
 GROUP BY s.stream_id, s.version HAVING s.version <> coalesce(max(e.version), 0)
"""


def assert_event_store_consistent(conn: psycopg.Connection[Any]) -> None:
    """Versions are 1..n in every stream and each stream row's version is its last event's."""
    assert conn.execute(GAPS).fetchall() == []
    assert conn.execute(VERSION_MISMATCH).fetchall() == []


def assert_read_model_has_no_duplicates(conn: psycopg.Connection[Any]) -> None:
    dupes = conn.execute("SELECT message_id FROM chat_messages GROUP BY message_id"
                         " HAVING count(*) > 1").fetchall()
    assert dupes == []
    gaps = conn.execute("SELECT session_id FROM chat_messages GROUP BY session_id"
                        " HAVING min(seq) <> 1 OR max(seq) <> count(*)").fetchall()
    assert gaps == []


STORED_MESSAGES = """
SELECT data->>'message_id' FROM events
 WHERE type = 'MessagePosted' AND data->>'role' = %s
"""


def stored_message_ids(conn: psycopg.Connection[Any], role: str = "user") -> set[str]:
    return {row[0] for row in conn.execute(STORED_MESSAGES, (role,))}


def projected_message_ids(conn: psycopg.Connection[Any], role: str = "user") -> set[str]:
    return {str(row[0]) for row in conn.execute(
        "SELECT message_id FROM chat_messages WHERE role = %s", (role,))}


UNANSWERED = """
SELECT q.data->>'message_id' FROM events q
 WHERE q.type = 'MessagePosted' AND q.data->>'role' = 'user'
   AND NOT EXISTS (SELECT 1 FROM events a WHERE a.stream_id = q.stream_id
                      AND a.type IN ('MessagePosted', 'AssistantReplyFailed')
                      AND a.data->>'reply_to' = q.data->>'message_id')
"""


def unanswered(conn: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in conn.execute(UNANSWERED)}
