"""POST /api/v1/chat's default answer: the reply itself as server-sent events, over real
HTTP with a real SSE client, a real worker answering through the Redis broker."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import psycopg
from httpx_sse import connect_sse

from tests.integration.conftest import client, wait_until


def _user(base: str) -> uuid.UUID:
    with client(base) as c:
        return uuid.UUID(c.post("/api/v1/users", json={}).json()["user_id"])


def _post_streamed(base: str, user: uuid.UUID, body: dict[str, Any]) -> list[tuple[str, str]]:
    with httpx.Client(base_url=base, timeout=30) as c, connect_sse(
        c, "POST", "/api/v1/chat", json=body, headers={"X-User-ID": str(user)}
    ) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [(e.event, e.data) for e in source.iter_sse()]


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
