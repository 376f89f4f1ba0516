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
from services.query.params import UUID_PATTERN
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


@pytest.mark.parametrize("params", [
    {"archived": "maybe"}, {"archived": "True"}, {"archived": "1"}, {"archived": ""},
    {"project_id": "nope"}, {"project_id": ""},
    {"project_id": "4a1c3f5e00004000800000000000000a"},  # not the hyphenated form
])
def test_bad_list_filters_are_400(command_url: str, query_url: str,
                                  params: dict[str, str]) -> None:
    user = register(command_url)
    post(command_url, user, text="hello")
    wait_until(lambda: listed(query_url, user), PROJECTION_SECONDS)
    with client(query_url, user) as c:
        response = c.get("/api/v1/sessions", params=params)
    assert_error(response, 400, "invalid_parameter")


# --- projects ------------------------------------------------------------------------------


def create_project(command_url: str, user: uuid.UUID, **body: Any) -> dict[str, Any]:
    with client(command_url, user) as c:
        response = c.post("/api/v1/projects", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def projects(query_url: str, user: uuid.UUID, **params: Any) -> dict[str, Any]:
    with client(query_url, user) as c:
        response = c.get("/api/v1/projects", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_projects_are_created_renamed_listed_with_counts_and_hold_moved_sessions(
    command_url: str, query_url: str,
) -> None:
    user = register(command_url)
    work = create_project(command_url, user, title="  Work ", description="the office")
    assert (work["title"], work["description"]) == ("Work", "the office")
    home = create_project(command_url, user, title="Home")
    session = post(command_url, user, text="in work", project_id=work["project_id"])
    assert session["project_id"] == work["project_id"]

    def counts() -> dict[str, tuple[str, int]]:
        page = projects(query_url, user)
        return {p["project_id"]: (p["title"], p["session_count"]) for p in page["projects"]}

    wait_until(lambda: counts() == {work["project_id"]: ("Work", 1),
                                    home["project_id"]: ("Home", 0)}, PROJECTION_SECONDS)
    assert projects(query_url, user)["projects"][0]["project_id"] == work["project_id"]
    with client(command_url, user) as c:
        renamed = c.put(f"/api/v1/projects/{home['project_id']}", json={"title": "House"})
        assert renamed.status_code == 200, renamed.text
        moved = c.post(f"/api/v1/sessions/{session['session_id']}/move",
                       json={"project_id": home["project_id"]})
        assert moved.status_code == 200, moved.text
    wait_until(lambda: counts() == {work["project_id"]: ("Work", 0),
                                    home["project_id"]: ("House", 1)}, PROJECTION_SECONDS)
    assert listed(query_url, user, project_id=home["project_id"]) == [session["session_id"]]
    assert listed(query_url, user, project_id=work["project_id"]) == []
    description = {p["project_id"]: p["description"]
                   for p in projects(query_url, user)["projects"]}
    assert description[work["project_id"]] == "the office"


def test_projects_page_by_cursor(command_url: str, query_url: str) -> None:
    user = register(command_url)
    made = {create_project(command_url, user, title=f"p{i}")["project_id"] for i in range(5)}
    wait_until(lambda: len(projects(query_url, user)["projects"]) == 5, PROJECTION_SECONDS)
    seen: list[str] = []
    page = projects(query_url, user, limit=2)
    while True:
        seen += [p["project_id"] for p in page["projects"]]
        if page["next_cursor"] is None:
            break
        page = projects(query_url, user, limit=2, before=page["next_cursor"])
    assert len(seen) == 5 and set(seen) == made


def test_another_users_project_is_404(command_url: str, query_url: str) -> None:
    owner, other = register(command_url), register(command_url)
    theirs = create_project(command_url, owner, title="Theirs")["project_id"]
    mine = post(command_url, other, text="mine")["session_id"]
    with client(command_url, other) as c:
        assert_error(c.put(f"/api/v1/projects/{theirs}", json={"title": "x"}), 404,
                     "project_not_found")
        assert_error(c.put(f"/api/v1/projects/{uuid.uuid4()}", json={"title": "x"}), 404,
                     "project_not_found")
        assert_error(c.post(f"/api/v1/sessions/{mine}/move", json={"project_id": theirs}),
                     404, "project_not_found")
    with client(command_url, owner) as c:  # nor can the owner move another's session
        assert_error(c.post(f"/api/v1/sessions/{mine}/move", json={"project_id": theirs}),
                     404, "session_not_found")
    wait_until(lambda: listed(query_url, other) == [mine], PROJECTION_SECONDS)
    assert theirs not in {p["project_id"] for p in projects(query_url, other)["projects"]}


@pytest.mark.parametrize(("body", "code"), [
    ({}, "invalid_request"),
    ({"title": "   "}, "invalid_title"),
    ({"title": "t" * 201}, "invalid_title"),
    ({"title": "ok", "description": "d" * 2001}, "invalid_description"),
    ({"title": "ok", "owner_id": str(uuid.uuid4())}, "invalid_request"),
])
def test_bad_project_bodies_are_400(command_url: str, body: dict[str, Any], code: str) -> None:
    user = register(command_url)
    with client(command_url, user) as c:
        assert_error(c.post("/api/v1/projects", json=body), 400, code)
        session = post(command_url, user, text="hi")
        assert_error(c.put(f"/api/v1/projects/{session['project_id']}", json=body), 400, code)
        assert_error(c.post(f"/api/v1/sessions/{session['session_id']}/move",
                            json={"project_id": "nope"}), 400, "invalid_request")
        assert_error(c.put("/api/v1/projects/nope", json={"title": "x"}), 400,
                     "invalid_parameter")


def test_bad_project_list_parameters_are_400(command_url: str, query_url: str) -> None:
    user = register(command_url)
    with client(query_url, user) as c:
        assert_error(c.get("/api/v1/projects", params={"before": "garbage!"}), 400,
                     "invalid_cursor")
        assert_error(c.get("/api/v1/projects", params={"limit": 0}), 400, "invalid_parameter")


def test_the_list_filters_have_exact_openapi_schemas(query_url: str) -> None:
    document = httpx.get(f"{query_url}/schema/openapi.json").json()
    parameters = {p["name"]: p["schema"]
                  for p in document["paths"]["/api/v1/sessions"]["get"]["parameters"]}
    assert parameters["archived"]["type"] == "boolean" and "oneOf" not in parameters["archived"]
    assert parameters["project_id"]["type"] == "string" and "oneOf" not in parameters["project_id"]
    assert parameters["project_id"]["format"] == "uuid"
    assert parameters["project_id"]["pattern"] == UUID_PATTERN
