"""Replay throughput: `.venv/bin/python -m bench.replay [--events N] [--live]`.

Creates a throwaway database on the server of BENCH_DATABASE_URL (default: the local
PostgreSQL), fills its event store with N events by COPY (users, projects, sessions and
their messages, about 47 messages a session, user and assistant in turn), then times
`workers.replay.replay` (build aside + swap) and, with --live, the live projector over the
same events for comparison. Rows are written in chunks of CHUNK events, one transaction
each: a long transaction anywhere on the server holds back every follower's snapshot xmin.
"""

from __future__ import annotations

import argparse
import io
import os
import time
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

from services.core import events as ev
from services.core.migrate import migrate
from workers import replay
from workers.projector import catch_up

SERVER = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--live", action="store_true", help="also time the live projector")
    args = parser.parse_args(argv)

    name = f"chat_bench_replay_{uuid.uuid4().hex[:8]}"
    url = psycopg.conninfo.make_conninfo(SERVER, dbname=name)
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        migrate(url)
        started = time.perf_counter()
        n = fill(url, args.events)
        print(f"filled {n} events in {time.perf_counter() - started:.1f} s")
        if (waited := wait_visible(url)) > 0.5:
            print(f"waited {waited:.1f} s for other transactions on the server to end")
        if args.live:
            started = time.perf_counter()
            with psycopg.connect(url) as conn:
                while catch_up(conn, batch_size=500):
                    pass
            took = time.perf_counter() - started
            print(f"live projector (batches of 500): {took:.1f} s, {n / took:,.0f} events/s")
        started = time.perf_counter()
        replay.replay(url, out=io.StringIO())
        took = time.perf_counter() - started
        print(f"replay (build + analyze + swap, batches of {replay.REBUILD_BATCH}):"
              f" {took:.1f} s, {n / took:,.0f} events/s")
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT (SELECT count(*) FROM chat_messages),"
                                " (SELECT count(*) FROM sessions)").fetchone()
        print(f"read model: {rows[0] if rows else '?'} messages, {rows[1] if rows else '?'}"
              " sessions")
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


if __name__ == "__main__":
    main()
