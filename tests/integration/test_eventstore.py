"""The event store on real PostgreSQL: optimistic appends, reads, and a follower that never
skips an event that commits late with a lower position."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from services.core import eventstore as es
from services.core.events import (
    MessagePosted,
    SessionArchived,
    SessionRenamed,
    SessionStarted,
    session_stream,
)
from services.core.eventstore import Checkpoint, ConcurrencyError, StreamAppend


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """Autocommit: each test opens its transactions explicitly with conn.transaction()."""
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def _started(session_id: uuid.UUID, user_id: uuid.UUID) -> SessionStarted:
    return SessionStarted(session_id=session_id, user_id=user_id, project_id=uuid.uuid4())


def _posted(session_id: uuid.UUID, user_id: uuid.UUID, text: str) -> MessagePosted:
    return MessagePosted(
        session_id=session_id, message_id=uuid.uuid4(), user_id=user_id, role="user", content=text
    )


def _new_stream(user_id: uuid.UUID | None = None) -> tuple[str, uuid.UUID, uuid.UUID]:
    sid, uid = uuid.uuid4(), user_id or uuid.uuid4()
    return session_stream(sid), sid, uid


def _create(stream: str, sid: uuid.UUID, uid: uuid.UUID, *extra: Any) -> StreamAppend:
    return StreamAppend(
        stream_id=stream,
        expected_version=0,
        events=[_started(sid, uid), *extra],
        stream_type="session",
        owner_id=uid,
    )


def _at(stream: str, expected: int, *events: Any) -> StreamAppend:
    return StreamAppend(stream_id=stream, expected_version=expected, events=list(events))


def _count_events(conn: psycopg.Connection, stream_ids: list[str] | None = None) -> int:
    if stream_ids is None:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
    else:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE stream_id = ANY(%s)", (stream_ids,)
        ).fetchone()
    assert row is not None
    return int(row[0])


# Appending ------------------------------------------------------------------------------


def test_appending_with_expected_version_zero_creates_the_stream(conn: psycopg.Connection) -> None:
    stream, sid, uid = _new_stream()
    create = _create(stream, sid, uid)
    with conn.transaction():
        positions = es.append_sync(conn, [create])

    assert len(positions) == 1
    info = es.stream_info_sync(conn, stream)
    assert info == es.StreamInfo(stream, "session", uid, 1, False)
    [recorded] = es.read_stream_sync(conn, stream)
    assert (recorded.position, recorded.version) == (positions[0], 1)
    assert recorded.type == "SessionStarted"
    assert recorded.event == create.events[0]


def test_appending_at_the_current_version_adds_the_next_versions(conn: psycopg.Connection) -> None:
    stream, sid, uid = _new_stream()
    with conn.transaction():
        es.append_sync(conn, [_create(stream, sid, uid)])
    for n, text in enumerate(["one", "two", "three"], start=1):
        with conn.transaction():
            es.append_sync(conn, [_at(stream, n, _posted(sid, uid, text))])

    recorded = es.read_stream_sync(conn, stream)
    assert [r.version for r in recorded] == [1, 2, 3, 4]
    assert [getattr(r.event, "content", None) for r in recorded] == [None, "one", "two", "three"]
    info = es.stream_info_sync(conn, stream)
    assert info is not None and info.version == 4


def test_several_events_in_one_append_get_consecutive_versions_and_positions(
    conn: psycopg.Connection,
) -> None:
    stream, sid, uid = _new_stream()
    posted = [_posted(sid, uid, f"m{i}") for i in range(5)]
    with conn.transaction():
        first = es.append_sync(conn, [_create(stream, sid, uid, *posted[:2])])
    with conn.transaction():
        more = es.append_sync(conn, [_at(stream, 3, *posted[2:])])

    assert len(first) == 3 and len(more) == 3
    for batch in (first, more):
        assert batch == list(range(batch[0], batch[0] + len(batch)))
    recorded = es.read_stream_sync(conn, stream)
    assert [r.version for r in recorded] == [1, 2, 3, 4, 5, 6]
    assert [r.position for r in recorded] == first + more
    assert [r.event for r in recorded[1:]] == posted


def test_a_stale_expected_version_raises_and_writes_nothing(conn: psycopg.Connection) -> None:
    stream, sid, uid = _new_stream()
    with conn.transaction():
        es.append_sync(conn, [_create(stream, sid, uid, _posted(sid, uid, "hello"))])
    before = _count_events(conn)

    for stale in (1, 3, 7):
        with pytest.raises(ConcurrencyError) as err, conn.transaction():
            es.append_sync(conn, [_at(stream, stale, _posted(sid, uid, "lost"))])
        assert err.value.stream_id == stream and err.value.expected == stale

    assert _count_events(conn) == before
    info = es.stream_info_sync(conn, stream)
    assert info is not None and info.version == 2


def test_a_failed_append_rolls_back_the_whole_transaction_including_earlier_appends(
    conn: psycopg.Connection,
) -> None:
    stream, sid, uid = _new_stream()
    with conn.transaction():
        es.append_sync(conn, [_create(stream, sid, uid)])
    other, other_sid, _ = _new_stream(uid)
    before = _count_events(conn)

    with pytest.raises(ConcurrencyError), conn.transaction():
        # the first two succeed inside the transaction ...
        es.append_sync(conn, [_create(other, other_sid, uid)])
        es.append_sync(conn, [_at(stream, 1, _posted(sid, uid, "ok"))])
        # ... the third is stale (the stream is at 2 now), so all three go
        es.append_sync(conn, [_at(stream, 1, _posted(sid, uid, "stale"))])

    assert _count_events(conn) == before
    assert es.stream_info_sync(conn, other) is None
    info = es.stream_info_sync(conn, stream)
    assert info is not None and info.version == 1


def test_one_append_call_with_a_stale_stream_among_several_writes_nothing(
    conn: psycopg.Connection,
) -> None:
    stream, sid, uid = _new_stream()
    with conn.transaction():
        es.append_sync(conn, [_create(stream, sid, uid)])
    fresh, fresh_sid, _ = _new_stream(uid)
    before = _count_events(conn)

    with pytest.raises(ConcurrencyError), conn.transaction():
        es.append_sync(
            conn,
            [
                _create(fresh, fresh_sid, uid),
                _at(stream, 5, _posted(sid, uid, "x")),
            ],
        )

    assert _count_events(conn) == before
    assert es.stream_info_sync(conn, fresh) is None


def test_creating_a_stream_that_exists_raises_concurrency_error(conn: psycopg.Connection) -> None:
    stream, sid, uid = _new_stream()
    with conn.transaction():
        es.append_sync(conn, [_create(stream, sid, uid)])
    before = _count_events(conn)

    with pytest.raises(ConcurrencyError), conn.transaction():
        es.append_sync(conn, [_create(stream, sid, uid)])

    assert _count_events(conn) == before
    assert [r.version for r in es.read_stream_sync(conn, stream)] == [1]


def test_an_append_needs_at_least_one_event(conn: psycopg.Connection) -> None:
    with pytest.raises(ValueError):
        es.append_sync(conn, [StreamAppend(stream_id="session-x", expected_version=0, events=[])])


def test_a_deleted_stream_refuses_further_appends(conn: psycopg.Connection) -> None:
    stream, sid, uid = _new_stream()
    with conn.transaction():
        es.append_sync(conn, [_create(stream, sid, uid)])
        conn.execute(es.MARK_STREAM_DELETED, (stream,))

    with pytest.raises(ConcurrencyError), conn.transaction():
        es.append_sync(conn, [_at(stream, 1, _posted(sid, uid, "late"))])
    assert len(es.read_stream_sync(conn, stream)) == 1


def _race(database_url: str, first: StreamAppend, second: StreamAppend) -> BaseException | None:
    """Runs `first` in an open transaction, starts `second` on another connection (it blocks
    on the first's lock), commits the first and returns what the second raised."""
    outcome: list[BaseException | None] = []

    def run_second() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as c2, c2.transaction():
                es.append_sync(c2, [second])
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with psycopg.connect(database_url) as c1:
        es.append_sync(c1, [first])
        (pid,) = c1.execute("SELECT pg_backend_pid()").fetchone()  # type: ignore[misc]
        thread = threading.Thread(target=run_second)
        thread.start()
        # wait until the second writer is blocked behind the first's row lock
        deadline = time.monotonic() + 10
        with psycopg.connect(database_url, autocommit=True) as watcher:
            while time.monotonic() < deadline:
                blocked = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    (pid,),
                ).fetchone()
                if blocked and blocked[0]:
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the second writer never waited for the first")
        c1.commit()
        thread.join(10)
    return outcome[0]


