"""The assistant answering a user message: stored reply with metadata, idempotence, failure
and stop, against the real event store and Redis (answer() called directly)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import msgspec
import pytest

from services.command.app import create_app as create_command_app
from services.core import events as ev
from services.core.eventstore import StreamAppend, append_sync, read_stream_sync, stream_info_sync
from services.core.livewire import live_key, stop_key
from services.core.settings import Settings
from tests.integration import seed
from tests.integration.conftest import client, wait_until
from workers.assistant import answer
from workers.providers import ChatMessage, Chunk, ProviderError
from workers.providers.offline import OfflineProvider, compose_reply
from workers.reply_plan import SYSTEM_PROMPT
from workers.runtime import WorkerRuntime


class Session:
    def __init__(self, session_id: uuid.UUID, message_id: uuid.UUID, turn_id: uuid.UUID) -> None:
        self.id, self.message_id, self.turn_id = session_id, message_id, turn_id


@pytest.fixture(scope="module")
def runtime(settings: Settings, make_database: Callable[[], str]) -> Iterator[WorkerRuntime]:
    # Its own database: sessions whose users the read model never heard of must not reach
    # the projector that other test modules run on the shared one.
    rt = WorkerRuntime.open(msgspec.structs.replace(settings, database_url=make_database()))
    yield rt
    rt.close()


def start_session(runtime: WorkerRuntime, text: str = "I want to write a horror story") -> Session:
    """SessionStarted + the user's MessagePosted, as the command service appends them."""
    user = uuid.uuid4()
    with runtime.pool.connection() as conn:
        sid, (question,) = seed.start_session(
            conn, user, [text], metadata={"user_id": str(user), "correlation_id": "corr-1"})
    assert question.turn_id is not None
    return Session(sid, question.message_id, question.turn_id)


def session_events(runtime: WorkerRuntime, session: Session) -> list[Any]:
    with runtime.pool.connection() as conn:
        return read_stream_sync(conn, ev.session_stream(session.id))


def replies(runtime: WorkerRuntime, session: Session) -> list[ev.MessagePosted]:
    return [
        r.event
        for r in session_events(runtime, session)
        if isinstance(r.event, ev.MessagePosted) and r.event.role == "assistant"
    ]


def live_entries(runtime: WorkerRuntime, session: Session) -> list[tuple[str, dict[str, Any]]]:
    rows: Any = runtime.redis.xrange(live_key(runtime.settings, session.id))
    return [(fields[b"type"].decode(), json.loads(fields[b"data"])) for _, fields in rows]


def test_the_reply_is_stored_as_an_assistant_message_with_metadata(
    runtime: WorkerRuntime,
) -> None:
    session = start_session(runtime)
    answer(
        runtime, str(session.id), str(session.message_id), provider=OfflineProvider(delay_seconds=0)
    )

    (reply,) = replies(runtime, session)
    assert reply.reply_to == session.message_id
    assert reply.turn_id == session.turn_id
    assert "a horror story" in reply.content
    meta = reply.metadata
    assert meta["provider"] == "offline" and meta["model"] == "offline-echo-1"
    assert meta["finish_reason"] == "stop"
    assert meta["prompt_tokens"] > 0 and meta["completion_tokens"] > 0
    assert meta["latency_ms"] >= 0 and meta["first_token_ms"] >= 0
    assert meta["stand_in"] is True
    recorded = session_events(runtime, session)[-1]
    assert recorded.metadata["correlation_id"] == "corr-1"


def test_the_reply_is_streamed_live_then_the_stored_message_then_done(
    runtime: WorkerRuntime,
) -> None:
    session = start_session(runtime)
    answer(
        runtime, str(session.id), str(session.message_id), provider=OfflineProvider(delay_seconds=0)
    )

    entries = live_entries(runtime, session)
    kinds = [kind for kind, _ in entries]
    assert kinds[0] == "started" and kinds[-2:] == ["message", "done"]
    assert set(kinds[1:-2]) == {"delta"} and len(kinds) > 5
    (reply,) = replies(runtime, session)
    assert "".join(d["text"] for k, d in entries if k == "delta") == reply.content
    message = entries[-2][1]
    assert message["message_id"] == str(reply.message_id)
    assert message["content"] == reply.content and message["role"] == "assistant"
    assert message["turn_id"] == str(session.turn_id) and message["created_at"]
    assert message["metadata"]["finish_reason"] == "stop"
    assert entries[-1][1]["message_id"] == str(reply.message_id)


