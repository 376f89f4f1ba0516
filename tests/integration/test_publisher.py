"""The analytics stream: every committed event once, in global order, in the documented
envelope; crash-safe; deleted sessions' text taken back."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import redis

from services.core import events as ev
from services.core.eventstore import MARK_STREAM_DELETED, StreamAppend, append_sync
from tests.integration.test_replay import Workload
from workers import publisher

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "events.schema.json"
# What the stream holds: every event in global order, less those of deleted sessions
# (taken back when their SessionDeleted was published).
ORDER = """
SELECT e.txid::text::bigint, e.position FROM events e JOIN event_streams s USING (stream_id)
 WHERE NOT s.deleted OR e.type = 'SessionDeleted'
 ORDER BY e.txid, e.position
"""
BEHIND = """
SELECT EXISTS (SELECT 1 FROM events e, projection_checkpoints c
                WHERE c.name = %s AND (e.txid, e.position) > (c.last_txid, c.last_position))
"""


@pytest.fixture
def env(make_database: Callable[[], str], redis_url: str, redis_prefix: str
        ) -> Iterator[tuple[str, psycopg.Connection, redis.Redis, str]]:
    url = make_database()
    client = redis.Redis.from_url(redis_url)
    key = f"{redis_prefix}{uuid.uuid4().hex[:8]}:events"
    with psycopg.connect(url, autocommit=True) as conn:
        yield url, conn, client, key
    client.delete(key)
    client.close()


def publish_all(url: str, client: redis.Redis, key: str, timeout: float = 120.0,
                **kw: Any) -> int:
    """Publishes everything appended so far (a long transaction elsewhere on the server
    holds the snapshot's xmin back and makes a single pass stop early)."""
    deadline = time.monotonic() + timeout
    total = 0
    with psycopg.connect(url) as conn:
        while True:
            total += publisher.publish_pending(conn, client, key, **kw)
            behind = conn.execute(BEHIND, (publisher.CHECKPOINT_NAME,)).fetchone()
            conn.commit()
            if behind and not behind[0]:
                return total
            assert time.monotonic() < deadline, "publisher did not catch up"
            time.sleep(0.05)


def stream_ids(client: redis.Redis, key: str) -> list[tuple[int, int]]:
    return [tuple(map(int, i.decode().split("-"))) for i, _ in client.xrange(key)]  # type: ignore[misc]


def test_every_event_is_published_once_in_global_order_in_the_documented_envelope(
    env: tuple[str, psycopg.Connection[Any], redis.Redis, str],
) -> None:
    url, conn, client, key = env
    Workload(conn, seed=21).run(400)
    assert publish_all(url, client, key, batch_size=64) > 0

    expected = conn.execute(ORDER).fetchall()
    assert stream_ids(client, key) == expected
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    for entry_id, fields in client.xrange(key):
        document = publisher.decode_envelope(fields)
        validator.validate(document)
        assert entry_id.decode() == f"{document['txid']}-{document['position']}"
    stored = conn.execute("SELECT type, version, stream_id FROM events"
                          " WHERE (txid::text::bigint, position) IN (" + ORDER + ")"
                          " ORDER BY txid, position").fetchall()
    published = [(publisher.decode_envelope(f)["type"], int(f[b"version"]),
                  f[b"stream_id"].decode()) for _, f in client.xrange(key)]
    assert published == stored


def test_the_checked_in_schema_is_the_one_the_code_generates() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == publisher.envelope_schema()


def test_a_publisher_that_dies_before_its_checkpoint_resends_and_the_stream_keeps_each_once(
    env: tuple[str, psycopg.Connection[Any], redis.Redis, str],
) -> None:
    url, conn, client, key = env
    Workload(conn, seed=22).run(200)

    class Crash(Exception):
        pass

    def crash() -> None:
        raise Crash

    with psycopg.connect(url) as pconn:
        assert publisher.publish_batch(pconn, client, key, batch_size=50) == 50
        with pytest.raises(Crash):  # XADDs done, checkpoint not written
            publisher.publish_batch(pconn, client, key, batch_size=50, before_checkpoint=crash)
    checkpoint = conn.execute("SELECT last_position FROM projection_checkpoints"
                              " WHERE name = 'publisher'").fetchone()[0]
    newest = int(client.xrevrange(key, count=1)[0][0].decode().split("-")[1])
    assert newest > checkpoint  # the crashed batch went out...
    publish_all(url, client, key, batch_size=50)  # ...and the restart sends it again
    assert stream_ids(client, key) == conn.execute(ORDER).fetchall()


def test_a_publisher_killed_mid_run_resumes_from_its_checkpoint(
    env: tuple[str, psycopg.Connection[Any], redis.Redis, str],
) -> None:
    """The connection dies mid-transaction (a SIGKILLed process looks the same to the
    database): its lock goes, its checkpoint does not move, the next one takes over."""
    url, conn, client, key = env
    Workload(conn, seed=23).run(150)
    victim = psycopg.connect(url)

    def kill() -> None:
        conn.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))

    with pytest.raises(psycopg.OperationalError):
        publisher.publish_batch(victim, client, key, batch_size=40, before_checkpoint=kill)
    victim.close()
    publish_all(url, client, key)
    assert stream_ids(client, key) == conn.execute(ORDER).fetchall()


