"""GET /api/v1/sessions/{id}/stream over real HTTP (uvicorn on loopback) with a real SSE
client: the live reply relayed from Redis, resumable, shared, capped, with heartbeats."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from httpx_sse import ServerSentEvent, connect_sse

from services.core import events as ev
from services.core.eventstore import StreamAppend, append_sync, read_stream_sync
from services.core.livewire import latest_key, live_key
from services.core.settings import Settings
from services.http.sse import relay
from services.http.stream_leases import streams_key
from services.query.app import create_app
from tests.integration import seed
from tests.integration.conftest import wait_until
from workers.assistant import answer
from workers.providers.offline import OfflineProvider
from workers.runtime import WorkerRuntime

LIVE_EVENTS = {"delta", "message", "done", "error"}


@pytest.fixture(scope="module")
def stream_settings(settings: Settings, make_database: Callable[[], str]) -> Settings:
    # Its own database: these tests write read-model rows by hand, which the projector of
    # other test modules must never meet in the shared one.
    return msgspec.structs.replace(settings, database_url=make_database(), max_streams_per_user=3)


@pytest.fixture(scope="module")
def runtime(stream_settings: Settings) -> Iterator[WorkerRuntime]:
    rt = WorkerRuntime.open(stream_settings)
    yield rt
    rt.close()


@pytest.fixture
def serve_query(serve_app: Callable[[Any], str], stream_settings: Settings) -> Callable[..., str]:
    """serve_query(**setting overrides) -> base URL of a real query service."""

    def serve(**overrides: Any) -> str:
        return serve_app(create_app(msgspec.structs.replace(stream_settings, **overrides)))

    return serve


@pytest.fixture
def base_url(serve_query: Callable[..., str]) -> str:
    return serve_query()


class Chat:
    def __init__(self, user_id: uuid.UUID, session_id: uuid.UUID, message_id: uuid.UUID) -> None:
        self.user_id, self.session_id, self.message_id = user_id, session_id, message_id


def new_user(db_url: str) -> uuid.UUID:
    user = uuid.uuid4()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (user_id, display_name) VALUES (%s, 'Writer')", (user,))
    return user


def new_chat(runtime: WorkerRuntime, user: uuid.UUID | None = None) -> Chat:
    """A session in the event store (what answer() reads) and in the read model (what the
    query service checks ownership against), with one user message."""
    user = user or new_user(runtime.settings.database_url)
    with runtime.pool.connection() as conn:
        sid, (question,) = seed.start_session(conn, user, ["I want to write a horror story"])
        conn.execute(
            "INSERT INTO sessions (session_id, user_id, title) VALUES (%s, %s, 'Horror')",
            (sid, user),
        )
    return Chat(user, sid, question.message_id)


def reply_in_background(runtime: WorkerRuntime, chat: Chat, delay: float) -> threading.Thread:
    thread = threading.Thread(
        target=answer,
        args=(runtime, str(chat.session_id), str(chat.message_id)),
        kwargs={"provider": OfflineProvider(delay_seconds=delay)},
        daemon=True,
    )
    thread.start()
    return thread


def stored_reply(runtime: WorkerRuntime, chat: Chat) -> ev.MessagePosted | None:
    with runtime.pool.connection() as conn:
        events = read_stream_sync(conn, ev.session_stream(chat.session_id))
    return next(
        (
            r.event
            for r in events
            if isinstance(r.event, ev.MessagePosted) and r.event.role == "assistant"
        ),
        None,
    )


def _url(chat: Chat) -> str:
    return f"/api/v1/sessions/{chat.session_id}/stream"


def _client(base: str, user: uuid.UUID) -> httpx.Client:
    return httpx.Client(
        base_url=base, headers={"X-User-ID": str(user)}, timeout=httpx.Timeout(10.0)
    )


def read_reply(
    base: str,
    chat: Chat,
    last_event_id: str | None = None,
    on_open: Callable[[], Any] | None = None,
    params: dict[str, str] | None = None,
) -> list[ServerSentEvent]:
    """The live events of one stream, up to done/error (heartbeat artefacts dropped)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    out: list[ServerSentEvent] = []
    with (
        _client(base, chat.user_id) as c,
        connect_sse(c, "GET", _url(chat), headers=headers, params=params) as es,
    ):
        assert es.response.status_code == 200
        assert es.response.headers["content-type"].startswith("text/event-stream")
        if on_open:
            on_open()
        for sse in es.iter_sse():
            if sse.event in LIVE_EVENTS:
                out.append(sse)
    return out