def test_two_writers_at_the_same_expected_version_one_wins_one_gets_concurrency_error(
    conn: psycopg.Connection, database_url: str
) -> None:
    stream, sid, uid = _new_stream()
    with conn.transaction():
        es.append_sync(conn, [_create(stream, sid, uid)])

    def at_one(text: str) -> StreamAppend:
        return _at(stream, 1, _posted(sid, uid, text))

    assert isinstance(_race(database_url, at_one("winner"), at_one("loser")), ConcurrencyError)
    assert [getattr(r.event, "content", None) for r in es.read_stream_sync(conn, stream)] == [
        None,
        "winner",
    ]


def test_two_writers_creating_the_same_stream_one_wins_one_gets_concurrency_error(
    conn: psycopg.Connection, database_url: str
) -> None:
    stream, sid, uid = _new_stream()
    outcome = _race(database_url, _create(stream, sid, uid), _create(stream, sid, uid))
    assert isinstance(outcome, ConcurrencyError)
    assert [r.version for r in es.read_stream_sync(conn, stream)] == [1]


# Reading --------------------------------------------------------------------------------


def test_read_stream_returns_events_in_version_order_and_after_a_version(
    conn: psycopg.Connection,
) -> None:
    stream, sid, uid = _new_stream()
    other, other_sid, _ = _new_stream(uid)
    with conn.transaction():
        es.append_sync(conn, [_create(stream, sid, uid)])
    # interleave another stream so positions and versions do not line up trivially
    for version in range(1, 6):
        with conn.transaction():
            if version == 1:
                es.append_sync(conn, [_create(other, other_sid, uid)])
            es.append_sync(conn, [_at(stream, version, _posted(sid, uid, str(version)))])

    recorded = es.read_stream_sync(conn, stream)
    assert [r.version for r in recorded] == [1, 2, 3, 4, 5, 6]
    assert all(r.stream_id == stream for r in recorded)
    assert [r.position for r in recorded] == sorted(r.position for r in recorded)
    assert [r.version for r in es.read_stream_sync(conn, stream, after_version=4)] == [5, 6]
    assert es.read_stream_sync(conn, "session-does-not-exist") == []


