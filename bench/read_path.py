"""Read-path latency: the seed's functions as the query role, on a seeded read model.

    .venv/bin/python -m bench.read_path [--scale 1.0] [--calls 500] [--keep]

Creates a throwaway database on BENCH_DATABASE_URL (default: the local server's
`postgres` database as a maintenance connection), migrates it, seeds 50,000 sessions and
1,000,000 messages (times --scale) with one bulk statement per table, VACUUM ANALYZEs, and
times each read as the query service runs it: as chat_query (RLS-bound), app.user_id set in
the call's transaction, through get_user_sessions / get_session_messages(_keyset).
Prints a table, writes bench/results/read_path.json, drops the database.

Each timed call runs as the service runs it (plan_cache_mode auto: the seed's functions
branch instead of taking optional bounds, so generic plans keep their index ranges;
--plan-cache-mode force_custom_plan measures the alternative). The timed span is one
statement (execute + fetch) on a warm connection; `request_tx_keyset` times every
statement of a GET .../messages?after= request once the user is set (user row, session
total, page). --extra-sql measures a candidate migration (e.g. an index).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from services.core.db import QUERY_ROLE, SET_ROLE, SET_USER
from services.core.migrate import migrate

SERVER_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RESULTS = Path(__file__).resolve().parent / "results" / "read_path.json"

# Deterministic ids, so every table can be filled by one INSERT ... SELECT generate_series
# without joins: user g, project g, session g.
USER_ID = "md5('u' || {})::uuid"
PROJECT_ID = "md5('p' || {})::uuid"
SESSION_ID = "md5('s' || {})::uuid"
# Sessions 1..heavy belong to user 0 (the heavy user); the rest spread over users 1..n.
OWNER_OF = "CASE WHEN {s} <= %(heavy)s THEN 0 ELSE 1 + ({s} %% %(users)s) END"

SEED_USERS = f"""
INSERT INTO users (user_id, email, display_name, created_at, updated_at)
SELECT {USER_ID.format("g")}, 'user' || g || '@bench.test', 'User ' || g,
       %(t0)s, %(t0)s
  FROM generate_series(0, %(users)s) g
"""
SEED_PROJECTS = f"""
INSERT INTO dossier (project_id, title, created_at, updated_at)
SELECT {PROJECT_ID.format("g")}, 'Project ' || g, %(t0)s, %(t0)s
  FROM generate_series(0, %(users)s) g
"""
SEED_LINKS = f"""
INSERT INTO user_projects (user_id, project_id, created_at)
SELECT {USER_ID.format("g")}, {PROJECT_ID.format("g")}, %(t0)s
  FROM generate_series(0, %(users)s) g
"""
SEED_SESSIONS = f"""
INSERT INTO sessions (session_id, user_id, project_id, title, created_at, updated_at,
                      last_message_at)
SELECT {SESSION_ID.format("g")},
       {USER_ID.format(OWNER_OF.format(s="g"))},
       {PROJECT_ID.format(OWNER_OF.format(s="g"))},
       'Session ' || g,
       %(t0)s + g * interval '1 minute',
       %(t0)s + g * interval '1 minute',
       %(t0)s + g * interval '1 minute'
  FROM generate_series(1, %(sessions)s) g
"""
# Session 1 (the heavy user's) is the deep one; the other messages go round-robin over
# sessions 2..n. One statement, so the statement-level trigger runs once.
SEED_MESSAGES = f"""
INSERT INTO chat_messages (session_id, user_id, role, content, metadata, created_at, seq)
SELECT {SESSION_ID.format("m.s")},
       {USER_ID.format(OWNER_OF.format(s="m.s"))},
       CASE WHEN m.seq %% 2 = 1 THEN 'user' ELSE 'assistant' END,
       md5(m.i::text) || ' ' || repeat('a story about a lighthouse keeper ', 3),
       CASE WHEN m.seq %% 2 = 0
            THEN '{{"model": "offline-echo-1", "tokens": 42}}'::jsonb END,
       %(t0)s + m.s * interval '1 minute' + m.seq * interval '1 second',
       m.seq
  FROM (SELECT g AS i, 1 AS s, g AS seq
          FROM generate_series(1, %(deep)s) g
        UNION ALL
        SELECT g, 2 + (g %% (%(sessions)s - 1)), 1 + g / (%(sessions)s - 1)
          FROM generate_series(0, %(spread)s - 1) g) m
