"""Chat history: our write and read paths against `langchain-postgres`'s
PostgresChatMessageHistory, in one throwaway database on the same server.

(a) Append N messages over S sessions (full: 100,000 over 1,000), one message per
    transaction, from WRITERS writer processes (multiprocessing, spawn), the sessions dealt
    round-robin to the writers and posted to in turn.
    - ours: the command path: services.command.chat.post_chat, the function the
      POST /api/v1/chat handler calls (after authenticate, as its dependency does), with the
      wake-up it sends after each commit (a Redis PUBLISH); the first message of each session starts
      it (and its project). A projector process runs workers.projector.catch_up in a loop
      (what the worker's actor and sweep call) and the clock stops when the read model has
      caught up with the last message.
    - theirs: PostgresChatMessageHistory(table, session_id, sync_connection=conn)
      .add_message(HumanMessage(text)) (executemany + commit).
(b) Read the newest 50 messages of a long session (full: 10,000 messages) and of a
    100-message one, repeated.
    - ours: as role chat_query with app.user_id set in the transaction (as the query service
      does): the session's last_seq, then get_session_messages_keyset(session, 50, NULL,
      last_seq + 1), rows decoded into the query service's Message structs.
    - theirs: get_messages()[-50:], which is how its API reads.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
import uuid
from typing import Any

import psycopg
from langchain_core.messages import HumanMessage
from langchain_postgres import PostgresChatMessageHistory
from psycopg.rows import class_row
from redis import asyncio as aioredis

from bench.common import (
    REDIS_URL,
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
from services.command.auth import Caller, authenticate
from services.command.chat import PostChat, post_chat
from services.core.db import QUERY_ROLE, SET_ROLE, SET_USER, open_async_pool
from services.core.events import MessagePosted, UserRegistered, session_stream, user_stream
from services.core.eventstore import StreamAppend, append_sync
from services.core.logging import configure_logging
from services.core.settings import Settings
from services.core.wakeup import Wake
from services.http.context import RequestIds
from services.query.messages import PAGE_BY_KEYSET, Message
from workers.projector import catch_up

NAME = "compare_langchain"
TABLE = "langchain_chat_history"
WRITERS = 8
USERS = 100
PAGE = 50
TEXT = "I want to write a horror story set in a lighthouse, with a narrator who lies. " * 3
CAUGHT_UP = """
SELECT NOT EXISTS (
    SELECT 1 FROM events e, projection_checkpoints c
     WHERE c.name = 'read_model' AND (e.txid, e.position) > (c.last_txid, c.last_position))
"""
LAST_SEQ = "SELECT last_seq FROM sessions WHERE session_id = %s"


def _text(n: int) -> str:
    return f"{n}: {TEXT}"[:200]


# (a) the write path ----------------------------------------------------------------------


async def _post_ours(
    url: str, plan: list[tuple[int, uuid.UUID]], per_session: int, start_at: float
) -> dict[str, Any]:
    settings = Settings.from_env({}, database_url=url, redis_url=REDIS_URL, log_json=False,
                                 redis_prefix=f"bench-langchain-{uuid.uuid4().hex[:8]}:")
    configure_logging("WARNING")  # the handler logs every message at INFO
    redis = aioredis.Redis.from_url(REDIS_URL)
    wake = Wake(redis, settings)
    pool = await open_async_pool(url, min_size=1, max_size=1)
    sessions: dict[int, uuid.UUID] = {}
    latencies: list[float] = []
    await asyncio.sleep(max(0.0, start_at - time.time()))
    try:
        for n in range(per_session):
            for index, user_id in plan:
                began = time.perf_counter()
                caller = Caller(
                    await authenticate(pool, str(user_id)),
                    RequestIds(uuid.uuid4().hex, uuid.uuid4().hex),
                )
                accepted = await post_chat(
                    pool,
                    wake,
                    settings,
                    caller,
                    PostChat(text=_text(n), session_id=sessions.get(index)),
                )
                latencies.append(time.perf_counter() - began)
                sessions[index] = accepted.session_id
    finally:
        await pool.close()
        await redis.aclose()
    return {"latencies": latencies, "ended": time.time()}


def _write_ours(
    url: str, plan: list[tuple[int, uuid.UUID]], per_session: int, start_at: float
) -> dict[str, Any]:
    return asyncio.run(_post_ours(url, plan, per_session, start_at))


def _write_theirs(
    url: str, plan: list[tuple[int, uuid.UUID]], per_session: int, start_at: float
) -> dict[str, Any]:
    latencies: list[float] = []
    with psycopg.connect(url) as conn:
        histories = {
            i: PostgresChatMessageHistory(
                TABLE, str(uuid.uuid5(user, str(i))), sync_connection=conn
            )
            for i, user in plan
        }
        time.sleep(max(0.0, start_at - time.time()))
        for n in range(per_session):
            for index, _user in plan:
                began = time.perf_counter()
                histories[index].add_message(HumanMessage(_text(n)))
                latencies.append(time.perf_counter() - began)
    return {"latencies": latencies, "ended": time.time()}


def _project(url: str, stop: Any, done: Any) -> None:
    """The projector's loop: catch up, and once the writers stopped, until nothing is left.

    "Nothing left" is asked of the events table, not inferred from an empty batch: the
    projector reads only below the cluster's oldest running transaction, so a transaction
    in any database of the server (another benchmark, a CREATE INDEX) holds it back.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        done.put("ready")
        while True:
            stopping = stop.is_set()
            if catch_up(conn) == 0:
                if stopping and conn.execute(CAUGHT_UP).fetchone()[0]:  # type: ignore[index]
                    break
                time.sleep(0.005)
    done.put(time.time())


