"""Replay throughput and memory: `.venv/bin/python -m bench.replay [--events N | --quick]
[--chunk N] [--live] [--per-event]`.

Creates a throwaway database on the server of BENCH_DATABASE_URL (default: the local
PostgreSQL), fills its event store with N events (default 1,000,000; --quick: 50,000) by
COPY (users, projects, sessions and their messages, about 47 messages a session, user and
assistant in turn), then times `workers.replay.replay` (bulk build aside + analyze + swap)
and, in the same run, the floor it is measured against: a bare COPY of the rows it produced
(dumped with COPY TO into memory) into empty tables with the same definitions (replay's own
copy of the live tables: keys, indexes, checks, foreign keys; the trigger disabled), in one
transaction. --per-event also times the replay's per-event path, --live the live projector.
Each replay runs in a process of its own, whose peak resident memory is reported: the
bulk build streams (state per chunk only), so it should not grow with N.
Rows are appended in chunks of CHUNK events, one transaction each: a long transaction
anywhere on the server holds back every follower's snapshot xmin.

Prints a table and writes bench/results/replay.json (replay-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import resource
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from bench import common
from services.core import events as ev
from workers import replay, replay_bulk
from workers.projector import catch_up

CHUNK = 20_000
MESSAGES_PER_SESSION = 47
SESSIONS_PER_USER = 2

COPY_STREAMS = "COPY event_streams (stream_id, stream_type, owner_id, version) FROM STDIN"
COPY_EVENTS = "COPY events (stream_id, version, type, data, metadata) FROM STDIN"


def _session(user: uuid.UUID) -> Iterator[tuple[str, str, uuid.UUID, list[ev.Event]]]:
    project, session = uuid.uuid4(), uuid.uuid4()
    yield ev.project_stream(project), "project", user, [
        ev.ProjectCreated(project_id=project, owner_id=user, title="bench")]
    messages: list[ev.Event] = [ev.SessionStarted(session_id=session, user_id=user,
                                                  project_id=project, title="a story")]
    turn = uuid.uuid4()
    for i in range(MESSAGES_PER_SESSION):
        role: ev.Role = "user" if i % 2 == 0 else "assistant"
        if role == "user":
            turn = uuid.uuid4()
        messages.append(ev.MessagePosted(
            session_id=session, message_id=uuid.uuid4(), user_id=user, role=role,
            content=f"message {i} of a bench conversation " * 4, turn_id=turn))
    yield ev.session_stream(session), "session", user, messages


def streams(total: int) -> Iterator[tuple[str, str, uuid.UUID, list[ev.Event]]]:
    """Whole streams, in the order they are appended, until `total` events."""
    made = 0
    while made < total:
        user = uuid.uuid4()
        yield ev.user_stream(user), "user", user, [ev.UserRegistered(user_id=user)]
        made += 1
        for _ in range(SESSIONS_PER_USER):
            for stream in _session(user):
                yield stream
                made += len(stream[3])


def fill(url: str, total: int) -> int:
    """Appends about `total` events by COPY; returns how many."""
    count = 0
    pending: list[tuple[str, str, uuid.UUID, list[ev.Event]]] = []

    def flush(conn: psycopg.Connection) -> None:
        with conn.transaction():
            with conn.cursor().copy(COPY_STREAMS) as copy:
                for stream_id, kind, owner, events in pending:
                    copy.write_row((stream_id, kind, owner, len(events)))
            with conn.cursor().copy(COPY_EVENTS) as copy:
                for stream_id, _kind, _owner, events in pending:
                    for version, event in enumerate(events, 1):
                        copy.write_row((stream_id, version, ev.event_type(event),
                                        ev.encode_event(event).decode(), "{}"))
        pending.clear()

    with psycopg.connect(url, autocommit=True) as conn:
        size = 0
        for stream in streams(total):
            pending.append(stream)
            size += len(stream[3])
            count += len(stream[3])
            if size >= CHUNK:
                flush(conn)
                size = 0
        if pending:
            flush(conn)
    return count


VISIBLE = """
SELECT event_read_horizon() > (SELECT max(txid) FROM events)
"""


def wait_visible(url: str) -> float:
    """Followers read only below the oldest transaction still running in the database:
    wait until every event is below it."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        while not (row := conn.execute(VISIBLE).fetchone()) or not row[0]:
            time.sleep(0.1)
    return time.perf_counter() - started


def _replay_child(url: str, bulk: bool, chunk: int, results: Any) -> None:
    started = time.perf_counter()
    applied = replay.replay(url, out=io.StringIO(), bulk=bulk, chunk=chunk)["read_model"]
    took = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put((applied, took, peak))