def _check_full_reply(events: list[ServerSentEvent], stored: ev.MessagePosted) -> None:
    kinds = [e.event for e in events]
    assert kinds[-2:] == ["message", "done"] and set(kinds[:-2]) == {"delta"}
    assert len(kinds) > 5
    ids = [tuple(int(p) for p in e.id.split("-")) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert "".join(e.json()["text"] for e in events if e.event == "delta") == stored.content
    message = events[-2].json()
    assert message["message_id"] == str(stored.message_id)
    assert message["content"] == stored.content
    assert message["metadata"]["finish_reason"] == "stop"


def test_a_client_sees_the_whole_reply_as_it_is_written(
    base_url: str, runtime: WorkerRuntime
) -> None:
    chat = new_chat(runtime)
    threads: list[threading.Thread] = []
    events = read_reply(
        base_url, chat, on_open=lambda: threads.append(reply_in_background(runtime, chat, 0.01))
    )
    threads[0].join(timeout=10)
    stored = stored_reply(runtime, chat)
    assert stored is not None
    _check_full_reply(events, stored)


def test_opening_after_the_reply_finished_still_gets_it_from_the_start(
    base_url: str, runtime: WorkerRuntime
) -> None:
    chat = new_chat(runtime)
    reply_in_background(runtime, chat, 0).join(timeout=10)
    stored = stored_reply(runtime, chat)
    assert stored is not None
    _check_full_reply(read_reply(base_url, chat), stored)


def test_resuming_with_last_event_id_yields_exactly_the_rest(
    base_url: str, runtime: WorkerRuntime
) -> None:
    chat = new_chat(runtime)
    reply_in_background(runtime, chat, 0).join(timeout=10)
    everything = read_reply(base_url, chat)
    for cut in (0, 3, len(everything) - 2):
        rest = read_reply(base_url, chat, last_event_id=everything[cut].id)
        assert [(e.id, e.event, e.data) for e in rest] == [
            (e.id, e.event, e.data) for e in everything[cut + 1 :]
        ]


def test_a_client_that_disconnects_leaves_the_reply_to_finish_and_be_stored(
    base_url: str, runtime: WorkerRuntime, stream_settings: Settings
) -> None:
    chat = new_chat(runtime)
    thread = reply_in_background(runtime, chat, 0.03)
    with _client(base_url, chat.user_id) as c, connect_sse(c, "GET", _url(chat)) as es:
        seen = 0
        for sse in es.iter_sse():
            seen += sse.event == "delta"
            if seen == 2:
                break  # hang up mid-reply
    thread.join(timeout=10)
    stored = stored_reply(runtime, chat)
    assert stored is not None and stored.metadata["finish_reason"] == "stop"
    # The stream's slot under the per-user cap is given back.
    wait_until(lambda: runtime.redis.zcard(streams_key(stream_settings, chat.user_id)) == 0)


def test_two_clients_on_one_session_both_receive_the_stream(
    base_url: str, runtime: WorkerRuntime
) -> None:
    chat = new_chat(runtime)
    results: list[list[ServerSentEvent]] = [[], []]
    opened = threading.Barrier(3, timeout=10)

    def follow(i: int) -> None:
        results[i] = read_reply(base_url, chat, on_open=opened.wait)

    followers = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(2)]
    for f in followers:
        f.start()
    opened.wait()
    reply_in_background(runtime, chat, 0.01).join(timeout=10)
    for f in followers:
        f.join(timeout=10)
    stored = stored_reply(runtime, chat)
    assert stored is not None
    _check_full_reply(results[0], stored)
    assert [(e.id, e.data) for e in results[0]] == [(e.id, e.data) for e in results[1]]


def test_an_idle_stream_gets_heartbeat_comments(
    serve_query: Callable[..., str], runtime: WorkerRuntime
) -> None:
    base = serve_query(sse_heartbeat_seconds=0.2)
    chat = new_chat(runtime)
    started = time.monotonic()
    comments = 0
    with _client(base, chat.user_id) as c, c.stream("GET", _url(chat)) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith(":"):
                comments += 1
                if comments == 2:
                    break
    assert time.monotonic() - started > 0.3  # paced by the interval, not sent in a burst


def test_another_users_session_is_404_like_a_missing_one(
    base_url: str, runtime: WorkerRuntime
) -> None:
    chat = new_chat(runtime)
    stranger = new_user(runtime.settings.database_url)
    with _client(base_url, stranger) as c:
        theirs = c.get(_url(chat))
        missing = c.get(f"/api/v1/sessions/{uuid.uuid4()}/stream")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()


def test_the_caller_must_be_named_by_a_uuid(base_url: str, runtime: WorkerRuntime) -> None:
    chat = new_chat(runtime)
    assert httpx.get(base_url + _url(chat)).status_code == 401
    assert httpx.get(base_url + _url(chat), headers={"X-User-ID": "bob"}).status_code == 400
    bad_reply = httpx.get(
        base_url + _url(chat), params={"reply_to": "x"}, headers={"X-User-ID": str(chat.user_id)}
    )
    assert bad_reply.status_code == 400
    unknown = {"X-User-ID": str(uuid.uuid4())}
    assert httpx.get(base_url + _url(chat), headers=unknown).status_code == 401


