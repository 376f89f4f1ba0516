"""HTTP read path: requests/s and latency of the query endpoints through the gateway, beside
a bare route that runs one `SELECT 1` through the same pool in the same server process.

Set-up: a throwaway database seeded through the event store and the projector (one user
with SESSIONS sessions of MESSAGES messages each). Two server processes on free loopback
ports, each a single uvicorn worker as `chatctl serve` runs them:
- the query service: services.query.app.create_app(settings) with one route added by
  `app.register` (Litestar's API): GET /bench/select1, one `SELECT 1` through app.state.pool
  (the service's own pool, role chat_query), behind the same middleware;
- the gateway: `chatctl serve gateway` (reads go to the query service; no command service is
  started, as no GET reaches it).

Load: wrk (Debian package `wrk`; required: an asyncio httpx client tops out near 300 req/s on
this machine, so it measured itself), one thread, a fixed number of connections. Each
endpoint is measured through the gateway and directly against the query service, in rounds
(medians over the rounds, p99 as wrk reports it). The bare route is this benchmark's floor:
the list and the page are reported as a ratio to it, and the gateway as a ratio to direct.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
from litestar import Litestar, get
from litestar.datastructures import State

from bench.common import (
    NO_ABUSE_LIMITS,
    REDIS_URL,
    cli,
    finish,
    free_port,
    print_table,
    print_targets,
    summary,
    target,
    throwaway_database,
    wait_for,
)
from services.core.events import (
    MessagePosted,
    ProjectCreated,
    SessionStarted,
    UserRegistered,
    project_stream,
    session_stream,
    user_stream,
)
from services.core.eventstore import StreamAppend, append_sync
from services.core.settings import Settings
from workers.projector import catch_up

NAME = "http"
SESSIONS = 50
MESSAGES = 100
CONNECTIONS = 32
BARE_PATH = "/bench/select1"
ROOT = Path(__file__).resolve().parents[1]


# The query server with the bare route (runs in the server process) -----------------------


@get(BARE_PATH, operation_id="benchSelectOne", include_in_schema=False)
async def select_one(state: State) -> dict[str, int]:
    async with state.pool.connection() as conn:
        cur = await conn.execute("SELECT 1")
        row = await cur.fetchone()
    return {"value": row[0] if row else 0}


def query_app_with_bare_route() -> Litestar:
    """uvicorn factory: the real query app, settings from the environment, plus one route."""
    from services.query.app import create_app

    app = create_app(Settings.from_env())
    app.register(select_one)
    return app


# Seeding ---------------------------------------------------------------------------------


def seed(url: str, sessions: int, messages: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    user, project = uuid.uuid4(), uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(sessions)]
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            append_sync(
                conn,
                [
                    StreamAppend(
                        stream_id=user_stream(user),
                        expected_version=0,
                        events=[UserRegistered(user_id=user, display_name="bench")],
                        stream_type="user",
                        owner_id=user,
                    ),
                    StreamAppend(
                        stream_id=project_stream(project),
                        expected_version=0,
                        events=[ProjectCreated(project_id=project, owner_id=user)],
                        stream_type="project",
                        owner_id=user,
                    ),
                ],
            )
        for sid in ids:
            events: list[Any] = [
                SessionStarted(
                    session_id=sid, user_id=user, project_id=project, title="a horror story"
                )
            ]
            events += [
                MessagePosted(
                    session_id=sid,
                    message_id=uuid.uuid4(),
                    user_id=user,
                    role="user" if n % 2 == 0 else "assistant",
                    content=f"message {n} " + "lorem ipsum " * 20,
                )
                for n in range(messages)
            ]
            with conn.transaction():
                append_sync(
                    conn,
                    [
                        StreamAppend(
                            stream_id=session_stream(sid),
                            expected_version=0,
                            events=events,
                            stream_type="session",
                            owner_id=user,
                        )
                    ],
                )
        deadline = time.monotonic() + 120
        while (
            catch_up(conn)
            or conn.execute(
                "SELECT count(*) < %s FROM chat_messages", (sessions * messages,)
            ).fetchone()[0]
        ):  # type: ignore[index]
            if time.monotonic() > deadline:
                raise TimeoutError("projection did not catch up")
            time.sleep(0.05)
        conn.execute("VACUUM ANALYZE")
    return user, ids


# Servers ---------------------------------------------------------------------------------


@contextmanager
def server(argv: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=out)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv} exited with {proc.returncode}; see {log}")
            try:
                # any answer will do: not every service has /healthz yet
                return httpx.get(f"{url}/healthz", timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=60, interval=0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def system(database_url: str, logdir: Path) -> Iterator[tuple[str, str]]:
    """(gateway URL, query URL) of running servers."""
    query_port, gateway_port = free_port(), free_port()
    env = {
        **os.environ,
        **NO_ABUSE_LIMITS,
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}:",
        "QUERY_PORT": str(query_port),
        "PORT": str(gateway_port),
        "COMMAND_PORT": str(free_port()),
    }
    py = sys.executable
    with ExitStack() as stack:
        query = stack.enter_context(
            server(
                [
                    py,
                    "-m",
                    "uvicorn",
                    "bench.http:query_app_with_bare_route",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(query_port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env,
                query_port,
                logdir / "query.log",
            )
        )
        gateway = stack.enter_context(
            server(
                [py, "-m", "services.cli", "serve", "gateway"],
                env,
                gateway_port,
                logdir / "gateway.log",
            )
        )
        yield gateway, query


# Load ------------------------------------------------------------------------------------


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, headers: dict[str, str], seconds: float, connections: int) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50_ms": _ms(*p50.groups()) if p50 else float("nan"),
        "p99_ms": _ms(*p99.groups()) if p99 else float("nan"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


def load(url: str, headers: dict[str, str], seconds: float, connections: int) -> dict[str, Any]:
    return wrk(url, headers, seconds, connections)


WRK_MISSING = (
    "bench http needs wrk (a load generator that is not the bottleneck): "
    "apt-get install -y wrk (Debian/Ubuntu), brew install wrk (macOS)"
)


# The run ---------------------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, Any]:
    seconds, rounds = (1.0, 3) if quick else (5.0, 3)
    sessions, messages = (5, 60) if quick else (SESSIONS, MESSAGES)
    if not shutil.which("wrk"):
        raise SystemExit(WRK_MISSING)
    generator = "wrk -t1"
    with throwaway_database("http") as url, tempfile.TemporaryDirectory() as logs:
        user, ids = seed(url, sessions, messages)
        headers = {"X-User-ID": str(user)}
        paths = {
            "sessions": "/api/v1/sessions",
            "messages": f"/api/v1/sessions/{ids[0]}/messages",
            "bare": BARE_PATH,
        }
        print(
            f"{NAME}: {generator}, {CONNECTIONS} connections, {seconds:g} s x {rounds} "
            f"round(s); {sessions} sessions x {messages} messages"
        )
        with system(url, Path(logs)) as (gateway, query):
            bases = {"gateway": gateway, "direct": query}
            for base in bases.values():  # every route answers 200 before we load it
                for path in paths.values():
                    response = httpx.get(base + path, headers=headers, timeout=10)
                    response.raise_for_status()
                load(base + paths["bare"], headers, 1.0, CONNECTIONS)  # warm-up
            samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for _ in range(rounds):
                for via, base in bases.items():
                    for name, path in paths.items():
                        samples.setdefault((via, name), []).append(
                            load(base + path, headers, seconds, CONNECTIONS)
                        )

    results: dict[str, dict[str, Any]] = {}
    rows = []
    for (via, name), runs in samples.items():
        rps = summary([r["rps"] for r in runs])
        p99 = summary([r["p99_ms"] for r in runs])
        p50 = summary([r["p50_ms"] for r in runs])
        bad = sum(r["non_2xx"] for r in runs)
        results[f"{via}/{name}"] = {
            "rps": rps,
            "p50_ms": p50,
            "p99_ms": p99,
            "non_2xx": bad,
            "socket_errors": [r["socket_errors"] for r in runs],
        }
        rows.append(
            [via, name, rps["median"], rps["min"], p50["median"], p99["median"], p99["max"], bad]
        )
    print_table(
        "requests/s (median and worst round) and latency (median over rounds)",
        ["via", "route", "req/s", "min req/s", "p50 ms", "p99 ms", "worst p99 ms", "non-2xx"],
        rows,
    )
    targets = []
    bare = results["direct/bare"]["rps"]["median"]
    for name in ("sessions", "messages"):
        targets.append(
            target(
                f"direct: {paths[name].split('/')[-1]} req/s / bare route",
                results[f"direct/{name}"]["rps"]["median"] / bare,
                0.5,
                "x",
            )
        )
    for name in ("sessions", "messages"):
        targets.append(
            target(
                f"gateway/direct: {paths[name].split('/')[-1]} req/s",
                results[f"gateway/{name}"]["rps"]["median"]
                / results[f"direct/{name}"]["rps"]["median"],
                0.8,
                "x",
            )
        )
    print_targets(targets)
    return finish(
        NAME,
        quick,
        {
            "method": f"{generator}, {CONNECTIONS} connections, {seconds} s per run, {rounds} "
            "rounds; query service (uvicorn, 1 worker) with the bare route registered "
            "on the same app; gateway via `chatctl serve gateway`",
            "seed": {"sessions": sessions, "messages_per_session": messages},
            "routes": results,
            "targets": targets,
        },
    )


def main(argv: list[str] | None = None) -> int:
    return cli(NAME, run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
