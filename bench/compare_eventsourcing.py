"""Our event store's append against the `eventsourcing` library's PostgreSQL recorder.

Both sides write to the same throwaway database on the same server, with the same payload
(one MessagePosted event and its metadata, ~0.5 KB of JSON), from writer *processes*
(multiprocessing, spawn): 1 and 8 concurrent writers, 1 and 100 events per append. Each
writer has its own connection and appends for a fixed time; trials of the two sides
alternate, and each configuration is repeated (medians and p99 over the trials).

- ours: services.core.eventstore.append_sync in one transaction, a new stream (expected
  version 0) every STREAM_LENGTH events, else the stream's current version as expected.
- theirs: eventsourcing.postgres.PostgresApplicationRecorder.insert_events (its own
  transaction, pipelined, with its EXCLUSIVE table lock) with the same stream layout.
- floor: what PostgreSQL itself does (bench/floor.py), from the same kind of writer
  processes: one single-row INSERT per commit for 1 event, one COPY of the rows per commit
  for 100; and, for 1 event, pgbench with the same number of clients when it is installed.

An append of one stream on an autocommit connection is one statement, its own transaction:
one round trip, as the floor's INSERT.

Durability is the same for both: synchronous_commit is read back from each side's own
connection and printed.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import uuid
from collections import defaultdict
from typing import Any

import msgspec
import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import sql

from bench import floor
from bench.common import (
    cli,
    finish,
    print_table,
    print_targets,
    ratio,
    server_settings,
    summary,
    target,
    throwaway_database,
)
from services.core.events import MessagePosted, encode_event, session_stream
from services.core.eventstore import StreamAppend, append_sync

NAME = "compare_eventsourcing"
THEIR_TABLE = "es_stored_events"
CONTENT_CHARS = 200
STREAM_LENGTH = 1000  # events per stream before a writer starts a new one
WRITERS = (1, 8)
BATCHES = (1, 100)
SIDES = ("ours", "eventsourcing", "floor")
PEERS = ("ours", "eventsourcing")


def _event(user_id: uuid.UUID, session_id: uuid.UUID, n: int) -> MessagePosted:
    text = f"message {n}: " + "I want to write a horror story. " * 8
    return MessagePosted(
        session_id=session_id,
        message_id=uuid.uuid4(),
        user_id=user_id,
        role="user",
        content=text[:CONTENT_CHARS],
        turn_id=uuid.uuid4(),
    )


def _metadata(user_id: uuid.UUID) -> dict[str, str]:
    return {
        "user_id": str(user_id),
        "correlation_id": uuid.uuid4().hex,
        "request_id": uuid.uuid4().hex,
    }


def payload_bytes() -> dict[str, int]:
    user, session = uuid.uuid4(), uuid.uuid4()
    event, meta = _event(user, session, 1), _metadata(user)
    return {
        "ours_data": len(encode_event(event)),
        "ours_metadata": len(msgspec.json.encode(meta)),
        "eventsourcing_state": len(msgspec.json.encode({"event": event, "metadata": meta})),
    }


class _Ours:
    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.user = uuid.uuid4()

    def synchronous_commit(self) -> str:
        return str(self.conn.execute("SHOW synchronous_commit").fetchone()[0])  # type: ignore[index]

    def append(self, stream: uuid.UUID, version: int, batch: int) -> None:
        events = [_event(self.user, stream, version + i) for i in range(batch)]
        item = StreamAppend(
            stream_id=session_stream(stream),
            expected_version=version,
            events=events,
            stream_type="session",
            owner_id=self.user,
        )
        append_sync(self.conn, [item], _metadata(self.user))  # autocommit: one round trip

    def close(self) -> None:
        self.conn.close()


class _Theirs:
    def __init__(self, url: str) -> None:
        info = psycopg.conninfo.conninfo_to_dict(url)
        self.datastore = PostgresDatastore(
            dbname=str(info["dbname"]),
            host=str(info.get("host", "127.0.0.1")),
            port=str(info.get("port", 5432)),
            user=str(info.get("user", "postgres")),
            password=str(info.get("password", "")),
            pool_size=1,
            max_overflow=0,
        )
        self.recorder = PostgresApplicationRecorder(self.datastore, events_table_name=THEIR_TABLE)
        self.user = uuid.uuid4()

    def synchronous_commit(self) -> str:
        with self.datastore.get_connection() as conn:
            row = conn.execute("SHOW synchronous_commit").fetchone()
        return str(row["synchronous_commit"])  # type: ignore[index]

    def append(self, stream: uuid.UUID, version: int, batch: int) -> None:
        stored = []
        for i in range(batch):
            event = _event(self.user, stream, version + i)
            state = msgspec.json.encode({"event": event, "metadata": _metadata(self.user)})
            stored.append(
                StoredEvent(
                    originator_id=stream,
                    originator_version=version + i + 1,
                    topic="MessagePosted",
                    state=state,
                )
            )
        self.recorder.insert_events(stored)

    def close(self) -> None:
        self.datastore.close()


class _Floor:
    """The floor's writer: the rows without any event store (bench/floor.py)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def synchronous_commit(self) -> str:
        return str(self.conn.execute("SHOW synchronous_commit").fetchone()[0])  # type: ignore[index]

    def append(self, stream: uuid.UUID, version: int, batch: int) -> None:
        if batch == 1:
            self.conn.execute(floor.INSERT_ROW, (floor.ROW,))
            return
        with self.conn.transaction(), self.conn.cursor().copy(floor.COPY_ROWS) as copy:
            for _ in range(batch):
                copy.write_row((floor.ROW,))

    def close(self) -> None:
        self.conn.close()


