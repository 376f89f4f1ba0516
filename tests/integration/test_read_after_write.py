"""A miss is never a lie: right after the command side answers, the query side (through the
gateway of a real `chatctl serve all`) knows what it created, with no X-Min-Position.
Only what the event store does not hold for the caller is 401/404."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.e2e.system import RunningSystem, running_system
from tests.integration.conftest import wait_until

TRIES = 500
CHATS_PER_USER = 50  # spread over users, as a real front end's traffic is


@pytest.fixture(scope="module")
def system(make_database: Callable[[], str], redis_url: str, redis_prefix: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    with running_system(make_database(), redis_url, redis_prefix,
                        tmp_path_factory.mktemp("raw")) as running:
        yield running


@pytest.fixture
def http(system: RunningSystem) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=system.url, timeout=30) as c:
        yield c


def register(http: httpx.Client) -> str:
    response = http.post("/api/v1/users", json={"display_name": "Reader"})
    assert response.status_code == 201, response.text
    return str(response.json()["user_id"])


def chat(http: httpx.Client, user_id: str) -> dict[str, str]:
    response = http.post("/api/v1/chat", json={"text": "A story about a lighthouse"},
                         headers={"X-User-ID": user_id, "Accept": "application/json"})
    assert response.status_code == 202, response.text
    return dict(response.json())


def test_register_then_read_never_says_unknown_user(http: httpx.Client) -> None:
    statuses: Counter[int] = Counter()
    for i in range(TRIES):
        user_id = register(http)
        path = "/api/v1/users/me" if i % 2 == 0 else "/api/v1/sessions"
        response = http.get(path, headers={"X-User-ID": user_id})
        statuses[response.status_code] += 1
        if path.endswith("/me") and response.status_code == 200:
            assert response.json()["user_id"] == user_id
    assert statuses == {200: TRIES}


def test_chat_then_read_never_says_no_such_session(http: httpx.Client) -> None:
    statuses: Counter[int] = Counter()
    user_id = register(http)
    for i in range(TRIES):
        if i % CHATS_PER_USER == 0:
            user_id = register(http)  # also a user the read model may not have yet
        session_id = chat(http, user_id)["session_id"]
        response = http.get(f"/api/v1/sessions/{session_id}/messages",
                            headers={"X-User-ID": user_id})
        statuses[response.status_code] += 1
    assert statuses == {200: TRIES}


def test_chat_then_stream_never_says_no_such_session(http: httpx.Client) -> None:
    statuses: Counter[int] = Counter()
    for _ in range(50):
        user_id = register(http)
        accepted = chat(http, user_id)
        with http.stream("GET", f"/api/v1/sessions/{accepted['session_id']}/stream",
                         params={"reply_to": accepted["message_id"]},
                         headers={"X-User-ID": user_id}) as response:
            statuses[response.status_code] += 1
    assert statuses == {200: 50}


def test_what_the_event_store_does_not_hold_is_still_401_and_404(http: httpx.Client) -> None:
    stranger = str(uuid.uuid4())
    for path in ("/api/v1/users/me", "/api/v1/sessions",
                 f"/api/v1/sessions/{uuid.uuid4()}/messages",
                 f"/api/v1/sessions/{uuid.uuid4()}/stream"):
        response = http.get(path, headers={"X-User-ID": stranger})
        assert response.status_code == 401, (path, response.text)

    owner, other = register(http), register(http)
    mine = chat(http, owner)["session_id"]
    for user_id, session_id in ((owner, str(uuid.uuid4())), (other, mine)):
        for tail in ("messages", "stream"):
            response = http.get(f"/api/v1/sessions/{session_id}/{tail}",
                                headers={"X-User-ID": user_id})
            assert response.status_code == 404, (tail, response.text)
            assert response.json()["error"] == "session_not_found"


def test_a_deleted_session_is_404_not_waited_for(http: httpx.Client) -> None:
    owner = register(http)
    session_id = chat(http, owner)["session_id"]
    deleted = http.delete(f"/api/v1/sessions/{session_id}", headers={"X-User-ID": owner})
    assert deleted.is_success, deleted.text
    # until the projector applies the deletion the old page may still show; never a 503
    wait_until(lambda: http.get(f"/api/v1/sessions/{session_id}/messages",
                                headers={"X-User-ID": owner}).status_code == 404, timeout=30)
