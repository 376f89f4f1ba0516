"""POST /api/v1/chat's default answer: the reply itself as server-sent events, over real
HTTP with a real SSE client, a real worker answering through the broker (Redis, and
RabbitMQ for the tests marked on_both_brokers)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import psycopg
from httpx_sse import connect_sse

from services.command.app import create_app
from services.core.settings import Settings
from tests.integration.conftest import client, on_both_brokers, wait_until
from workers.main import running_worker


def _user(base: str) -> uuid.UUID:
    with client(base) as c:
        return uuid.UUID(c.post("/api/v1/users", json={}).json()["user_id"])


def _post_streamed(base: str, user: uuid.UUID, body: dict[str, Any]) -> list[tuple[str, str]]:
    with httpx.Client(base_url=base, timeout=30) as c, connect_sse(
        c, "POST", "/api/v1/chat", json=body, headers={"X-User-ID": str(user)}
    ) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [(e.event, e.data) for e in source.iter_sse()]


@on_both_brokers
def test_a_streamed_chat_sends_session_then_the_reply_then_done(
    command_url: str, db: psycopg.Connection[Any]
) -> None:
    user = _user(command_url)
    events = _post_streamed(command_url, user, {"text": "Give me an opening line"})
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "session" and kinds[-1] == "done"
    assert kinds[-2] == "message" and kinds.count("delta") >= 2
    session = json.loads(events[0][1])
    assert session["created"] is True
    streamed = "".join(json.loads(data)["text"] for kind, data in events if kind == "delta")
    stored = json.loads(events[-2][1])
    assert stored["content"] == streamed and stored["role"] == "assistant"
    # the stored reply is what the read model ends up with
    wait_until(lambda: db.execute(
        "SELECT content FROM chat_messages WHERE session_id = %s AND role = 'assistant'",
        (session["session_id"],)).fetchone() == (streamed,))


@on_both_brokers
def test_a_streamed_chat_continues_a_session_and_streams_only_the_new_reply(
    command_url: str,
) -> None:
    user = _user(command_url)
    first = _post_streamed(command_url, user, {"text": "Start a ghost story"})
    session_id = json.loads(first[0][1])["session_id"]
    second = _post_streamed(command_url, user, {"text": "Now the ending",
                                                "session_id": session_id})
    meta = json.loads(second[0][1])
    assert meta["created"] is False and meta["session_id"] == session_id
    message = json.loads(next(data for kind, data in second if kind == "message"))
    assert message["reply_to"] == meta["message_id"]


def test_json_accept_still_answers_202_with_a_stream_url_that_waits_for_the_projection(
    command_url: str,
) -> None:
    user = _user(command_url)
    with client(command_url, user) as c:
        r = c.post("/api/v1/chat", json={"text": "hi"}, headers={"Accept": "application/json"})
    assert r.status_code == 202
    body = r.json()
    assert body["stream_url"] == (f"/api/v1/sessions/{body['session_id']}/stream"
                                  f"?min_position={body['position']}"
                                  f"&reply_to={body['message_id']}")


def test_bad_input_on_a_streamed_chat_is_a_plain_json_error(command_url: str) -> None:
    user = _user(command_url)
    with client(command_url, user) as c:
        r = c.post("/api/v1/chat", json={"text": "   "})
    assert r.status_code == 400 and r.json()["error"] == "empty_text"


@on_both_brokers
def test_a_stop_mid_reply_ends_the_stream_with_the_partial_reply_stored_as_stopped(
    settings: Settings, serve_app: Callable[[Any], str], broker_url: str
) -> None:
    # a slow reply (0.2 s a delta), stopped as soon as its first deltas arrive
    slow = msgspec.structs.replace(settings, broker_url=broker_url,
                                   llm_offline_delay_seconds=0.2)
    seen: list[tuple[str, str]] = []
    with running_worker(slow, threads=2):
        base = serve_app(create_app(slow))
        user = _user(base)
        with httpx.Client(base_url=base, timeout=30) as c, connect_sse(
            c, "POST", "/api/v1/chat", json={"text": "Tell me a story"},
            headers={"X-User-ID": str(user)},
        ) as source:
            for event in source.iter_sse():
                seen.append((event.event, event.data))
                if [k for k, _ in seen].count("delta") == 2:
                    session_id = json.loads(seen[0][1])["session_id"]
                    stopped = c.post(f"/api/v1/sessions/{session_id}/stop",
                                     headers={"X-User-ID": str(user)})
                    assert stopped.status_code == 204
    kinds = [k for k, _ in seen]
    assert kinds[-1] == "done" and kinds[-2] == "message", kinds
    stored = json.loads(seen[-2][1])
    assert stored["metadata"]["finish_reason"] == "stopped"
    streamed = "".join(json.loads(data)["text"] for kind, data in seen if kind == "delta")
    assert stored["content"] == streamed