def _time_replay(url: str, n: int, bulk: bool, chunk: int) -> dict[str, Any]:
    """Runs the replay in a fresh process of its own, so that its peak resident memory is
    the replay's alone (not the fill's, nor this process's)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_replay_child, args=(url, bulk, chunk, results))
    child.start()
    applied, took, peak = results.get()
    child.join()
    assert applied == n, (applied, n)
    return {"seconds": round(took, 3), "events_per_s": round(n / took),
            "peak_rss_mb": round(peak)}


def bare_copy(url: str) -> dict[str, Any]:
    """The floor: the read model's rows, dumped with COPY TO, COPYed into empty tables with
    the same definitions (replay.prepare makes them, in the schema `rebuild`), the trigger
    disabled, in one transaction. Returns the seconds and the rows per table."""
    tables = replay.READ_MODEL.tables  # parents first
    dumps: dict[str, bytes] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for table in tables:
            buffer = bytearray()
            with conn.cursor().copy(sql.SQL("COPY {} TO STDOUT (FORMAT BINARY)").format(
                    sql.Identifier("public", table))) as copy:
                for block in copy:
                    buffer += block
            dumps[table] = bytes(buffer)
        rows = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(t))).fetchone()[0] for t in tables}  # type: ignore[index]
        replay.prepare(conn, replay.READ_MODEL)
        with conn.transaction():
            conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(
                sql.Identifier(replay.REBUILD_SCHEMA, "chat_messages")))
        started = time.perf_counter()
        with conn.transaction():
            for table in tables:
                with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(
                        sql.Identifier(replay.REBUILD_SCHEMA, table))) as copy:
                    data = memoryview(dumps[table])
                    for i in range(0, len(data), 1 << 20):
                        copy.write(data[i:i + (1 << 20)])
        took = time.perf_counter() - started
        replay.cleanup(conn)
    return {"seconds": round(took, 3), "rows": rows,
            "megabytes": round(sum(map(len, dumps.values())) / 1e6, 1)}


def run(events: int, quick: bool, per_event: bool, live: bool,
        chunk: int = replay_bulk.CHUNK) -> dict[str, Any]:
    with common.throwaway_database("replay") as url:
        started = time.perf_counter()
        n = fill(url, events)
        filled = time.perf_counter() - started
        print(f"filled {n:,} events in {filled:.1f} s")
        if (waited := wait_visible(url)) > 0.5:
            print(f"waited {waited:.1f} s for other transactions on the server to end")
        data: dict[str, Any] = {"events": n, "chunk": chunk,
                                "fill_seconds": round(filled, 1)}
        if live:
            started = time.perf_counter()
            with psycopg.connect(url) as conn:
                while catch_up(conn, batch_size=500):
                    pass
            took = time.perf_counter() - started
            data["live_projector"] = {"seconds": round(took, 3), "events_per_s": round(n / took)}
        if per_event:
            data["replay_per_event"] = _time_replay(url, n, False, chunk)
        data["replay"] = _time_replay(url, n, True, chunk)
        data["bare_copy"] = bare_copy(url)
    took, bare = data["replay"]["seconds"], data["bare_copy"]["seconds"]
    data["ratio_replay_to_bare_copy"] = round(took / bare, 2)
    rows = [["replay (bulk build + analyze + swap)", took, data["replay"]["events_per_s"],
             data["ratio_replay_to_bare_copy"], data["replay"]["peak_rss_mb"]]]
    if per_event:
        rows.append(["replay, per-event path", data["replay_per_event"]["seconds"],
                     data["replay_per_event"]["events_per_s"],
                     round(data["replay_per_event"]["seconds"] / bare, 2),
                     data["replay_per_event"]["peak_rss_mb"]])
    if live:
        rows.append(["live projector (batches of 500)", data["live_projector"]["seconds"],
                     data["live_projector"]["events_per_s"],
                     round(data["live_projector"]["seconds"] / bare, 2), ""])
    rows.append(["bare COPY of the resulting rows", bare, round(n / bare), 1.0, ""])
    counts = data["bare_copy"]["rows"]
    common.print_table(
        f"Replay of {n:,} events ({counts['chat_messages']:,} messages,"
        f" {counts['turns']:,} turns, {counts['sessions']:,} sessions,"
        f" {counts['users']:,} users)",
        ["", "seconds", "events/s", "x bare COPY", "peak RSS MB"], rows)
    data["targets"] = [
        common.target("replay events/s", data["replay"]["events_per_s"], 50_000),
        {"name": "replay within 3x of the bare COPY", "figure": data["ratio_replay_to_bare_copy"],
         "want": "<= 3", "met": data["ratio_replay_to_bare_copy"] <= 3},  # bench/gate.py
        {"name": "replay no slower than the bare COPY", "figure": data["ratio_replay_to_bare_copy"],
         "want": "<= 1", "met": data["ratio_replay_to_bare_copy"] <= 1},  # issue 16
    ]
    common.print_targets(data["targets"])
    return common.finish("replay", quick, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50,000 events: a smoke run")
    parser.add_argument("--per-event", action="store_true",
                        help="also time the replay's per-event path")
    parser.add_argument("--live", action="store_true", help="also time the live projector")
    parser.add_argument("--chunk", type=int, default=replay_bulk.CHUNK,
                        help="events per bulk-build transaction (memory is O(chunk))")
    args, _unknown = parser.parse_known_args(argv)  # `python -m bench` passes its options on
    events = 50_000 if args.quick else args.events
    started = time.perf_counter()
    run(events, args.quick, args.per_event, args.live, args.chunk)
    print(f"replay: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