def test_answering_twice_appends_nothing_the_second_time(runtime: WorkerRuntime) -> None:
    session = start_session(runtime)
    for _ in range(2):
        answer(
            runtime,
            str(session.id),
            str(session.message_id),
            provider=OfflineProvider(delay_seconds=0),
        )
    assert len(replies(runtime, session)) == 1
    assert [k for k, _ in live_entries(runtime, session)].count("started") == 1


def test_the_offline_default_reply_is_deterministic(runtime: WorkerRuntime) -> None:
    first, second = start_session(runtime), start_session(runtime)
    for session in (first, second):
        answer(runtime, str(session.id), str(session.message_id))  # the settings' provider
    assert replies(runtime, first)[0].content == replies(runtime, second)[0].content


class _Recording:
    name, model = "recording", "rec-1"
    extra_metadata: Mapping[str, Any] = {}

    def __init__(self) -> None:
        self.seen: list[ChatMessage] = []

    def stream(self, messages: Sequence[ChatMessage]) -> Iterator[Chunk]:
        self.seen = list(messages)
        yield Chunk(text="ok")


def test_the_context_is_the_conversation_up_to_the_question(runtime: WorkerRuntime) -> None:
    session = start_session(runtime, "first question")
    answer(
        runtime, str(session.id), str(session.message_id), provider=OfflineProvider(delay_seconds=0)
    )
    question = seed.user_message(session.id, uuid.uuid4(), "second question")
    with runtime.pool.connection() as conn:
        append_sync(
            conn,
            [
                StreamAppend(
                    stream_id=ev.session_stream(session.id), expected_version=3, events=[question]
                )
            ],
        )
    recording = _Recording()
    answer(runtime, str(session.id), str(question.message_id), provider=recording)

    first_reply = replies(runtime, session)[0].content
    assert recording.seen == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": first_reply},
        {"role": "user", "content": "second question"},
    ]


class _Failing:
    name, model = "failing", "broken-1"
    extra_metadata: Mapping[str, Any] = {}

    def stream(self, messages: Sequence[ChatMessage]) -> Iterator[Chunk]:
        yield Chunk(text="Half a ")
        raise ProviderError("timeout", "no answer within 60s")


def test_a_failing_provider_leaves_a_failure_event_and_a_live_error(
    runtime: WorkerRuntime,
) -> None:
    session = start_session(runtime)
    answer(runtime, str(session.id), str(session.message_id), provider=_Failing())

    assert replies(runtime, session) == []
    failure = session_events(runtime, session)[-1].event
    assert isinstance(failure, ev.AssistantReplyFailed)
    assert failure.reply_to == session.message_id and failure.turn_id == session.turn_id
    assert "timeout" in failure.error
    assert failure.metadata["provider"] == "failing"
    kind, data = live_entries(runtime, session)[-1]
    assert kind == "error" and data["error"] == "timeout"
    # ... and a failed reply is not retried by a duplicate message either
    answer(runtime, str(session.id), str(session.message_id), provider=_Failing())
    assert len(session_events(runtime, session)) == 3


def test_a_stop_mid_reply_stores_the_partial_text_as_stopped(runtime: WorkerRuntime) -> None:
    session = start_session(runtime)
    worker = threading.Thread(
        target=answer,
        args=(runtime, str(session.id), str(session.message_id)),
        kwargs={"provider": OfflineProvider(delay_seconds=0.05)},
    )
    worker.start()
    wait_until(lambda: [k for k, _ in live_entries(runtime, session)].count("delta") >= 2)
    runtime.redis.set(stop_key(runtime.settings, session.id), "1", ex=30)
    worker.join(timeout=10)

    (reply,) = replies(runtime, session)
    assert reply.metadata["finish_reason"] == "stopped"
    full = compose_reply(
        [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "I want to write a horror story"},
        ]
    )
    assert reply.content and full.startswith(reply.content) and reply.content != full
    assert live_entries(runtime, session)[-1][0] == "done"


def test_a_stop_sent_before_the_reply_does_not_cut_it_short(runtime: WorkerRuntime) -> None:
    session = start_session(runtime)
    runtime.redis.set(stop_key(runtime.settings, session.id), "1", ex=30)
    answer(
        runtime, str(session.id), str(session.message_id), provider=OfflineProvider(delay_seconds=0)
    )
    assert replies(runtime, session)[0].metadata["finish_reason"] == "stop"


