"""The legacy POST /chat (no session, no user header) still works: a streamed reply, and a
legacy turn recorded for its project."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import psycopg
from httpx_sse import connect_sse

from tests.integration.conftest import client, wait_until


def _legacy_chat(base: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    with httpx.Client(base_url=base, timeout=30) as c, connect_sse(
        c, "POST", "/chat", json=body
    ) as source:
        assert source.response.status_code == 200
        return [(e.event, e.data) for e in source.iter_sse()]


def _turns(db: psycopg.Connection[Any], project: str) -> list[tuple[str, str | None]]:
    return db.execute("SELECT user_text, assistant_text FROM turns WHERE project_id = %s"
                      " ORDER BY created_at", (project,)).fetchall()


def test_a_legacy_chat_without_a_project_streams_a_reply_and_records_a_turn(
    command_url: str, db: psycopg.Connection[Any]
) -> None:
    events = _legacy_chat(command_url, {"text": "Once upon a time"})
    assert [k for k, _ in events][-2:] == ["message", "done"]
    meta = json.loads(events[0][1])
    reply = json.loads(events[-2][1])["content"]
    wait_until(lambda: _turns(db, meta["project_id"]) == [("Once upon a time", reply)])


def test_legacy_chats_to_one_project_form_one_conversation(
    command_url: str, db: psycopg.Connection[Any]
) -> None:
    first = json.loads(_legacy_chat(command_url, {"text": "Chapter one"})[0][1])
    second = json.loads(_legacy_chat(
        command_url, {"text": "Chapter two", "project_id": first["project_id"]})[0][1])
    assert second["session_id"] == first["session_id"] and second["created"] is False
    wait_until(lambda: [u for u, _ in _turns(db, first["project_id"])]
               == ["Chapter one", "Chapter two"])


def test_a_legacy_dossier_is_imported_before_the_new_turn(
    command_url: str, db: psycopg.Connection[Any]
) -> None:
    """A project of the old system: its old turns come first, then the new one."""
    project = uuid.uuid4()
    db.execute("INSERT INTO dossier (project_id, title) VALUES (%s, 'Old novel')", (project,))
    db.execute("INSERT INTO turns (project_id, user_text, assistant_text, created_at)"
               " VALUES (%s, 'old question', 'old answer', now() - interval '1 year')",
               (project,))
    events = _legacy_chat(command_url, {"text": "new question", "project_id": str(project)})
    session = json.loads(events[0][1])["session_id"]
    wait_until(lambda: [r[0] for r in db.execute(
        "SELECT content FROM chat_messages WHERE session_id = %s AND role = 'user'"
        " ORDER BY seq", (session,))] == ["old question", "new question"])
    assert [u for u, _ in _turns(db, str(project))] == ["old question", "new question"]


def test_a_legacy_chat_to_an_unknown_project_is_404_and_bad_input_is_400(
    command_url: str,
) -> None:
    with client(command_url) as c:
        r = c.post("/chat", json={"text": "hi", "project_id": str(uuid.uuid4())})
        assert r.status_code == 404 and r.json()["error"] == "project_not_found"
        assert c.post("/chat", json={"text": ""}).status_code == 400
        assert c.post("/chat", json={"project_id": "nope"}).status_code == 400


def test_legacy_chat_can_be_switched_off(settings: Any, serve_app: Any) -> None:
    import msgspec

    from services.command.app import create_app

    base = serve_app(create_app(msgspec.structs.replace(settings, legacy_chat_enabled=False)))
    with client(base) as c:
        r = c.post("/chat", json={"text": "hi"})
    assert r.status_code == 410, r.text
    assert r.json()["error"] == "legacy_chat_disabled"