def _project_all(url: str, timeout: float = 120.0) -> None:
    """Projects until the read model has every committed event (see _project)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while not (catch_up(conn) == 0 and conn.execute(CAUGHT_UP).fetchone()[0]):  # type: ignore[index]
            if time.monotonic() > deadline:
                raise TimeoutError("the read model did not catch up")
            time.sleep(0.01)


def _warm(_: int) -> None:
    time.sleep(0.5)  # long enough that every pool process takes one and imports this module


def _register_users(url: str, count: int) -> list[uuid.UUID]:
    users = [uuid.uuid4() for _ in range(count)]
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        append_sync(
            conn,
            [
                StreamAppend(
                    stream_id=user_stream(u),
                    expected_version=0,
                    events=[UserRegistered(user_id=u)],
                    stream_type="user",
                    owner_id=u,
                )
                for u in users
            ],
        )
    _project_all(url)
    return users


def _append_phase(
    ctx: Any,
    pool: Any,
    url: str,
    side: str,
    users: list[uuid.UUID],
    sessions: int,
    per_session: int,
) -> dict[str, Any]:
    plans: list[list[tuple[int, uuid.UUID]]] = [[] for _ in range(WRITERS)]
    for i in range(sessions):
        plans[i % WRITERS].append((i, users[i % len(users)]))
    projector = None
    if side == "ours":
        stop, done = ctx.Event(), ctx.Queue()
        projector = ctx.Process(target=_project, args=(url, stop, done))
        projector.start()
        done.get(timeout=60)  # imported and connected
    start_at = time.time() + 1.0
    write = _write_ours if side == "ours" else _write_theirs
    results = pool.starmap(write, [(url, plan, per_session, start_at) for plan in plans])
    writes_done = max(r["ended"] for r in results)
    visible = writes_done
    if projector is not None:
        stop.set()
        visible = done.get(timeout=600)
        projector.join()
    latencies = [x * 1000 for r in results for x in r["latencies"]]
    total = sessions * per_session
    return {
        "messages": total,
        "writes_s": writes_done - start_at,
        "until_visible_s": visible - start_at,
        "messages_per_s": total / (visible - start_at),
        "append_ms": summary(latencies),
    }


# (b) the read path -----------------------------------------------------------------------


def _seed_long_session(url: str, user: uuid.UUID, project: uuid.UUID, messages: int) -> uuid.UUID:
    """A session of `messages` messages through the event store (100 per append)."""
    from services.core.events import ProjectCreated, SessionStarted, project_stream

    session = uuid.uuid4()
    stream = session_stream(session)
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            append_sync(
                conn,
                [
                    StreamAppend(
                        stream_id=project_stream(project),
                        expected_version=0,
                        events=[ProjectCreated(project_id=project, owner_id=user)],
                        stream_type="project",
                        owner_id=user,
                    ),
                    StreamAppend(
                        stream_id=stream,
                        expected_version=0,
                        events=[
                            SessionStarted(session_id=session, user_id=user, project_id=project)
                        ],
                        stream_type="session",
                        owner_id=user,
                    ),
                ],
            )
        for start in range(0, messages, 100):
            events = [
                MessagePosted(
                    session_id=session,
                    message_id=uuid.uuid4(),
                    user_id=user,
                    role="user",
                    content=_text(n),
                )
                for n in range(start, min(messages, start + 100))
            ]
            with conn.transaction():
                append_sync(
                    conn,
                    [StreamAppend(stream_id=stream, expected_version=start + 1, events=events)],
                )
    _project_all(url)
    return session


def _read_ours(url: str, user: uuid.UUID, session: uuid.UUID, repeats: int) -> list[float]:
    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SET_ROLE.format(QUERY_ROLE))
        for _ in range(repeats):
            began = time.perf_counter()
            with conn.transaction():
                conn.execute(SET_USER, (str(user),))
                last_seq = conn.execute(LAST_SEQ, (session,)).fetchone()[0]  # type: ignore[index]
                with conn.cursor(row_factory=class_row(Message)) as cur:
                    cur.execute(PAGE_BY_KEYSET, (session, PAGE, None, last_seq + 1))
                    page = cur.fetchall()
            times.append((time.perf_counter() - began) * 1000)
            assert len(page) == min(PAGE, last_seq), "ours read a short page"
    return times


def _read_theirs(url: str, session: str, repeats: int) -> list[float]:
    times = []
    with psycopg.connect(url) as conn:
        history = PostgresChatMessageHistory(TABLE, session, sync_connection=conn)
        for _ in range(repeats):
            began = time.perf_counter()
            page = history.get_messages()[-PAGE:]
            times.append((time.perf_counter() - began) * 1000)
            assert len(page) == min(PAGE, len(history.get_messages())), "theirs: a short page"
    return times


def _read_phase(
    url: str,
    users: list[uuid.UUID],
    ours_short: tuple[uuid.UUID, uuid.UUID],
    long_messages: int,
    quick: bool,
) -> dict[str, Any]:
    user = users[0]
    long_ours = _seed_long_session(url, user, uuid.uuid4(), long_messages)
    long_theirs = str(uuid.uuid4())
    with psycopg.connect(url) as conn:
        PostgresChatMessageHistory(TABLE, long_theirs, sync_connection=conn).add_messages(
            [HumanMessage(_text(n)) for n in range(long_messages)]
        )
    short_theirs = str(uuid.uuid5(users[0], "0"))  # session 0 of the append phase
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    fast, slow = (20, 5) if quick else (300, 30)
    cases = {
        "long": (_read_ours(url, user, long_ours, fast), _read_theirs(url, long_theirs, slow)),
        "short": (
            _read_ours(url, ours_short[0], ours_short[1], fast),
            _read_theirs(url, short_theirs, fast),
        ),
    }
    return {
        name: {
            "ours_ms": summary(o),
            "theirs_ms": summary(t),
            "ratio": ratio(summary(t)["median"], summary(o)["median"]),
        }
        for name, (o, t) in cases.items()
    }


def _first_session(url: str, user: uuid.UUID) -> uuid.UUID:
    """Ours: the session the append phase started first for `user` (its 100 messages)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT session_id FROM sessions WHERE user_id = %s ORDER BY created_at LIMIT 1",
            (user,),
        ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def run(quick: bool = False) -> dict[str, Any]:
    sessions, per_session, long_messages = (16, 10, 500) if quick else (1_000, 100, 10_000)
    ctx = multiprocessing.get_context("spawn")
    with throwaway_database("lc") as url, ctx.Pool(WRITERS) as pool:
        with psycopg.connect(url) as conn:
            PostgresChatMessageHistory.create_tables(conn, TABLE)
        server = server_settings(url)
        print(
            f"{NAME}: {sessions * per_session:,} messages over {sessions:,} sessions, "
            f"{WRITERS} writer processes; long session {long_messages:,} messages; "
            f"synchronous_commit={server['synchronous_commit']}"
        )
        pool.map(_warm, range(WRITERS))
        users = _register_users(url, min(USERS, sessions))
        appends = {
            side: _append_phase(ctx, pool, url, side, users, sessions, per_session)
            for side in ("langchain", "ours")
        }
        with psycopg.connect(url) as conn:
            counts = {
                "ours": conn.execute("SELECT count(*) FROM chat_messages").fetchone()[0],  # type: ignore[index]
                "langchain": conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0],
            }  # type: ignore[index]
        print(f"  rows written: {counts}")
        reads = _read_phase(
            url, users, (users[0], _first_session(url, users[0])), long_messages, quick
        )

    a_ratio = ratio(appends["ours"]["messages_per_s"], appends["langchain"]["messages_per_s"])
    print_table(
        "(a) append: one message per transaction",
        ["side", "messages", "writes s", "until visible s", "messages/s", "p50 ms", "p99 ms"],
        [
            [
                side,
                r["messages"],
                r["writes_s"],
                r["until_visible_s"],
                r["messages_per_s"],
                r["append_ms"]["median"],
                r["append_ms"]["p99"],
            ]
            for side, r in appends.items()
        ],
    )
    print(f"  rows written: {counts}")
    print_table(
        f"(b) newest {PAGE} messages of a session (ms per read)",
        ["session", "ours p50", "ours p99", "langchain p50", "langchain p99", "ours faster by"],
        [
            [
                f"{name} ({long_messages if name == 'long' else per_session} msgs)",
                r["ours_ms"]["median"],
                r["ours_ms"]["p99"],
                r["theirs_ms"]["median"],
                r["theirs_ms"]["p99"],
                r["ratio"],
            ]
            for name, r in reads.items()
        ],
    )
    targets = [
        target("(a) ours/langchain messages/s (ours including projection)", a_ratio, 1, "x"),
        target(
            f"(b) langchain/ours read time, {long_messages:,}-message session",
            reads["long"]["ratio"],
            10,
            "x",
        ),
    ]
    print_targets(targets)
    return finish(
        NAME,
        quick,
        {
            "method": f"{WRITERS} writer processes (multiprocessing spawn), one connection each, "
            "one message per transaction; ours through services.command.chat.post_chat "
            "with a projector process running workers.projector.catch_up",
            "server": server,
            "append": appends,
            "rows": counts,
            "read": reads,
            "targets": targets,
        },
    )


def main(argv: list[str] | None = None) -> int:
    return cli(NAME, run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
