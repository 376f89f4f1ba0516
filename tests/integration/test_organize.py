"""Issue 17, organizing conversations, through the whole write path: the command API
appends, the real worker projects, the query API lists (real HTTP, PostgreSQL, Redis).

Archive: POST .../archive and /unarchive set is_active; the list shows the active sessions,
?archived=true the archived ones; posting to an archived session makes it active again."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from services.core.settings import Settings
from services.query.app import create_app as create_query_app
from tests.integration.conftest import client, wait_until

PROJECTION_SECONDS = 30.0


@pytest.fixture
def query_url(settings: Settings, serve_app: Callable[[Any], str]) -> str:
    return serve_app(create_query_app(settings))


def register(command_url: str) -> uuid.UUID:
    with client(command_url) as c:
        response = c.post("/api/v1/users", json={})
    assert response.status_code == 201, response.text
    return uuid.UUID(response.json()["user_id"])


def post(command_url: str, user: uuid.UUID, **body: Any) -> dict[str, Any]:
    with client(command_url, user) as c:
        response = c.post("/api/v1/chat", json={k: str(v) if isinstance(v, uuid.UUID) else v
                                                for k, v in body.items()},
                          headers={"Accept": "application/json"})
    assert response.status_code == 202, response.text
    return response.json()


def listed(query_url: str, user: uuid.UUID, **params: Any) -> list[str]:
    with client(query_url, user) as c:
        response = c.get("/api/v1/sessions", params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    return [s["session_id"] for s in response.json()["sessions"]]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code, response.text


def test_an_archived_session_leaves_the_list_and_comes_back_when_unarchived(
    command_url: str, query_url: str,
) -> None:
    user = register(command_url)
    kept = post(command_url, user, text="keep me")["session_id"]
    shelved = post(command_url, user, text="archive me")["session_id"]
    wait_until(lambda: set(listed(query_url, user)) == {kept, shelved}, PROJECTION_SECONDS)
    with client(command_url, user) as c:
        assert c.post(f"/api/v1/sessions/{shelved}/archive").status_code == 204
    wait_until(lambda: listed(query_url, user) == [kept], PROJECTION_SECONDS)
    assert listed(query_url, user, archived="true") == [shelved]
    with client(query_url, user) as c:  # the messages stay
        page = c.get(f"/api/v1/sessions/{shelved}/messages").json()
    assert page["messages"][0]["content"] == "archive me"
    with client(command_url, user) as c:
        assert c.post(f"/api/v1/sessions/{shelved}/unarchive").status_code == 204
    wait_until(lambda: set(listed(query_url, user)) == {kept, shelved}, PROJECTION_SECONDS)
    assert listed(query_url, user, archived="true") == []


def test_posting_to_an_archived_session_unarchives_it(
    command_url: str, query_url: str,
) -> None:
    user = register(command_url)
    session = post(command_url, user, text="first")["session_id"]
    with client(command_url, user) as c:
        assert c.post(f"/api/v1/sessions/{session}/archive").status_code == 204
    wait_until(lambda: listed(query_url, user, archived="true") == [session],
               PROJECTION_SECONDS)
    post(command_url, user, text="and again", session_id=session)
    wait_until(lambda: listed(query_url, user) == [session], PROJECTION_SECONDS)
    assert listed(query_url, user, archived="true") == []


@pytest.mark.parametrize("action", ["archive", "unarchive"])
def test_archiving_another_users_or_a_missing_session_is_404(
    command_url: str, action: str,
) -> None:
    owner, other = register(command_url), register(command_url)
    session = post(command_url, owner, text="mine")["session_id"]
    with client(command_url, other) as c:
        assert_error(c.post(f"/api/v1/sessions/{session}/{action}"), 404, "session_not_found")
        assert_error(c.post(f"/api/v1/sessions/{uuid.uuid4()}/{action}"), 404,
                     "session_not_found")
        assert_error(c.post(f"/api/v1/sessions/nope/{action}"), 400, "invalid_parameter")
    with client(command_url, owner) as c:
        assert c.delete(f"/api/v1/sessions/{session}").status_code == 204
        assert_error(c.post(f"/api/v1/sessions/{session}/{action}"), 404, "session_not_found")


@pytest.mark.parametrize("params", [{"archived": "maybe"}, {"project_id": "nope"}])
def test_bad_list_filters_are_400(command_url: str, query_url: str,
                                  params: dict[str, str]) -> None:
    user = register(command_url)
    post(command_url, user, text="hello")
    wait_until(lambda: listed(query_url, user), PROJECTION_SECONDS)
    with client(query_url, user) as c:
        response = c.get("/api/v1/sessions", params=params)
    assert_error(response, 400, "invalid_parameter")