def test_metadata_and_type_are_stored_with_each_event(conn: psycopg.Connection) -> None:
    stream, sid, uid = _new_stream()
    metadata = {
        "user_id": str(uid),
        "correlation_id": "corr-1",
        "causation_id": "cause-1",
        "request_id": "req-1",
    }
    with conn.transaction():
        [position] = es.append_sync(conn, [_create(stream, sid, uid)], metadata=metadata)
        [p2] = es.append_sync(
            conn,
            [_at(stream, 1, SessionRenamed(session_id=sid, title="t"))],
        )

    recorded = es.read_stream_sync(conn, stream)
    assert recorded[0].metadata == metadata
    assert recorded[1].metadata == {}
    assert [r.type for r in recorded] == ["SessionStarted", "SessionRenamed"]
    row = conn.execute(
        "SELECT type, data->>'type', metadata->>'correlation_id', txid = pg_current_xact_id() "
        "FROM events WHERE position = %s",
        (position,),
    ).fetchone()
    assert row == ("SessionStarted", "SessionStarted", "corr-1", False)
    # both appends of one transaction carry the same transaction id
    assert recorded[0].txid == recorded[1].txid
    assert recorded[0].recorded_at <= recorded[1].recorded_at
    assert p2 > position


def _horizon_deadline() -> float:
    # pg_snapshot_xmin is cluster-wide: a write transaction in any other database of the
    # server holds the safe horizon back while it runs (seen on a shared dev server: a
    # benchmark's bulk seed in another database held it for ~28 s). Only waits that long
    # when something else is writing; alone, these reads return at once.
    return time.monotonic() + 60