def test_a_missing_session_or_message_is_left_alone(runtime: WorkerRuntime) -> None:
    answer(runtime, str(uuid.uuid4()), str(uuid.uuid4()))
    session = start_session(runtime)
    answer(runtime, str(session.id), str(uuid.uuid4()))
    assert replies(runtime, session) == []


def test_a_deleted_session_is_left_alone(runtime: WorkerRuntime) -> None:
    session = start_session(runtime)
    with runtime.pool.connection() as conn:
        conn.execute(
            "UPDATE event_streams SET deleted = true WHERE stream_id = %s",
            (ev.session_stream(session.id),),
        )
    answer(runtime, str(session.id), str(session.message_id))
    assert replies(runtime, session) == []
    assert live_entries(runtime, session) == []


def _register(runtime: WorkerRuntime, user_id: uuid.UUID) -> None:
    """The user's stream, which the command service authenticates X-User-ID against."""
    with runtime.pool.connection() as conn:
        seed.register(conn, user_id)


def _owner(runtime: WorkerRuntime, session: Session) -> uuid.UUID:
    with runtime.pool.connection() as conn:
        info = stream_info_sync(conn, ev.session_stream(session.id))
    assert info is not None and info.owner_id is not None
    return info.owner_id


def test_the_stop_endpoint_stops_the_reply_being_written(
    runtime: WorkerRuntime, serve_app: Callable[[Any], str]
) -> None:
    base = serve_app(create_command_app(runtime.settings))
    session = start_session(runtime)
    owner = _owner(runtime, session)
    _register(runtime, owner)
    worker = threading.Thread(
        target=answer,
        args=(runtime, str(session.id), str(session.message_id)),
        kwargs={"provider": OfflineProvider(delay_seconds=0.05)},
    )
    worker.start()
    wait_until(lambda: [k for k, _ in live_entries(runtime, session)].count("delta") >= 2)
    with client(base, owner) as c:
        assert c.post(f"/api/v1/sessions/{session.id}/stop").status_code == 204
    worker.join(timeout=10)
    (reply,) = replies(runtime, session)
    assert reply.metadata["finish_reason"] == "stopped"


def test_stopping_when_nothing_runs_is_harmless(
    runtime: WorkerRuntime, serve_app: Callable[[Any], str]
) -> None:
    base = serve_app(create_command_app(runtime.settings))
    session = start_session(runtime)
    owner = _owner(runtime, session)
    _register(runtime, owner)
    with client(base, owner) as c:
        assert c.post(f"/api/v1/sessions/{session.id}/stop").status_code == 204


def test_only_the_owner_can_stop_a_reply(
    runtime: WorkerRuntime, serve_app: Callable[[Any], str]
) -> None:
    base = serve_app(create_command_app(runtime.settings))
    session = start_session(runtime)
    stranger = uuid.uuid4()
    _register(runtime, stranger)
    with client(base, stranger) as c:
        theirs = c.post(f"/api/v1/sessions/{session.id}/stop")
        missing = c.post(f"/api/v1/sessions/{uuid.uuid4()}/stop")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"] == missing.json()["error"]
    with client(base) as anonymous:
        assert anonymous.post(f"/api/v1/sessions/{session.id}/stop").status_code == 401
    assert not runtime.redis.exists(stop_key(runtime.settings, session.id))


def test_a_misconfigured_provider_fails_the_reply_instead_of_leaving_it_hanging(
    runtime: WorkerRuntime,
) -> None:
    broken = WorkerRuntime(
        settings=msgspec.structs.replace(runtime.settings, llm_provider="openai", llm_base_url=""),
        pool=runtime.pool,
        redis=runtime.redis,
        broker=runtime.broker,
    )
    session = start_session(runtime)
    answer(broken, str(session.id), str(session.message_id))
    failure = session_events(runtime, session)[-1].event
    assert isinstance(failure, ev.AssistantReplyFailed)
    assert failure.metadata["error_code"] == "provider_unavailable"
    assert live_entries(runtime, session)[-1] == (
        "error",
        {
            "error": "provider_unavailable",
            "detail": "the assistant could not reply (provider_unavailable)",
            "reply_to": str(session.message_id),
        },
    )