def test_concurrent_publishers_publish_each_event_once(
    env: tuple[str, psycopg.Connection[Any], redis.Redis, str],
) -> None:
    url, conn, client, key = env
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(15):
                publish_all(url, client, key, batch_size=30)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    Workload(conn, seed=24).run(300)
    for t in threads:
        t.join()
    publish_all(url, client, key)
    assert not errors
    assert stream_ids(client, key) == conn.execute(ORDER).fetchall()


def test_after_a_session_is_deleted_the_stream_holds_none_of_its_text(
    env: tuple[str, psycopg.Connection[Any], redis.Redis, str],
) -> None:
    url, conn, client, key = env
    user, project, session = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    secret = f"secret-{uuid.uuid4().hex}"
    stream = ev.session_stream(session)
    with conn.transaction():
        append_sync(conn, [
            StreamAppend(stream_id=ev.user_stream(user), expected_version=0, stream_type="user",
                         owner_id=user, events=[ev.UserRegistered(user_id=user)]),
            StreamAppend(stream_id=ev.project_stream(project), expected_version=0,
                         stream_type="project", owner_id=user,
                         events=[ev.ProjectCreated(project_id=project, owner_id=user)]),
            StreamAppend(stream_id=stream, expected_version=0, stream_type="session",
                         owner_id=user, events=[
                             ev.SessionStarted(session_id=session, user_id=user,
                                               project_id=project, title=f"{secret} title"),
                             ev.MessagePosted(session_id=session, message_id=uuid.uuid4(),
                                              user_id=user, role="user", content=secret)]),
        ])
    with conn.transaction():
        append_sync(conn, [StreamAppend(stream_id=stream, expected_version=2, events=[
            ev.SessionRenamed(session_id=session, title=f"{secret} renamed")])])
    publish_all(url, client, key)
    assert any(secret.encode() in v for _, f in client.xrange(key) for v in f.values())

    with conn.transaction():
        append_sync(conn, [StreamAppend(stream_id=stream, expected_version=3,
                                        events=[ev.SessionDeleted(session_id=session)])])
        conn.execute("SELECT purge_stream_content(%s, 4)", (stream,))
        conn.execute(MARK_STREAM_DELETED, (stream,))
    publish_all(url, client, key)

    entries = client.xrange(key)
    assert not any(secret.encode() in v for _, f in entries for v in f.values())
    kept = [f[b"type"].decode() for _, f in entries if f[b"stream_id"] == stream.encode()]
    assert kept == ["SessionDeleted"]


def test_events_tail_reads_as_a_consumer_group_and_acknowledges(
    env: tuple[str, psycopg.Connection[Any], redis.Redis, str],
) -> None:
    url, conn, client, key = env
    Workload(conn, seed=25).run(60)
    publish_all(url, client, key)
    total = client.xlen(key)
    lines: list[str] = []

    printed = publisher.tail(client, key, "-", group="analytics", limit=10, echo=lines.append)
    rest = publisher.tail(client, key, "-", group="analytics", echo=lines.append)

    assert (printed, printed + rest) == (10, total)
    positions = [int(line.split()[0]) for line in lines]
    assert positions == [p for _, p in conn.execute(ORDER)]
    assert client.xpending(key, "analytics")["pending"] == 0
    assert publisher.tail(client, key, "-", group="analytics", echo=lines.append) == 0


def test_events_tail_starts_at_a_position(
    env: tuple[str, psycopg.Connection[Any], redis.Redis, str],
) -> None:
    url, conn, client, key = env
    Workload(conn, seed=26).run(40)
    publish_all(url, client, key)
    order = [p for _, p in conn.execute(ORDER)]
    start = publisher.start_id(conn, order[5])
    out = io.StringIO()
    publisher.tail(client, key, start, echo=lambda line: out.write(line + "\n"))
    assert [int(line.split()[0]) for line in out.getvalue().splitlines()] == order[5:]
    grouped: list[str] = []
    publisher.tail(client, key, start, group="from-six", echo=grouped.append)
    assert [int(line.split()[0]) for line in grouped] == order[5:]