def _read_all_eventually(
    conn: psycopg.Connection, after: Checkpoint, expect: int
) -> list[es.RecordedEvent]:
    deadline = _horizon_deadline()
    while len(found := es.read_all_sync(conn, after)) < expect and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_read_all_returns_committed_events_after_a_checkpoint_in_order(
    make_database: Callable[[], str],
) -> None:
    url = make_database()
    with psycopg.connect(url, autocommit=True) as c:
        stream, sid, uid = _new_stream()
        with c.transaction():
            es.append_sync(c, [_create(stream, sid, uid)])
        for v in range(1, 4):
            with c.transaction():
                es.append_sync(c, [_at(stream, v, SessionArchived(session_id=sid))])

        everything = _read_all_eventually(c, Checkpoint(), expect=4)
        assert [r.version for r in everything] == [1, 2, 3, 4]
        checkpoints = [r.checkpoint for r in everything]
        assert checkpoints == sorted(checkpoints) and len(set(checkpoints)) == 4
        assert es.read_all_sync(c, checkpoints[1]) == everything[2:]
        assert es.read_all_sync(c, checkpoints[-1]) == []
        assert es.read_all_sync(c, Checkpoint(), limit=2) == everything[:2]


def test_read_all_holds_back_events_behind_a_still_running_transaction(
    make_database: Callable[[], str],
) -> None:
    url = make_database()
    with (
        psycopg.connect(url) as slow,
        psycopg.connect(url, autocommit=True) as fast,
        psycopg.connect(url, autocommit=True) as follower,
    ):
        a, asid, uid = _new_stream()
        b, bsid, _ = _new_stream(uid)
        [slow_pos] = es.append_sync(slow, [_create(a, asid, uid)])  # low position, open
        with fast.transaction():
            [fast_pos] = es.append_sync(fast, [_create(b, bsid, uid)])  # commits first
        assert slow_pos < fast_pos

        # the fast event is committed, but reading it now would let the slow one slip behind
        assert es.read_all_sync(follower, Checkpoint()) == []
        slow.commit()
        assert [r.position for r in _read_all_eventually(follower, Checkpoint(), expect=2)] == [
            slow_pos,
            fast_pos,
        ]


def test_the_async_api_appends_and_reads_like_the_sync_one(database_url: str) -> None:
    stream, sid, uid = _new_stream()

    async def scenario() -> tuple[list[int], list[es.RecordedEvent], es.StreamInfo | None]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
            async with c.transaction():
                positions = await es.append(c, [_create(stream, sid, uid)], {"request_id": "r"})
            with pytest.raises(ConcurrencyError):
                async with c.transaction():
                    await es.append(c, [_create(stream, sid, uid)])
            return positions, await es.read_stream(c, stream), await es.stream_info(c, stream)

    positions, recorded, info = asyncio.run(scenario())
    assert [r.position for r in recorded] == positions
    assert recorded[0].metadata == {"request_id": "r"}
    assert info is not None and info.version == 1


# Following the global order under concurrent appends --------------------------------------


class _Load:
    """8 writers appending to their own streams and to a few shared ones, each sleeping a
    random 0-5 ms inside its transaction after the append, so commits come out of position
    order. Records what was committed."""

    def __init__(self, url: str, writers: int, appends: int, shared_streams: int = 3) -> None:
        self.url = url
        self.writers = writers
        self.appends = appends
        self.shared = [f"session-shared-{uuid.uuid4()}" for _ in range(shared_streams)]
        self.committed: list[int] = []
        self.conflicts = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.done = threading.Event()

    def _writer(self, n: int) -> None:
        rng = random.Random(n)
        uid = uuid.uuid4()
        own = [f"session-w{n}-{uuid.uuid4()}" for _ in range(2)]
        versions: dict[str, int] = {}
        try:
            with psycopg.connect(self.url, autocommit=True) as c:
                for _ in range(self.appends):
                    # mostly its own streams; sometimes a shared one, where writers collide
                    pool = self.shared if rng.random() < 0.25 else own
                    stream = rng.choice(pool)
                    count = rng.choice([1, 1, 1, 2, 3])
                    events = [_posted(uuid.uuid4(), uid, "x") for _ in range(count)]
                    while True:
                        expected = versions.get(stream)
                        if expected is None:
                            info = es.stream_info_sync(c, stream)
                            expected = info.version if info else 0
                        item = StreamAppend(
                            stream_id=stream,
                            expected_version=expected,
                            events=events,
                            stream_type="session",
                            owner_id=uid,
                        )
                        try:
                            with c.transaction():
                                positions = es.append_sync(c, [item])
                                time.sleep(rng.uniform(0, 0.005))
                        except ConcurrencyError:
                            versions.pop(stream, None)
                            with self._lock:
                                self.conflicts += 1
                            continue
                        versions[stream] = expected + count
                        with self._lock:
                            self.committed.extend(positions)
                        break
        except BaseException as exc:  # surfaced by run()
            self.errors.append(exc)

    def run(self, follower: Callable[[], None]) -> None:
        threads = [threading.Thread(target=self._writer, args=(n,)) for n in range(self.writers)]
        follow = threading.Thread(target=follower)
        follow.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.done.set()
        follow.join(30)
        assert not follow.is_alive(), "the follower did not finish"
        assert not self.errors, self.errors


