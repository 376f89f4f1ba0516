"""Shared helpers of the comparison benchmarks: throwaway databases, timing, statistics,
tables and result files.

The benchmarks talk to a real PostgreSQL server: BENCH_DATABASE_URL names a maintenance
connection on it (default: the local one, as the postgres superuser). Every run creates its
own database there and drops it at the end, so nothing a benchmark writes outlives it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from services.core.migrate import migrate

SERVER_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# Benchmarks measure throughput, not the abuse defences (tests/integration/test_abuse.py
# sends those attacks): one load generator on one IP would otherwise meet the per-IP rate
# limit and the one-reply-per-session admission at once.
NO_ABUSE_LIMITS = {"RATE_LIMIT_ENABLED": "false", "REPLY_SLOTS_ENABLED": "false"}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# Databases -------------------------------------------------------------------------------


def with_database(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


@contextmanager
def throwaway_database(prefix: str, *, migrated: bool = True) -> Iterator[str]:
    """A fresh database on the benchmark server (migrated unless told otherwise)."""
    name = f"bench_{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(SERVER_URL, name)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        with psycopg.connect(SERVER_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def server_settings(url: str) -> dict[str, str]:
    """The server facts a reader needs to judge the figures (durability first)."""
    names = (
        "server_version",
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "shared_buffers",
        "max_connections",
    )
    with psycopg.connect(url, autocommit=True) as conn:
        return {
            n: str(conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(n))).fetchone()[0])  # type: ignore[index]
            for n in names
        }


OTHER_ACTIVITY = """
SELECT count(*) FROM pg_stat_activity
 WHERE state = 'active' AND pid <> pg_backend_pid() AND backend_type = 'client backend'
   AND datname NOT LIKE 'bench_%%'
"""


def other_activity() -> int:
    """Busy connections of other clients on the server: figures taken beside them are noisy
    (this machine has two cores, and other sessions run their own benchmarks and tests)."""
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        return int(conn.execute(OTHER_ACTIVITY).fetchone()[0])  # type: ignore[index]


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "postgres": server_settings(SERVER_URL),
        "other_active_backends_at_end": other_activity(),
        "loadavg_1m": os.getloadavg()[0],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Polls until predicate() is truthy; raises TimeoutError past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


# Statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p99, min and max of a sample, plus its size."""
    if not values:
        return {
            "n": 0,
            "median": float("nan"),
            "p99": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
        }
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
    }


def ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs else float("inf")


# Output ----------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def print_targets(targets: Sequence[dict[str, Any]]) -> None:
    for t in targets:
        mark = "MET" if t["met"] else "NOT MET"
        print(f"  target {t['name']}: {t['figure']} (want {t['want']}) -> {mark}")


def target(name: str, figure: float, want: float, unit: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "figure": round(figure, 3),
        "want": f">= {want}{unit}",
        "met": figure >= want,
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"\nresults written to {path}")
    return path


def finish(name: str, quick: bool, data: dict[str, Any]) -> dict[str, Any]:
    """Adds the machine facts and writes bench/results/<name>[-quick].json; returns data."""
    data = {"benchmark": name, "quick": quick, "machine": machine_info(), **data}
    write_results(name + ("-quick" if quick else ""), data)
    return data


def cli(
    name: str,
    run: Callable[[bool], dict[str, Any]],
    doc: str | None,
    argv: Sequence[str] | None = None,
) -> int:
    """The `python -m bench.<name> [--quick]` entry point (and `main(argv)`) of each module."""
    parser = argparse.ArgumentParser(
        prog=f"python -m bench.{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args, _unknown = parser.parse_known_args(argv)  # `python -m bench` passes its options on
    started = time.perf_counter()
    run(args.quick)
    print(f"{name}: {time.perf_counter() - started:.1f} s")
    return 0
