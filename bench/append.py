"""Event store append throughput and latency on a throwaway database.

Each writer is a process (threads would share one GIL and measure Python, not Postgres) with
its own connection, appending MessagePosted events to 16 session streams of its own, one
transaction per append (one autocommit statement, one round trip), through
services.core.eventstore.append_sync: 1 or 8 writers, 1 or
100 events per append. The "serialised" rows take a transaction-level advisory lock before
each append, the alternative to reading below xmin that ARCHITECTURE.md asks to measure:
every append then waits for the previous one to commit. `--wake` sends, after each commit,
the wake-up the command service sends (services/core/wakeup.py: a Redis PUBLISH, from
BENCH_REDIS_URL or the local Redis), as the service does: from a thread of its own (the
service's is a task), so the writer does not wait for it, one PUBLISH at a time.

Each scenario runs `--runs` times for `--seconds`; throughput is the median over runs,
latency (append + commit, per transaction) percentiles are over every append of every run.
The server comes from BENCH_DATABASE_URL (a maintenance database on it), else the local one;
the benchmark creates its own database there, migrates it, and drops it at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import queue
import statistics
import sys
import threading
import time
import uuid
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import redis
from psycopg import sql

from services.core.events import MessagePosted
from services.core.eventstore import StreamAppend, append_sync
from services.core.migrate import migrate
from services.core.settings import Settings
from services.core.wakeup import wake_followers_sync

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
RESULTS = Path(__file__).resolve().parent / "results" / "append.json"
STREAMS_PER_WRITER = 16
SERIAL_LOCK = 7_246_002  # the advisory lock of the serialised variant
CONTENT = "I want to write a horror story. " * 6  # ~200 characters, a typical short message


class Scenario(msgspec.Struct, frozen=True):
    writers: int
    batch: int
    serialised: bool = False
    wake: bool = False

    @property
    def label(self) -> str:
        return (f"{self.writers}w x {self.batch}ev" + (" serialised" if self.serialised else "")
                + (" +wake" if self.wake else ""))


class RunResult(msgspec.Struct):
    run: int
    appends: int
    events: int
    elapsed: float
    latencies: list[float]


SCENARIOS = [
    Scenario(1, 1),
    Scenario(8, 1),
    Scenario(1, 100),
    Scenario(8, 100),
    Scenario(8, 1, serialised=True),
    Scenario(8, 100, serialised=True),
]


def _waker(settings: Settings) -> queue.SimpleQueue[None]:
    """The writer puts one item per commit; a daemon thread publishes a wake-up for them,
    one at a time, commits made meanwhile sharing the next (as services/core/wakeup.Wake)."""
    asked: queue.SimpleQueue[None] = queue.SimpleQueue()
    client = redis.Redis.from_url(settings.redis_url)

    def send() -> None:
        while True:
            asked.get()
            while not asked.empty():
                asked.get_nowait()
            wake_followers_sync(client, settings)

    threading.Thread(target=send, daemon=True).start()
    return asked


def _writer(
    url: str,
    scenario: Scenario,
    runs: int,
    seconds: float,
    barrier: Barrier,
    results: Any,  # multiprocessing Queue
) -> None:
    user_id = uuid.uuid4()
    streams = [f"session-{uuid.uuid4()}" for _ in range(STREAMS_PER_WRITER)]
    versions = dict.fromkeys(streams, 0)
    events = [
        MessagePosted(
            session_id=uuid.uuid4(),
            message_id=uuid.uuid4(),
            user_id=user_id,
            role="user",
            content=CONTENT,
        )
        for _ in range(scenario.batch)
    ]
    metadata = {"user_id": str(user_id), "correlation_id": str(uuid.uuid4())}
    settings = Settings(redis_url=os.environ.get("BENCH_REDIS_URL") or DEFAULT_REDIS,
                        redis_prefix=f"bench-append-{uuid.uuid4().hex[:8]}:")
    wake = _waker(settings) if scenario.wake else None
    with psycopg.connect(url, autocommit=True) as conn:
        for run in range(runs):
            barrier.wait()
            latencies: list[float] = []
            start = time.perf_counter()
            deadline = start + seconds
            i = 0
            while (t0 := time.perf_counter()) < deadline:
                stream = streams[i % STREAMS_PER_WRITER]
                i += 1
                item = StreamAppend(
                    stream_id=stream,
                    expected_version=versions[stream],
                    events=events,
                    stream_type="session",
                    owner_id=user_id,
                )
                if scenario.serialised:
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SERIAL_LOCK,))
                        append_sync(conn, [item], metadata)
                else:  # autocommit: the append is one statement, its own transaction
                    append_sync(conn, [item], metadata)
                if wake is not None:  # after the commit, as the services do
                    wake.put(None)
                versions[stream] += scenario.batch
                latencies.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            results.put(
                msgspec.msgpack.encode(
                    RunResult(
                        run, len(latencies), len(latencies) * scenario.batch, elapsed, latencies
                    )
                )
            )


def _percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def run_scenario(url: str, scenario: Scenario, runs: int, seconds: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(scenario.writers)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(url, scenario, runs, seconds, barrier, queue))
        for _ in range(scenario.writers)
    ]
    for p in procs:
        p.start()
    per_run: list[list[RunResult]] = [[] for _ in range(runs)]
    for _ in range(runs * scenario.writers):
        result = msgspec.msgpack.decode(queue.get(timeout=seconds * 10 + 120), type=RunResult)
        per_run[result.run].append(result)
    for p in procs:
        p.join(30)
        if p.exitcode != 0:
            raise RuntimeError(f"a writer failed (exit code {p.exitcode})")

    events_per_s = [sum(r.events for r in rs) / max(r.elapsed for r in rs) for rs in per_run]
    appends_per_s = [sum(r.appends for r in rs) / max(r.elapsed for r in rs) for rs in per_run]
    latencies = sorted(lat for rs in per_run for r in rs for lat in r.latencies)
    return {
        "scenario": scenario.label,
        "writers": scenario.writers,
        "events_per_append": scenario.batch,
        "serialised": scenario.serialised,
        "wake": scenario.wake,
        "events_per_s_median": round(statistics.median(events_per_s)),
        "appends_per_s_median": round(statistics.median(appends_per_s)),
        "events_per_s_runs": [round(x) for x in events_per_s],
        "latency_ms_p50": round(_percentile(latencies, 50) * 1000, 3),
        "latency_ms_p99": round(_percentile(latencies, 99) * 1000, 3),
        "latency_ms_max": round(latencies[-1] * 1000, 3) if latencies else None,
        "appends_measured": len(latencies),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _server_facts(url: str) -> dict[str, str]:
    facts: dict[str, str] = {}
    with psycopg.connect(url) as conn:
        for name in (
            "server_version",
            "synchronous_commit",
            "fsync",
            "wal_sync_method",
            "shared_buffers",
            "max_wal_size",
        ):
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            facts[name] = str(row[0]) if row else "?"
    return facts


def _table(rows: list[dict[str, Any]]) -> str:
    header = f"{'scenario':<24}{'events/s':>11}{'appends/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['scenario']:<24}{r['events_per_s_median']:>11,}{r['appends_per_s_median']:>11,}"
            f"{r['latency_ms_p50']:>9.2f}{r['latency_ms_p99']:>9.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench append", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--no-serialised", action="store_true", help="skip the serialised-append variant"
    )
    parser.add_argument(
        "--wake", action="store_true",
        help="publish the services' wake-up after each commit (services/core/wakeup.py)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 run x 1 s, no serialised variant"
    )
    args, _unknown = parser.parse_known_args(argv)  # `python -m bench` passes its options on
    if args.quick:
        args.runs, args.seconds, args.no_serialised = 1, 1.0, True
        if args.output == RESULTS:
            args.output = RESULTS.with_name("append-quick.json")

    server = os.environ.get("BENCH_DATABASE_URL") or DEFAULT_SERVER
    name = f"chat_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    try:
        migrate(url)
        facts = _server_facts(url)
        print(
            f"event store append: {os.cpu_count()} CPUs ({_cpu_model()}), PostgreSQL "
            f"{facts['server_version']}, synchronous_commit={facts['synchronous_commit']}, "
            f"fsync={facts['fsync']}; {args.runs} runs x {args.seconds:g} s per scenario, "
            "one process per writer",
            flush=True,
        )
        rows = []
        for scenario in SCENARIOS:
            if scenario.serialised and args.no_serialised:
                continue
            if args.wake:
                scenario = msgspec.structs.replace(scenario, wake=True)
            rows.append(run_scenario(url, scenario, args.runs, args.seconds))
            print(
                f"  {scenario.label}: {rows[-1]['events_per_s_median']:,} events/s",
                flush=True,
            )
        print()
        print(_table(rows))
        report = {
            "benchmark": "event store append",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": "python -m bench append " + " ".join(argv or sys.argv[2:]),
            "machine": {
                "nproc": os.cpu_count(),
                "cpu": _cpu_model(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "postgres": facts,
            "runs": args.runs,
            "seconds_per_run": args.seconds,
            "streams_per_writer": STREAMS_PER_WRITER,
            "results": rows,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.output}")
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