def test_a_follower_of_read_all_never_skips_an_event_under_concurrent_appends(
    make_database: Callable[[], str],
) -> None:
    url = make_database()
    load = _Load(url, writers=8, appends=300)
    seen: list[es.RecordedEvent] = []
    follower_errors: list[BaseException] = []

    def follower() -> None:
        try:
            checkpoint = Checkpoint()
            with psycopg.connect(url, autocommit=True) as c:
                drain_until: float | None = None
                while True:
                    batch = es.read_all_sync(c, checkpoint, limit=200)
                    seen.extend(batch)
                    if batch:
                        checkpoint = batch[-1].checkpoint
                        continue
                    if load.done.is_set():
                        if drain_until is None:
                            drain_until = _horizon_deadline()
                        with load._lock:
                            complete = len(seen) >= len(load.committed)
                        if complete or time.monotonic() > drain_until:
                            return
                    time.sleep(0.001)
        except BaseException as exc:
            follower_errors.append(exc)

    load.run(follower)
    assert not follower_errors, follower_errors

    positions = [r.position for r in seen]
    assert len(load.committed) >= 8 * 300
    assert len(positions) == len(set(positions)), "an event was delivered twice"
    assert sorted(positions) == sorted(load.committed), "the follower missed committed events"
    with psycopg.connect(url) as c:
        (total,) = c.execute("SELECT count(*) FROM events").fetchone()  # type: ignore[misc]
    assert total == len(load.committed)  # nothing committed that the writers did not report
    keys = [(r.txid, r.position) for r in seen]
    assert keys == sorted(keys), "not in (txid, position) order"
    by_stream: dict[str, list[int]] = defaultdict(list)
    for r in seen:
        by_stream[r.stream_id].append(r.version)
    for stream, versions in by_stream.items():
        assert versions == list(range(1, len(versions) + 1)), stream
    assert load.conflicts > 0, "the shared streams should have seen write conflicts"


NAIVE_READ = "SELECT position FROM events WHERE position > %s ORDER BY position LIMIT 500"


def test_a_naive_follower_by_position_alone_does_skip_late_committing_events(
    make_database: Callable[[], str],
) -> None:
    """Why read_all exists: `WHERE position > p ORDER BY position`, advancing p to the
    largest position seen, skips an event whose transaction took its position early but
    committed after a higher position had been read.

    Measured on the dev box (2 cores, PostgreSQL 15.20, 8 writers x 300 appends of 1-3
    events, a quarter of them to 3 shared streams, 0-5 ms sleep inside each transaction):
    every first round missed 1,100-1,700 of ~3,800 committed events, in 2-3 s. With the xmin
    bound removed from READ_ALL_AFTER, the test above fails the same way. The loop allows up
    to 3 rounds in case a machine is so slow that commits happen to come out in order.
    """
    url = make_database()
    missed_total = 0
    rounds = 0
    while missed_total == 0 and rounds < 3:
        rounds += 1
        load = _Load(url, writers=8, appends=300)
        seen: set[int] = set()

        def naive_follower(load: _Load = load, seen: set[int] = seen) -> None:
            p = 0
            with psycopg.connect(url, autocommit=True) as c:
                (p,) = c.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()  # type: ignore[misc]
                while not load.done.is_set():
                    rows = c.execute(NAIVE_READ, (p,)).fetchall()
                    for (position,) in rows:
                        seen.add(position)
                    if rows:
                        p = rows[-1][0]
                    else:
                        time.sleep(0.0005)
                # everything has committed: one last sweep from where it stopped
                while rows := c.execute(NAIVE_READ, (p,)).fetchall():
                    seen.update(r[0] for r in rows)
                    p = rows[-1][0]

        load.run(naive_follower)
        missed = set(load.committed) - seen
        missed_total += len(missed)
        assert seen <= set(load.committed)
    assert missed_total > 0, f"the naive follower missed nothing in {rounds} rounds"
