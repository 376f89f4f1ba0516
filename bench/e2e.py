"""End to end: chats posted through the command service at a steady rate, with a real worker
(`chatctl worker`: projector, sweep and the offline assistant), and how long each takes to
become visible in the read model (projection lag).

Servers: `chatctl serve command`, `chatctl serve query` and `chatctl worker`, subprocesses on
a throwaway database and a Redis key prefix of their own.

1. First delta: CHATS_SSE chats one after the other on an idle system: POST /api/v1/chat
   (Accept: application/json), then its stream_url on the query service; the time from
   sending the POST to the first `delta` event, beside the provider's own first_token_ms
   (from the stored reply's metadata, carried by the `message` event). The difference is
   what the system adds: the commit, the wake-up, the dispatcher reading the event and
   enqueueing the job, the worker picking the job, reading the
   session, and the Redis relay to the SSE client.
2. Steady rate: RATE chats/s for SECONDS s from an asyncio httpx client (each request sent
   on schedule, whatever the earlier ones are doing) over USERS users, each starting up to
   SESSIONS_PER_USER sessions and then posting into them. A watcher samples the projector's
   checkpoint every ~2 ms (with the database's clock); an event is visible from the first
   sample whose checkpoint is at or past its (txid, position). Lag = that sample's time -
   the event's recorded_at (both the database's clock; recorded_at is taken inside the
   writing transaction, so the lag includes the commit).
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from bench.common import (
    NO_ABUSE_LIMITS,
    REDIS_URL,
    cli,
    finish,
    free_port,
    print_table,
    summary,
    throwaway_database,
    wait_for,
)
from bench.http import server

NAME = "e2e"
USERS = 50
SESSIONS_PER_USER = 5
CHATS_SSE = 10
WATCH_INTERVAL = 0.002
TEXT = "I want to write a horror story set in a lighthouse."

SAMPLE_CHECKPOINT = """
SELECT last_txid::text::bigint, last_position, clock_timestamp()
  FROM projection_checkpoints WHERE name = 'read_model'