WRITERS_BY_SIDE = {"ours": _Ours, "eventsourcing": _Theirs, "floor": _Floor}


def _write(side: str, url: str, batch: int, start_at: float, seconds: float) -> dict[str, Any]:
    """One writer process: appends from start_at for `seconds`; counts and times each."""
    writer = WRITERS_BY_SIDE[side](url)
    durability = writer.synchronous_commit()
    latencies: list[float] = []
    events = 0
    stream, version = uuid.uuid4(), 0
    time.sleep(max(0.0, start_at - time.time()))
    stop_at = start_at + seconds
    while time.time() < stop_at:
        if version + batch > STREAM_LENGTH:
            stream, version = uuid.uuid4(), 0
        began = time.perf_counter()
        writer.append(stream, version, batch)
        latencies.append(time.perf_counter() - began)
        version += batch
        events += batch
    ended = time.time()
    writer.close()
    return {
        "events": events,
        "latencies": latencies,
        "elapsed": ended - start_at,
        "synchronous_commit": durability,
    }


def _trial(
    pool: Any, side: str, url: str, writers: int, batch: int, seconds: float
) -> dict[str, Any]:
    start_at = time.time() + 1.0  # every writer connected and waiting by then
    results = pool.starmap(_write, [(side, url, batch, start_at, seconds)] * writers)
    elapsed = max(r["elapsed"] for r in results)
    return {
        "events_per_s": sum(r["events"] for r in results) / elapsed,
        "latencies": [lat for r in results for lat in r["latencies"]],
        "synchronous_commit": sorted({r["synchronous_commit"] for r in results}),
    }


def _group_commit(url: str) -> dict[str, int]:
    """BENCH_COMMIT_DELAY=<microseconds>[,<siblings>] sets group commit on the throwaway
    database only (new connections take it up); unset, the server's settings stand."""
    value = os.environ.get("BENCH_COMMIT_DELAY", "")
    if not value:
        return {}
    delay, _, siblings = value.partition(",")
    settings = {"commit_delay": int(delay), "commit_siblings": int(siblings or 5)}
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(url, autocommit=True) as conn:
        for name, setting in settings.items():
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(str(dbname)), sql.Identifier(name), sql.Literal(setting)
                )
            )
    return settings


