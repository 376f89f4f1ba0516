"""The reply dispatcher: a user message posted through the API becomes exactly one
assistant job, and its checkpoint never moves past a message whose job was not enqueued.
Real PostgreSQL, a real Dramatiq Redis broker (and one on a dead port)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import redis
from psycopg import sql

from services.core.migrate import MIGRATIONS_DIR, migrate
from services.core.settings import Settings
from tests.integration import seed
from workers.broker import ASSISTANT_QUEUE, make_broker
from workers.dispatcher import DISPATCHER, dispatcher_follower, recover_lost_jobs
from workers.follower import catch_up, follow_batch
from workers.runtime import WorkerRuntime

CHECKPOINT = "SELECT last_position FROM projection_checkpoints WHERE name = %s"


@pytest.fixture
def conn(make_database: Callable[[], str]) -> Iterator[psycopg.Connection[Any]]:
    # Its own database: the dispatcher must see only this test's events.
    with psycopg.connect(make_database(), autocommit=True) as c:
        yield c


@pytest.fixture
def own(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, redis_prefix=f"{settings.redis_prefix}dispatch-{uuid.uuid4().hex[:8]}:")


def queued(settings: Settings) -> list[dict[str, Any]]:
    with redis.Redis.from_url(settings.redis_url) as client:
        key = f"{settings.redis_prefix}dramatiq:{ASSISTANT_QUEUE}.msgs"
        return [json.loads(m) for m in client.hvals(key)]  # type: ignore[union-attr]


def checkpoint(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(CHECKPOINT, (DISPATCHER,)).fetchone()
    return int(row[0]) if row else 0


def test_only_api_user_messages_are_asked_for_each_once(
    conn: psycopg.Connection[Any], own: Settings
) -> None:
    user = seed.register(conn)
    asked, (question,) = seed.start_session(conn, user, ["answer me"],
                                            metadata={"request_id": "req-1"})
    # history: seeded below HTTP or imported, no request id: never answered again
    seed.start_session(conn, user, ["old line"], metadata={"source": "legacy-import"})
    broker = make_broker(own)
    try:
        assert catch_up(conn, dispatcher_follower(broker)) > 0
        assert catch_up(conn, dispatcher_follower(broker)) == 0  # nothing new: nothing sent
    finally:
        broker.close()
    jobs = queued(own)
    assert [(j["actor_name"], j["args"]) for j in jobs] == [
        ("assistant_reply", [str(asked), str(question.message_id)])]


def test_the_checkpoint_stays_before_a_message_whose_job_could_not_be_enqueued(
    conn: psycopg.Connection[Any], own: Settings
) -> None:
    user = seed.register(conn)
    session, (question,) = seed.start_session(conn, user, ["hello?"],
                                              metadata={"request_id": "req-2"})
    dead = make_broker(msgspec.structs.replace(own, redis_url="redis://127.0.0.1:1/0"))
    try:
        with pytest.raises(redis.ConnectionError):
            follow_batch(conn, dispatcher_follower(dead))
    finally:
        dead.close()
    assert checkpoint(conn) == 0
    broker = make_broker(own)  # Redis is back: the same message is asked for, once
    try:
        catch_up(conn, dispatcher_follower(broker))
    finally:
        broker.close()
    assert [j["args"] for j in queued(own)] == [[str(session), str(question.message_id)]]
    assert checkpoint(conn) > 0


def test_deployed_on_a_database_with_history_it_starts_at_the_end(
    server_database_url: str, tmp_path: Path
) -> None:
    """Messages from before the dispatcher existed were asked for by the old enqueue: the
    migration that brings it starts its checkpoint after them."""
    before = tmp_path / "migrations"
    before.mkdir()
    for sql_file in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if sql_file.name < "0011_":
            shutil.copy(sql_file, before)
    name = f"chat_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server_database_url, dbname=name)
    try:
        migrate(url, before)
        with psycopg.connect(url, autocommit=True) as c:
            user = seed.register(c)
            seed.start_session(c, user, ["asked long ago"], metadata={"request_id": "old"})
            last = c.execute("SELECT max(position) FROM events").fetchone()
        migrate(url)
        with psycopg.connect(url, autocommit=True) as c:
            assert last is not None and checkpoint(c) == last[0]
    finally:
        with psycopg.connect(server_database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))


def test_jobs_a_restarted_redis_lost_are_asked_for_again_once(
    make_database: Callable[[], str], own: Settings
) -> None:
    """A Redis without persistence restarting loses the queued jobs: the sweep notices the
    missing marker and the dispatcher asks again for what is still unanswered, and only
    that."""
    runtime = WorkerRuntime.open(msgspec.structs.replace(own, database_url=make_database()))
    try:
        with runtime.pool.connection() as c:
            c.autocommit = True
            user = seed.register(c)
            answered, (first,) = seed.start_session(c, user, ["answered"],
                                                    metadata={"request_id": "a"})
            c.execute(  # its reply, as the assistant appends it
                "UPDATE event_streams SET version = 2 WHERE stream_id = %s",
                (f"session-{answered}",))
            c.execute(
                "INSERT INTO events (stream_id, version, type, data, metadata)"
                " VALUES (%s, 3, 'MessagePosted', %s, '{}')",
                (f"session-{answered}", json.dumps({
                    "type": "MessagePosted", "session_id": str(answered),
                    "message_id": str(uuid.uuid4()), "user_id": str(user),
                    "role": "assistant", "content": "done", "reply_to": str(first.message_id)})))
            lost, (second,) = seed.start_session(c, user, ["lost"], metadata={"request_id": "b"})
            assert recover_lost_jobs(runtime) is None  # first sweep: sets the marker
            catch_up(c, dispatcher_follower(runtime.broker))
            assert len(queued(own)) == 2
            with redis.Redis.from_url(own.redis_url) as client:  # the restart
                for key in client.scan_iter(match=f"{own.redis_prefix}*"):
                    client.delete(key)
            assert recover_lost_jobs(runtime) is not None
            assert recover_lost_jobs(runtime) is None  # once
            catch_up(c, dispatcher_follower(runtime.broker))
            assert [j["args"] for j in queued(own)] == [[str(lost), str(second.message_id)]]
    finally:
        runtime.close()
