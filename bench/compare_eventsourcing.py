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

Durability is the same for both: synchronous_commit is read back from each side's own
connection and printed.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import uuid
from collections import defaultdict
from typing import Any

import msgspec
import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

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
SIDES = ("ours", "eventsourcing")


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
        with self.conn.transaction():
            append_sync(self.conn, [item], _metadata(self.user))

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


def _write(side: str, url: str, batch: int, start_at: float, seconds: float) -> dict[str, Any]:
    """One writer process: appends from start_at for `seconds`; counts and times each."""
    writer = _Ours(url) if side == "ours" else _Theirs(url)
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


def run(quick: bool = False) -> dict[str, Any]:
    seconds, repeats = (0.5, 1) if quick else (3.0, 5)
    ctx = multiprocessing.get_context("spawn")
    with throwaway_database("es") as url, ctx.Pool(max(WRITERS)) as pool:
        theirs = _Theirs(url)
        theirs.recorder.create_table()
        theirs.close()
        server = server_settings(url)
        print(
            f"{NAME}: PostgreSQL {server['server_version']}, synchronous_commit="
            f"{server['synchronous_commit']}, fsync={server['fsync']}; writers are "
            f"processes; {seconds:g} s per trial, {repeats} trial(s) per configuration"
        )
        for side in SIDES:  # warm-up: imports, connections, first pages of the tables
            _trial(pool, side, url, max(WRITERS), 1, 0.3)

        rates: dict[tuple[str, int, int], list[float]] = defaultdict(list)
        latencies: dict[tuple[str, int, int], list[float]] = defaultdict(list)
        durability: dict[str, set[str]] = defaultdict(set)
        for repeat in range(repeats):
            for writers in WRITERS:
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
                rows.append(
                    [side, writers, batch, rate["median"], rate["min"], lat["median"], lat["p99"]]
                )
            configs.append(
                {
                    "writers": writers,
                    "batch": batch,
                    **per_side,
                    "ratio": ratio(
                        per_side["ours"]["events_per_s"]["median"],
                        per_side["eventsourcing"]["events_per_s"]["median"],
                    ),
                }
            )
    print_table(
        "append throughput (events/s: median and worst trial) and latency per append",
        ["side", "writers", "events/append", "events/s", "min events/s", "p50 ms", "p99 ms"],
        rows,
    )
    for side in SIDES:
        print(f"  synchronous_commit seen by {side}: {', '.join(sorted(durability[side]))}")

    by = {(c["writers"], c["batch"]): c for c in configs}
    targets = [
        target("ours/eventsourcing, 8 writers, 1 event/append", by[8, 1]["ratio"], 1.5, "x"),
        target("ours/eventsourcing, 8 writers, 100 events/append", by[8, 100]["ratio"], 1.5, "x"),
        target(
            "ours single-event appends/s, 8 writers",
            by[8, 1]["ours"]["events_per_s"]["median"],
            5000,
        ),
    ]
    print_targets(targets)
    return finish(
        NAME,
        quick,
        {
            "method": "writers are processes (multiprocessing spawn), one connection each; "
            f"{seconds} s per trial, {repeats} trials per configuration, sides alternate",
            "payload_bytes": payload_bytes(),
            "stream_length": STREAM_LENGTH,
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