def run(quick: bool = False) -> dict[str, Any]:
    seconds, repeats = (0.5, 3) if quick else (3.0, 5)
    ctx = multiprocessing.get_context("spawn")
    with throwaway_database("es") as url, ctx.Pool(max(WRITERS)) as pool:
        theirs = _Theirs(url)
        theirs.recorder.create_table()
        theirs.close()
        floor.prepare(url)
        group_commit = _group_commit(url)
        server = server_settings(url)
        print(
            f"{NAME}: PostgreSQL {server['server_version']}, synchronous_commit="
            f"{server['synchronous_commit']}, fsync={server['fsync']}; writers are "
            f"processes; {seconds:g} s per trial, {repeats} trial(s) per configuration"
            + (f"; group commit {group_commit}" if group_commit else "")
        )
        for side in SIDES:  # warm-up: imports, connections, first pages of the tables
            _trial(pool, side, url, max(WRITERS), 1, 0.3)

        rates: dict[tuple[str, int, int], list[float]] = defaultdict(list)
        latencies: dict[tuple[str, int, int], list[float]] = defaultdict(list)
        durability: dict[str, set[str]] = defaultdict(set)
        pgbench: dict[int, list[float]] = defaultdict(list)
        for repeat in range(repeats):
            for writers in WRITERS:
                if floor.pgbench_available():
                    pgbench[writers].append(floor.pgbench_rows_per_s(url, writers, seconds))
                for batch in BATCHES:
                    # alternate which side goes first, so drift does not favour one
                    for side in SIDES if repeat % 2 == 0 else SIDES[::-1]:
                        result = _trial(pool, side, url, writers, batch, seconds)
                        rates[side, writers, batch].append(result["events_per_s"])
                        latencies[side, writers, batch] += result["latencies"]
                        durability[side].update(result["synchronous_commit"])

    rows, configs = [], []
    for writers in WRITERS:
        for batch in BATCHES:
            per_side = {}
            for side in SIDES:
                rate = summary(rates[side, writers, batch])
                lat = summary([x * 1000 for x in latencies[side, writers, batch]])
                per_side[side] = {"events_per_s": rate, "append_ms": lat}
            ours = per_side["ours"]["events_per_s"]["median"]
            pgb = summary(pgbench[writers])["median"] if batch == 1 else float("nan")
            config = {
                "writers": writers,
                "batch": batch,
                **per_side,
                "pgbench_rows_per_s": pgb,
                "ratio": ratio(ours, per_side["eventsourcing"]["events_per_s"]["median"]),
                "to_floor": ratio(ours, per_side["floor"]["events_per_s"]["median"]),
                "to_pgbench": ratio(ours, pgb) if batch == 1 else float("nan"),
            }
            configs.append(config)
            for side in SIDES:
                rate, lat = per_side[side]["events_per_s"], per_side[side]["append_ms"]
                rows.append([
                    side, writers, batch, rate["median"], rate["min"], lat["median"], lat["p99"],
                    ratio(rate["median"], per_side["floor"]["events_per_s"]["median"]),
                    ratio(rate["median"], pgb),
                ])  # fmt: skip
    print_table(
        "append throughput (events/s: median and worst trial), latency per append, and the "
        "ratio to the floor (the same writers doing bare INSERT/COPY) and to pgbench",
        ["side", "writers", "events/append", "events/s", "min events/s", "p50 ms", "p99 ms",
         "/floor", "/pgbench"],
        rows,
    )  # fmt: skip
    for writers in WRITERS:
        print(f"  pgbench, {writers} client(s), one single-row INSERT per commit: "
              f"{summary(pgbench[writers])['median']:,.0f} tps")  # fmt: skip
    for side in SIDES:
        print(f"  synchronous_commit seen by {side}: {', '.join(sorted(durability[side]))}")

    by = {(c["writers"], c["batch"]): c for c in configs}
    targets = [
        target("ours/eventsourcing, 8 writers, 1 event/append", by[8, 1]["ratio"], 2.0, "x"),
        target("ours/eventsourcing, 8 writers, 100 events/append", by[8, 100]["ratio"], 2.0, "x"),
        target("ours/floor, 8 writers, 1 event/append", by[8, 1]["to_floor"], 0.6, "x"),
    ]
    print_targets(targets)
    return finish(
        NAME,
        quick,
        {
            "method": "writers are processes (multiprocessing spawn), one connection each; "
            f"{seconds} s per trial, {repeats} trials per configuration, sides alternate; "
            "floor: the same writers doing one INSERT (1 event) or one COPY (100) per commit",
            "payload_bytes": payload_bytes(),
            "stream_length": STREAM_LENGTH,
            "group_commit": group_commit,
            "synchronous_commit": {s: sorted(v) for s, v in durability.items()},
            "server": server,
            "configs": configs,
            "targets": targets,
        },
    )


def main(argv: list[str] | None = None) -> int:
    return cli(NAME, run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