def test_streams_past_the_per_user_cap_are_refused_with_429(
    base_url: str, runtime: WorkerRuntime, stream_settings: Settings
) -> None:
    chat = new_chat(runtime)
    cap = stream_settings.max_streams_per_user
    with ExitStack() as streams, _client(base_url, chat.user_id) as c:
        for _ in range(cap):
            opened = streams.enter_context(c.stream("GET", _url(chat)))
            assert opened.status_code == 200
        refused = c.get(_url(chat))
        assert refused.status_code == 429
        assert refused.json()["error"] == "too_many_streams"
        # Another user is not affected by this one's streams.
        other = new_chat(runtime)
        with _client(base_url, other.user_id) as c2, c2.stream("GET", _url(other)) as r:
            assert r.status_code == 200
    # Hanging up gives the slots back.
    wait_until(lambda: runtime.redis.zcard(streams_key(stream_settings, chat.user_id)) == 0)
    with _client(base_url, chat.user_id) as c3, c3.stream("GET", _url(chat)) as again:
        assert again.status_code == 200


def test_the_live_stream_key_is_bounded_and_expires(
    base_url: str, runtime: WorkerRuntime, stream_settings: Settings
) -> None:
    chat = new_chat(runtime)
    reply_in_background(runtime, chat, 0).join(timeout=10)
    client = redis.Redis.from_url(stream_settings.redis_url)
    key = live_key(stream_settings, chat.session_id)
    ttl = client.ttl(key)
    assert 0 < ttl <= stream_settings.live_stream_ttl_seconds  # type: ignore[operator]
    latest = latest_key(stream_settings, chat.session_id)
    assert 0 < client.ttl(latest) <= stream_settings.live_stream_ttl_seconds  # type: ignore[operator]
    client.close()


def second_question(runtime: WorkerRuntime, chat: Chat) -> Chat:
    """A further user message in the session (after the first reply: version 3)."""
    question = ev.MessagePosted(
        session_id=chat.session_id,
        message_id=uuid.uuid4(),
        user_id=chat.user_id,
        role="user",
        content="What happens next?",
        turn_id=uuid.uuid4(),
    )
    with runtime.pool.connection() as conn:
        append_sync(
            conn,
            [
                StreamAppend(
                    stream_id=ev.session_stream(chat.session_id),
                    expected_version=3,
                    events=[question],
                )
            ],
        )
    return Chat(chat.user_id, chat.session_id, question.message_id)


def test_reply_to_follows_the_new_reply_not_the_previous_one(
    base_url: str, runtime: WorkerRuntime
) -> None:
    chat = new_chat(runtime)
    reply_in_background(runtime, chat, 0).join(timeout=10)
    second = second_question(runtime, chat)
    threads: list[threading.Thread] = []
    events = read_reply(
        base_url,
        second,
        params={"reply_to": str(second.message_id)},
        on_open=lambda: threads.append(reply_in_background(runtime, second, 0.01)),
    )
    threads[0].join(timeout=10)
    assert events[-1].event == "done"
    assert events[-1].json()["reply_to"] == str(second.message_id)
    assert events[-2].json()["reply_to"] == str(second.message_id)


async def _relay(settings: Settings, chat: Chat, **kwargs: Any) -> list[tuple[str, Any]]:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        return [
            (e.event or "", e.data)
            async for e in relay(client, settings, chat.session_id, **kwargs)
            if e.event
        ]
    finally:
        await client.aclose()


def test_following_a_given_reply_skips_the_earlier_ones(
    runtime: WorkerRuntime, stream_settings: Settings
) -> None:
    """What POST /chat streams: the reply to its own message, even while the latest reply in
    the live stream is still the previous one."""
    chat = new_chat(runtime)
    reply_in_background(runtime, chat, 0).join(timeout=10)
    second = second_question(runtime, chat)
    threading.Timer(0.2, lambda: reply_in_background(runtime, second, 0)).start()

    events = asyncio.run(_relay(stream_settings, chat, reply_to=second.message_id, start_timeout=5))
    assert [k for k, _ in events][-2:] == ["message", "done"]
    assert json.loads(events[-1][1])["reply_to"] == str(second.message_id)


def test_a_reply_that_never_starts_ends_the_stream_with_an_error(
    runtime: WorkerRuntime, stream_settings: Settings
) -> None:
    chat = new_chat(runtime)
    events = asyncio.run(_relay(stream_settings, chat, reply_to=chat.message_id, start_timeout=0.3))
    assert [(k, json.loads(d)["error"]) for k, d in events] == [("error", "reply_not_started")]
