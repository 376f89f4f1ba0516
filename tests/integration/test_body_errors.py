"""A body that cannot be taken answers our own `{"error": "invalid_request", "detail": ...}`,
whatever the JSON library of the day raises or says (msgspec 0.19 raised UnicodeDecodeError
for bad UTF-8, 0.23 raises DecodeError with its own text): code and detail are ours.

Every route that takes a body, straight to the command service and through the gateway (the
query service takes no bodies; it shares the same handlers, services/http/errors.py). Bad
parameters likewise answer our own `invalid_parameter` text, in both services.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import msgspec
import pytest

from services.command.app import create_app as command_app
from services.core.settings import Settings
from services.gateway.app import create_app as gateway_app
from services.query.app import create_app as query_app
from tests.integration.conftest import serve, wait_until
from workers.main import running_worker

TIMEOUT = 15.0
SESSION = "0b9e8e4e-6b7a-4a55-9d3c-3f1f0c8a2b11"

# (method, path, a body the route takes)
ROUTES = [
    ("POST", "/api/v1/chat", {"text": "hi"}),
    ("PUT", f"/api/v1/sessions/{SESSION}/title", {"title": "t"}),
    ("POST", "/chat", {"text": "hi"}),
]

# (case, raw body, detail): the same for every route
UNDECODABLE = [
    ("not utf-8", b'{"text": "\xff\xfe"}', "the body is not valid UTF-8"),
    ("overlong utf-8", b'{"text": "\xc0\xaf"}', "the body is not valid UTF-8"),
    ("not json", b'{"text": ', "the body is not valid JSON"),
    ("trailing garbage", b'{"text": "hi"} x', "the body is not valid JSON"),
    ("too deep", b"[" * 100_000 + b"]" * 100_000, "the JSON body is nested too deeply"),
    ("not an object", b'[{"text": "hi"}]', "the body must be a JSON object"),
    ("no body", b"", "a JSON object is required"),
]


@pytest.fixture(scope="module")
def fronts(settings: Settings) -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        stack.enter_context(running_worker(settings, threads=2))
        command = stack.enter_context(serve(command_app(settings)))
        query = stack.enter_context(serve(query_app(settings)))
        gateway = stack.enter_context(serve(gateway_app(
            msgspec.structs.replace(settings, command_url=command, query_url=query))))
        yield {"command": command, "query": query, "gateway": gateway}


@pytest.fixture(scope="module")
def user(fronts: dict[str, str]) -> str:
    response = httpx.post(f"{fronts['command']}/api/v1/users", json={}, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return str(response.json()["user_id"])


def send(base: str, user: str, method: str, path: str, content: bytes) -> httpx.Response:
    return httpx.request(method, base + path, content=content, timeout=TIMEOUT,
                         headers={"X-User-ID": user, "Content-Type": "application/json",
                                  "Accept": "application/json"})


def assert_refused(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "invalid_request", "detail": detail}


@pytest.mark.parametrize("front", ["command", "gateway"])
@pytest.mark.parametrize(("case", "content", "detail"), UNDECODABLE,
                         ids=[case for case, _, _ in UNDECODABLE])
def test_a_body_that_does_not_decode_is_400_in_our_words(
    fronts: dict[str, str], user: str, front: str, case: str, content: bytes, detail: str
) -> None:
    for method, path, _ in ROUTES:
        assert_refused(send(fronts[front], user, method, path, content), detail)


# (case, route index, body, detail)
INVALID = [
    ("wrong type", 0, {"text": 5}, "text: must be a string"),
    ("null for a string", 0, {"text": None}, "text: must be a string"),
    ("not a uuid", 0, {"text": "hi", "session_id": "nope"}, "session_id: must be a UUID or null"),
    ("number for a uuid", 2, {"text": "hi", "project_id": 12},
     "project_id: must be a UUID or null"),
    ("unknown field", 0, {"text": "hi", "role": "assistant"}, "role: unknown field"),
    ("unknown field in a rename", 1, {"title": "t", "user_id": SESSION}, "user_id: unknown field"),
    ("missing field", 0, {}, "text: is required"),
    ("missing field in a rename", 1, {"name": "t"}, "name: unknown field; title: is required"),
    ("several problems", 0, {"text": 1, "x": 2}, "x: unknown field; text: must be a string"),
]


@pytest.mark.parametrize("front", ["command", "gateway"])
@pytest.mark.parametrize(("case", "route", "body", "detail"), INVALID,
                         ids=[case for case, _, _, _ in INVALID])
def test_a_body_of_the_wrong_shape_is_400_in_our_words(
    fronts: dict[str, str], user: str, front: str, case: str, route: int, body: Any,
    detail: str,
) -> None:
    method, path, _ = ROUTES[route]
    assert_refused(send(fronts[front], user, method, path, msgspec.json.encode(body)), detail)


@pytest.mark.parametrize(("body", "detail"), [
    ({"email": "x"}, "email: is not in the expected format"),
    ({"display_name": "d" * 201}, "display_name: is longer than 200 characters"),
    ({"avatar_url": 5}, "avatar_url: must be a string or null"),
    ({"user_id": SESSION}, "user_id: unknown field"),
])
def test_signup_fields_are_explained_in_our_words(
    fronts: dict[str, str], body: dict[str, Any], detail: str
) -> None:
    response = httpx.post(f"{fronts['command']}/api/v1/users", json=body, timeout=TIMEOUT)
    assert_refused(response, detail)


@pytest.mark.parametrize(("front", "method", "path", "detail"), [
    ("query", "GET", "/api/v1/sessions?limit=0", "limit: must be an integer from 1 to 100"),
    ("query", "GET", "/api/v1/sessions?limit=many", "limit: must be an integer from 1 to 100"),
    ("query", "GET", f"/api/v1/sessions/{SESSION}/messages?offset=-1",
     "offset: must be an integer from 0 to 2147483647"),
    ("command", "PUT", "/api/v1/sessions/nope/title", "session_id: must be a UUID"),
    ("command", "DELETE", "/api/v1/sessions/12345", "session_id: must be a UUID"),
])
def test_a_bad_parameter_is_400_in_our_words(
    fronts: dict[str, str], user: str, front: str, method: str, path: str, detail: str
) -> None:
    headers = {"X-User-ID": user}
    # the query side checks parameters once it knows the caller: wait for the projection
    wait_until(lambda: httpx.get(f"{fronts['query']}/api/v1/users/me", headers=headers,
                                 timeout=TIMEOUT).status_code == 200, timeout=30)
    response = httpx.request(method, fronts[front] + path, headers=headers, timeout=TIMEOUT,
                             json={"title": "t"} if method == "PUT" else None)
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "invalid_parameter", "detail": detail}
