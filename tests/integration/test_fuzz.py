"""API fuzzing from the OpenAPI document, against the whole system (`chatctl serve all`:
gateway, both services and a worker) on a throwaway database and Redis prefix.

Two layers:

- `schemathesis run` (the CLI, with every check and the examples, coverage and fuzzing
  phases) generates requests for every operation of the gateway's merged document (valid
  and invalid bodies, parameters and headers, methods a path does not have) and checks
  every answer: never a 5xx, what the document calls valid is accepted and what it calls
  invalid refused, and status, headers, content type and body are the declared ones;
- a hand-written hypothesis state machine walks the life of a user's sessions (chat, chat
  again, rename, delete, list) while a second user tries every route on the first user's
  sessions: the intruder always gets the 404 a missing session gets, never sees the first
  user's sessions in a list, and the owner's sessions are exactly what the owner made.

Bounded: MAX_EXAMPLES per operation and STATE_MACHINE_RUNS x STEPS; a couple of minutes.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from services.command.chat import title_from
from tests.e2e.system import RunningSystem, running_system
from tests.integration.conftest import wait_until

MAX_EXAMPLES = 10
PROJECT_CONFIG = Path(__file__).resolve().parents[2] / "schemathesis.toml"
STATE_MACHINE_RUNS = 6
STEPS = 12
REQUEST_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def system(make_database: Any, redis_url: str, redis_prefix: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    # Bounded waits, so generated positions nobody wrote and replies that never start cost
    # a second or two each, not the defaults' 5 and 30.
    with running_system(make_database(), redis_url, redis_prefix,
                        tmp_path_factory.mktemp("fuzz"), MIN_POSITION_WAIT_SECONDS="2",
                        REPLY_START_TIMEOUT_SECONDS="2") as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(system: RunningSystem) -> Any:
    return schemathesis.openapi.from_url(f"{system.url}/schema/openapi.json")


def register(base: str, name: str) -> str:
    response = httpx.post(f"{base}/api/v1/users", json={"display_name": name}, timeout=10)
    assert response.status_code == 201, response.text
    return str(response.json()["user_id"])


@pytest.fixture(scope="module")
def owner(system: RunningSystem) -> str:
    return register(system.url, "Fuzz owner")


def test_schemathesis_finds_nothing_with_every_check(
    system: RunningSystem, owner: str, tmp_path: Path
) -> None:
    """The run the issue names, as a user would type it: `schemathesis run` with every check
    and the examples, coverage and fuzzing phases against the merged document, bounded by
    MAX_EXAMPLES per operation, with the project's schemathesis.toml. A registered caller
    (-H, as the issue ran it) gets generated input past authentication.

    All checks but ignored_auth (why: schemathesis.toml). The live stream is left out: its
    response never ends while no reply is written, and a client that checks whole bodies
    cannot read it (test_streaming.py drives it with a real
    SSE client, its parameters included)."""
    run = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "--config-file",
         str(PROJECT_CONFIG), "--no-color", "run", f"{system.url}/schema/openapi.json",
         "-H", f"X-User-ID: {owner}", "--exclude-path-regex", "/stream$",
         # deleting the account would delete the one caller every other case uses
         # (test_accounts.py deletes accounts of its own)
         "--exclude-operation-id", "deleteMe",
         "--checks", "all", "--exclude-checks", "ignored_auth",
         "--phases", "examples,coverage,fuzzing",
         "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic",
         "--request-timeout", str(REQUEST_TIMEOUT)],
        # its own directory: schemathesis keeps a cache of past failures (.schemathesis/)
        # in the working directory and would replay another run's
        cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
    )
    report = run.stdout[-20000:] + run.stderr[-5000:]
    assert run.returncode == 0, report


# --- stateful: one user's sessions, and a second user who tries them all ------------------

safe_text = st.text(
    # storable text (NUL and lone surrogates are refused, see test_security.py), any script
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    min_size=1, max_size=80,
).filter(lambda t: bool(t.strip()))
SESSION_PATHS = ("/api/v1/sessions/{session_id}/title", "/api/v1/sessions/{session_id}",
                 "/api/v1/sessions/{session_id}/stop", "/api/v1/sessions/{session_id}/messages",
                 "/api/v1/sessions/{session_id}/stream")


class Api:
    """Requests through the gateway, each answer checked against the merged document."""

    def __init__(self, base: str, schema: Any) -> None:
        self.http = httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT)
        self.schema = schema

    def call(self, user: str, method: str, template: str, session_id: str | None = None,
             **kwargs: Any) -> httpx.Response:
        path = template.format(session_id=session_id)
        headers = {"X-User-ID": user, "Accept": "application/json", **kwargs.pop("headers", {})}
        response = self.http.request(method, path, headers=headers, **kwargs)
        assert response.status_code < 500, (method, path, response.status_code, response.text)
        self.schema[template][method.lower()].validate_response(response)
        return response


def test_a_second_user_never_reads_or_changes_the_first_users_sessions(
    system: RunningSystem, api_schema: Any, owner: str
) -> None:
    api = Api(system.url, api_schema)
    intruder = register(system.url, "Fuzz intruder")
    wait_until(lambda: httpx.get(f"{system.url}/api/v1/users/me", timeout=10,
                                 headers={"X-User-ID": intruder}).status_code == 200)

    class Sessions(RuleBasedStateMachine):
        sessions = Bundle("sessions")

        def __init__(self) -> None:
            super().__init__()
            self.owner = register(system.url, "Owner")  # a fresh one per run: exact lists
            self.titles: dict[str, str] = {}  # live sessions → their title

        @rule(target=sessions, text=safe_text)
        def start(self, text: str) -> str:
            response = api.call(self.owner, "POST", "/api/v1/chat", json={"text": text})
            assert response.status_code == 202, response.text
            session_id = str(response.json()["session_id"])
            self.titles[session_id] = title_from(text.strip())
            return session_id

        @rule(session_id=sessions, text=safe_text)
        def post_again(self, session_id: str, text: str) -> None:
            response = api.call(self.owner, "POST", "/api/v1/chat",
                                json={"text": text, "session_id": session_id})
            assert response.status_code == (202 if session_id in self.titles else 404)

        @rule(session_id=sessions, title=safe_text)
        def rename(self, session_id: str, title: str) -> None:
            response = api.call(self.owner, "PUT", "/api/v1/sessions/{session_id}/title",
                                session_id, json={"title": title})
            if session_id in self.titles:
                assert response.status_code == 200, response.text
                self.titles[session_id] = title.strip()
            else:
                assert response.status_code == 404

        @rule(session_id=consumes(sessions))
        def delete(self, session_id: str) -> None:
            response = api.call(self.owner, "DELETE", "/api/v1/sessions/{session_id}",
                                session_id)
            assert response.status_code == (204 if session_id in self.titles else 404)
            self.titles.pop(session_id, None)

        @rule(session_id=sessions)
        def intruder_tries_everything(self, session_id: str) -> None:
            # every route that takes a session id, with every method it has
            for template in SESSION_PATHS:
                for method in api_schema.raw_schema["paths"][template]:
                    kwargs: dict[str, Any] = {}
                    if method == "put":
                        kwargs["json"] = {"title": "taken over"}
                    response = api.call(intruder, method.upper(), template, session_id,
                                        **kwargs)
                    assert response.status_code == 404, (method, template, response.text)
            response = api.call(intruder, "POST", "/api/v1/chat",
                                json={"text": "mine now", "session_id": session_id})
            assert response.status_code == 404, response.text

        @invariant()
        def intruder_sees_nothing_of_the_owners(self) -> None:
            page = api.call(intruder, "GET", "/api/v1/sessions", params={"limit": 100}).json()
            assert not {s["session_id"] for s in page["sessions"]} & set(self.titles)

        def teardown(self) -> None:
            # the owner's list becomes exactly what the model says (after projection)
            def listed() -> bool:
                response = api.call(self.owner, "GET", "/api/v1/sessions", params={"limit": 100})
                if response.status_code == 401:  # the new owner is not projected yet
                    return False
                listed = {s["session_id"]: s["title"] for s in response.json()["sessions"]}
                return listed == self.titles

            wait_until(listed, timeout=15, interval=0.1)

    run_state_machine_as_test(Sessions, settings=settings(
        max_examples=STATE_MACHINE_RUNS, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=list(HealthCheck)))


# --- what the fuzzing found ---------------------------------------------------------------


def test_the_streamed_chat_answer_is_200_event_stream_as_documented(
    system: RunningSystem, owner: str, api_schema: Any
) -> None:
    # POST /chat answers its JSON form with 202 and its default, streamed form with 200
    # (as the document says); the stream used to inherit the route's 202.
    events = []
    try:
        with httpx.stream("POST", f"{system.url}/api/v1/chat", timeout=REQUEST_TIMEOUT,
                          json={"text": "Once upon a time"},
                          headers={"X-User-ID": owner}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            # to the end of the reply: leaves nothing running
            events = [line for line in response.iter_lines() if line.startswith("event:")]
    except httpx.HTTPError as exc:
        pytest.fail(f"{exc!r} after {events}\n{system.log_tail(200)}")
    assert events[-1] == "event: done", events
    streamed = api_schema.raw_schema["paths"]["/api/v1/sessions/{session_id}/stream"]["get"]
    assert "text/event-stream" in streamed["responses"]["200"]["content"]


def test_an_intruders_session_id_is_unknown_even_for_stop(system: RunningSystem) -> None:
    # a smoke check of the 404 contract outside the state machine (fast to read when it fails)
    a, b = register(system.url, "A"), register(system.url, "B")
    accepted = httpx.post(f"{system.url}/api/v1/chat", json={"text": "hi"},
                          headers={"X-User-ID": a, "Accept": "application/json"}, timeout=10)
    session_id = accepted.json()["session_id"]
    for sid in (session_id, str(uuid.uuid4())):
        response = httpx.post(f"{system.url}/api/v1/sessions/{sid}/stop",
                              headers={"X-User-ID": b}, timeout=10)
        assert response.status_code == 404