"""
POSTED_EVENTS = """
SELECT position, txid::text::bigint, recorded_at FROM events WHERE position = ANY(%s)
"""


@contextmanager
def system(database_url: str, logdir: Path) -> Iterator[tuple[str, str]]:
    """(command URL, query URL) with a worker running."""
    command_port, query_port = free_port(), free_port()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    env = {
        **os.environ,
        **NO_ABUSE_LIMITS,
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": prefix,
        "COMMAND_PORT": str(command_port),
        "QUERY_PORT": str(query_port),
        "PORT": str(free_port()),
    }
    chatctl = [sys.executable, "-m", "services.cli"]
    worker = None
    try:
        with ExitStack() as stack:
            command = stack.enter_context(
                server([*chatctl, "serve", "command"], env, command_port, logdir / "command.log")
            )
            query = stack.enter_context(
                server([*chatctl, "serve", "query"], env, query_port, logdir / "query.log")
            )
            with (logdir / "worker.log").open("ab") as out:
                worker = subprocess.Popen([*chatctl, "worker"], env=env, stdout=out, stderr=out)
            yield command, query
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


def register_users(command: str, count: int) -> list[str]:
    with httpx.Client(base_url=command, timeout=10) as client:
        return [
            client.post("/api/v1/users", json={}).raise_for_status().json()["user_id"]
            for _ in range(count)
        ]


# 1. Time to the first delta --------------------------------------------------------------


def first_delta(command: str, query: str, user: str, chats: int) -> list[dict[str, Any]]:
    out = []
    headers = {"X-User-ID": user, "Accept": "application/json"}
    with httpx.Client(timeout=30) as client:
        for n in range(chats):
            began = time.perf_counter()
            accepted = (
                client.post(
                    f"{command}/api/v1/chat", headers=headers, json={"text": f"{TEXT} ({n})"}
                )
                .raise_for_status()
                .json()
            )
            posted = time.perf_counter()
            delta_at, stored = None, None
            # a new session: the stream waits until the read model has it (read-your-writes)
            with client.stream(
                "GET",
                query + accepted["stream_url"],
                params={"min_position": accepted["position"]},
                headers={"X-User-ID": user},
            ) as response:
                response.raise_for_status()
                event = ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "delta" and delta_at is None:
                        delta_at = time.perf_counter()
                    elif line.startswith("data:") and event == "message":
                        stored = json.loads(line[5:])
                    elif line.startswith("data:") and event in ("done", "error"):
                        break
            first_token = (stored or {}).get("metadata", {}).get("first_token_ms")
            total = (delta_at - began) * 1000 if delta_at else float("nan")
            out.append(
                {
                    "post_ms": (posted - began) * 1000,
                    "first_delta_ms": total,
                    "provider_first_token_ms": first_token,
                    "added_ms": total - first_token if first_token is not None else None,
                }
            )
    return out


# 2. Projection lag under a steady rate ---------------------------------------------------


class Watcher(threading.Thread):
    """Samples the projector's checkpoint with the database's clock."""

    def __init__(self, url: str) -> None:
        super().__init__(name="checkpoint-watcher", daemon=True)
        self.url = url
        self.samples: list[tuple[tuple[int, int], dt.datetime]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute(SAMPLE_CHECKPOINT).fetchone()
                if row:
                    self.samples.append(((row[0], row[1]), row[2]))
                time.sleep(WATCH_INTERVAL)

    def visible_at(self, txid: int, position: int) -> dt.datetime | None:
        keys = [s[0] for s in self.samples]  # non-decreasing: the checkpoint only moves on
        i = bisect.bisect_left(keys, (txid, position))
        return self.samples[i][1] if i < len(self.samples) else None


async def steady(command: str, users: list[str], rate: float, seconds: float) -> dict[str, Any]:
    sessions: dict[str, list[str]] = {u: [] for u in users}
    starting: dict[str, int] = dict.fromkeys(users, 0)
    latencies: list[float] = []
    positions: list[int] = []
    failures: dict[str, int] = {}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)

    async with httpx.AsyncClient(base_url=command, limits=limits, timeout=30) as client:

        async def post(n: int) -> None:
            user = users[n % len(users)]
            body: dict[str, Any] = {"text": f"{TEXT} ({n})"}
            own = sessions[user]
            if len(own) + starting[user] >= SESSIONS_PER_USER and own:
                body["session_id"] = own[n % len(own)]
            else:
                starting[user] += 1
            began = time.perf_counter()
            try:
                response = await client.post(
                    "/api/v1/chat",
                    json=body,
                    headers={"X-User-ID": user, "Accept": "application/json"},
                )
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return
            finally:
                if "session_id" not in body:
                    starting[user] -= 1
            latencies.append((time.perf_counter() - began) * 1000)
            if response.status_code != 202:
                failures[str(response.status_code)] = failures.get(str(response.status_code), 0) + 1
                return
            data = response.json()
            positions.append(data["position"])
            if data["created"]:
                own.append(data["session_id"])

        total = int(rate * seconds)
        began = time.perf_counter()
        tasks = []
        for n in range(total):
            await asyncio.sleep(max(0.0, began + n / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(post(n)))
        sent = time.perf_counter() - began
        await asyncio.gather(*tasks)
    return {
        "sent": total,
        "send_s": sent,
        "offered_per_s": total / sent,
        "post_ms": summary(latencies),
        "failures": failures,
        "positions": positions,
    }


def projection_lags(url: str, watcher: Watcher, positions: list[int]) -> list[float]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(POSTED_EVENTS, (positions,)).fetchall()
    lags = []
    for position, txid, recorded_at in rows:
        seen = watcher.visible_at(txid, position)
        lags.append((seen - recorded_at).total_seconds() * 1000 if seen else float("inf"))
    return lags


def _caught_up(url: str, positions: list[int]) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT bool_and((e.txid, e.position) <= (c.last_txid, c.last_position)) "
            "FROM events e, projection_checkpoints c "
            "WHERE c.name = 'read_model' AND e.position = ANY(%s)",
            (positions,),
        ).fetchone()
    return bool(row and row[0])


def assistant_replies(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE type = 'MessagePosted' "
            "AND data->>'role' = 'assistant'"
        ).fetchone()
    return int(row[0]) if row else 0


def run(quick: bool = False) -> dict[str, Any]:
    rate, seconds, sse_chats = (20.0, 3.0, 2) if quick else (200.0, 30.0, CHATS_SSE)
    with throwaway_database("e2e") as url, tempfile.TemporaryDirectory() as logs:
        with system(url, Path(logs)) as (command, query):
            users = register_users(command, USERS)
            wait_for(lambda: _caught_up(url, [1]), timeout=30)
            print(
                f"{NAME}: first delta over {sse_chats} chats, then {rate:g} chats/s for "
                f"{seconds:g} s over {USERS} users"
            )
            try:
                deltas = first_delta(command, query, users[0], sse_chats)
                not_measured = ""
            except httpx.HTTPError as exc:
                deltas, not_measured = [], f"not measured: {exc!r}"
                print(f"  first delta {not_measured}")
            watcher = Watcher(url)
            watcher.start()
            load = steady(command, users, rate, seconds)
            result = asyncio.run(load)
            positions = result.pop("positions")
            try:
                wait_for(lambda: _caught_up(url, positions), timeout=120, interval=0.1)
            finally:
                time.sleep(0.05)
                watcher.stop.set()
                watcher.join()
            lags = projection_lags(url, watcher, positions)
            replies = assistant_replies(url)

    lag = summary(lags)
    first = summary([d["first_delta_ms"] for d in deltas])
    provider = summary(
        [d["provider_first_token_ms"] for d in deltas if d["provider_first_token_ms"] is not None]
    )
    added = summary([d["added_ms"] for d in deltas if d["added_ms"] is not None])
    print_table(
        "steady rate through the command service",
        [
            "offered chats/s",
            "sent",
            "failures",
            "POST p50 ms",
            "POST p99 ms",
            "lag p50 ms",
            "lag p99 ms",
            "lag max ms",
            "assistant replies stored",
        ],
        [
            [
                result["offered_per_s"],
                result["sent"],
                sum(result["failures"].values()),
                result["post_ms"]["median"],
                result["post_ms"]["p99"],
                lag["median"],
                lag["p99"],
                lag["max"],
                replies,
            ]
        ],
    )
    print_table(
        "first SSE delta (idle system)",
        [
            "chats",
            "POST->first delta p50 ms",
            "p99 ms",
            "provider first token p50 ms",
            "added by the system p50 ms",
            "p99 ms",
        ],
        [
            [
                len(deltas),
                first["median"],
                first["p99"],
                provider["median"],
                added["median"],
                added["p99"],
            ]
        ],
    )
    return finish(
        NAME,
        quick,
        {
            "method": "chatctl serve command / serve query / worker subprocesses; asyncio httpx "
            "open-loop client; checkpoint watcher every 2 ms (database clock)",
            "rate": rate,
            "seconds": seconds,
            "users": USERS,
            "steady": {**result, "projection_lag_ms": lag, "assistant_replies_stored": replies},
            "first_delta": {
                "not_measured": not_measured,
                "chats": deltas,
                "first_delta_ms": first,
                "provider_first_token_ms": provider,
                "added_ms": added,
            },
        },
    )


def main(argv: list[str] | None = None) -> int:
    return cli(NAME, run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