"""

SESSIONS_PAGE = "SELECT * FROM get_user_sessions(%s, %s, %s, %s)"
MESSAGES_OFFSET = "SELECT * FROM get_session_messages(%s, %s, %s)"
MESSAGES_KEYSET = "SELECT * FROM get_session_messages_keyset(%s, %s, %s, %s)"
# What a GET .../messages?after= request runs, besides the page (services/query).
SELECT_USER = "SELECT user_id, email, display_name FROM users WHERE user_id = %s"
SELECT_TOTAL = "SELECT message_count FROM sessions WHERE session_id = %s"


@contextmanager
def throwaway_database(server_url: str, keep: bool) -> Iterator[str]:
    name = f"chat_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(server_url, dbname=name)
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"


def sizes(scale: float) -> dict[str, int]:
    sessions = max(10, round(50_000 * scale))
    messages = max(100, round(1_000_000 * scale))
    deep = max(50, round(20_000 * scale))
    return {
        "sessions": sessions,
        "messages": messages,
        "heavy": max(5, min(sessions - 1, round(2_000 * scale))),
        "users": max(1, round(1_000 * scale)),
        "deep": deep,
        "spread": messages - deep,
        "depth": max(1, min(deep - 50, round(10_000 * scale))),
    }


def seed(url: str, n: dict[str, int]) -> dict[str, float]:
    params = {**n, "t0": datetime(2024, 1, 1, tzinfo=UTC)}
    timings: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name, statement in (
            ("users", SEED_USERS),
            ("dossier", SEED_PROJECTS),
            ("user_projects", SEED_LINKS),
            ("sessions", SEED_SESSIONS),
            ("chat_messages", SEED_MESSAGES),
        ):
            started = time.perf_counter()
            conn.execute(statement, params)
            timings[name] = round(time.perf_counter() - started, 2)
            print(f"  seeded {name:<14} {timings[name]:>7.2f} s", flush=True)
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        timings["vacuum_analyze"] = round(time.perf_counter() - started, 2)
        row = conn.execute(
            f"SELECT message_count FROM sessions WHERE session_id = {SESSION_ID.format(1)}"
        ).fetchone()
        assert row is not None and row[0] == n["deep"], row
    return timings


def percentile(sorted_ms: list[float], p: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(p / 100 * len(sorted_ms)) - 1))
    return sorted_ms[index]


def measure(
    conn: psycopg.Connection[Any],
    user_id: str,
    call: Callable[[], Any],
    calls: int,
    custom_plans: bool,
) -> dict[str, float]:
    """Times `call` inside a transaction that has set app.user_id, like a request does."""
    samples = []
    for i in range(calls + calls // 10):  # the first tenth warms plans and caches
        with conn.transaction():
            conn.execute(SET_USER, (user_id,))
            if custom_plans:
                conn.execute(CUSTOM_PLANS)  # transaction-local
            started = time.perf_counter()
            rows = call()
            elapsed = (time.perf_counter() - started) * 1000
        assert rows, "a benchmark call returned nothing: RLS or seeding is off"
        if i >= calls // 10:
            samples.append(elapsed)
    samples.sort()
    return {
        "p50_ms": round(percentile(samples, 50), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
        "max_ms": round(samples[-1], 3),
        "calls": len(samples),
    }


def run_cases(
    url: str, n: dict[str, int], calls: int, custom_plans: bool
) -> dict[str, dict[str, float]]:
    with psycopg.connect(url, autocommit=True) as owner:
        heavy = owner.execute(f"SELECT {USER_ID.format(0)}").fetchone()
        deep = owner.execute(f"SELECT {SESSION_ID.format(1)}").fetchone()
        assert heavy is not None and deep is not None
        heavy_user, deep_session = heavy[0], deep[0]
        # a cursor deep into the heavy user's list (row 1,000, or half-way when smaller)
        cursor_row = owner.execute(
            "SELECT last_message_at, session_id FROM sessions WHERE user_id = %s "
            "ORDER BY last_message_at DESC, session_id DESC OFFSET %s LIMIT 1",
            (heavy_user, min(1000, n["heavy"] // 2)),
        ).fetchone()
        assert cursor_row is not None
    depth = n["depth"]
    results: dict[str, dict[str, float]] = {}
    with psycopg.connect(url) as conn:
        conn.execute(SET_ROLE.format(QUERY_ROLE))
        conn.commit()
        uid = str(heavy_user)

        def rows(query: str, args: tuple[Any, ...]) -> Callable[[], list[Any]]:
            return lambda: conn.execute(query, args).fetchall()

        def request_tx() -> list[Any]:
            # the rest of a GET .../messages?after= request (the user is already set)
            conn.execute(SELECT_USER, (heavy_user,)).fetchone()
            conn.execute(SELECT_TOTAL, (deep_session,)).fetchone()
            return conn.execute(MESSAGES_KEYSET, (deep_session, 50, depth, None)).fetchall()

        cases: list[tuple[str, Callable[[], Any]]] = [
            # the API asks for limit + 1 to know whether another page exists
            ("sessions_first_page", rows(SESSIONS_PAGE, (heavy_user, 11, None, None))),
            ("sessions_cursor_page", rows(SESSIONS_PAGE, (heavy_user, 11, *cursor_row))),
            ("messages_offset_0", rows(MESSAGES_OFFSET, (deep_session, 50, 0))),
            (f"messages_offset_{depth}", rows(MESSAGES_OFFSET, (deep_session, 50, depth))),
            (f"messages_keyset_{depth}", rows(MESSAGES_KEYSET, (deep_session, 50, depth, None))),
            (
                f"messages_keyset_before_{depth}",
                rows(MESSAGES_KEYSET, (deep_session, 50, None, depth)),
            ),
            ("request_tx_keyset", request_tx),
        ]
        for name, call in cases:
            results[name] = measure(conn, uid, call, calls, custom_plans)
            r = results[name]
            print(
                f"  {name:<28} p50 {r['p50_ms']:>7.3f} ms   p99 {r['p99_ms']:>7.3f} ms", flush=True
            )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 50k sessions, 1M messages")
    parser.add_argument("--calls", type=int, default=500, help="timed calls per case")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--plan-cache-mode",
        choices=["force_custom_plan", "auto"],
        default="auto",
        help="auto is what the query service runs with",
    )
    parser.add_argument(
        "--extra-sql",
        type=Path,
        help="SQL run after the migrations, before seeding (to measure a candidate migration)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: --scale 0.01")
    args, _unknown = parser.parse_known_args(argv)  # `python -m bench` passes its options on
    if args.quick:
        args.scale, args.calls = 0.01, min(args.calls, 200)
        if args.output == RESULTS:
            args.output = RESULTS.with_name("read_path-quick.json")

    n = sizes(args.scale)
    print(
        f"read path: {n['sessions']:,} sessions, {n['messages']:,} messages "
        f"(heavy user {n['heavy']:,} sessions, deep session {n['deep']:,} messages)",
        flush=True,
    )
    started = time.perf_counter()
    with throwaway_database(SERVER_URL, args.keep) as url:
        migrate(url)
        if args.extra_sql:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(args.extra_sql.read_text().encode())
        seed_timings = seed(url, n)
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        results = run_cases(url, n, args.calls, args.plan_cache_mode == "force_custom_plan")

    report = {
        "benchmark": "read_path",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.read_path "
        + " ".join(f"--{k} {v}" for k, v in (("scale", args.scale), ("calls", args.calls)))
        + f" --plan-cache-mode {args.plan_cache_mode}"
        + (f" --extra-sql {args.extra_sql}" if args.extra_sql else ""),
        "postgres": version[0] if version else None,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "extra_sql": args.extra_sql.read_text() if args.extra_sql else None,
        "load_average": os.getloadavg(),
        "sizes": n,
        "seed_seconds": seed_timings,
        "total_seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"| {'case':<30} | {'p50 ms':>8} | {'p99 ms':>8} | {'mean ms':>8} | {'max ms':>8} |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, r in results.items():
        print(
            f"| {name:<30} | {r['p50_ms']:>8.3f} | {r['p99_ms']:>8.3f} "
            f"| {r['mean_ms']:>8.3f} | {r['max_ms']:>8.3f} |"
        )
    print(f"\nwrote {args.output} ({report['total_seconds']} s in all)")


if __name__ == "__main__":
    main()
