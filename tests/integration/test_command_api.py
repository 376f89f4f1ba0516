"""The command API over real HTTP, against real PostgreSQL and Redis.

Only the event store and the wake-ups are asserted on: the read model belongs to the
projector, which nothing runs here, and the assistant is asked by the workers' dispatcher.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
import redis

from services.command.app import create_app
from services.core.settings import Settings
from services.core.wakeup import channel
from tests.integration.conftest import client as plain_client
from tests.integration.conftest import serve

# --- fixtures and helpers -----------------------------------------------------------------


def client(base_url: str, user_id: Any | None = None) -> httpx.Client:
    """The JSON form of the API: POST /chat answers 202 (its default, streamed form is
    tested in test_chat_stream.py, with a worker to write the reply)."""
    c = plain_client(base_url, user_id)
    c.headers["Accept"] = "application/json"
    return c


@pytest.fixture(scope="module")
def app_settings(settings: Settings) -> Settings:
    """The run's settings with a Redis key space of this module's own, under the run's prefix
    (nothing else enqueues there, and the run's clean-up still removes it)."""
    prefix = f"{settings.redis_prefix}cmd-{uuid.uuid4().hex[:8]}:"
    return msgspec.structs.replace(settings, redis_prefix=prefix)


@pytest.fixture(scope="module")
def base_url(app_settings: Settings) -> Iterator[str]:
    """One server for the module: every test uses fresh users, so they stay apart."""
    with serve(create_app(app_settings)) as url:
        yield url


@pytest.fixture
def rds(app_settings: Settings) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(app_settings.redis_url)
    yield r
    r.close()


def wakeups(pubsub: Any, wait: float = 5.0) -> int:
    """How many wake-ups arrived on a subscribed channel (waiting `wait` for the first)."""
    count = 0
    while pubsub.get_message(ignore_subscribe_messages=True,
                             timeout=wait if count == 0 else 0.2) is not None:
        count += 1
    return count


def register(base_url: str, **fields: Any) -> uuid.UUID:
    with client(base_url) as c:
        response = c.post("/api/v1/users", json=fields)
    assert response.status_code == 201, response.text
    return uuid.UUID(response.json()["user_id"])


def chat(base_url: str, user: uuid.UUID, **body: Any) -> httpx.Response:
    with client(base_url, user) as c:
        return c.post("/api/v1/chat", json=json.loads(json.dumps(body, default=str)))


def started(base_url: str, user: uuid.UUID, text: str = "hello") -> dict[str, Any]:
    response = chat(base_url, user, text=text)
    assert response.status_code == 202, response.text
    return dict(response.json())


def stream_events(db: psycopg.Connection, stream_id: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT version, type, data, metadata, txid::text, position FROM events"
        " WHERE stream_id = %s ORDER BY version",
        (stream_id,),
    ).fetchall()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = dict(response.json())
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# --- users --------------------------------------------------------------------------------


def test_registering_a_user_answers_201_and_appends_user_registered(
    base_url: str, db: psycopg.Connection
) -> None:
    email = f"Ada.{uuid.uuid4().hex[:8]}@Example.org"
    with client(base_url) as c:
        response = c.post(
            "/api/v1/users",
            json={"email": email, "display_name": "Ada", "avatar_url": "https://a.example/x.png"},
        )
    assert response.status_code == 201
    body = response.json()
    user_id = uuid.UUID(body["user_id"])
    assert body == {
        "user_id": str(user_id),
        "email": email,
        "display_name": "Ada",
        "avatar_url": "https://a.example/x.png",
    }
    (version, type_, data, metadata, _, _), = stream_events(db, f"user-{user_id}")
    assert (version, type_, data["email"]) == (1, "UserRegistered", email)
    assert metadata["user_id"] == str(user_id)
    stream = db.execute(
        "SELECT stream_type, owner_id FROM event_streams WHERE stream_id = %s",
        (f"user-{user_id}",),
    ).fetchone()
    assert stream == ("user", user_id)
    reserved = db.execute(
        "SELECT user_id FROM user_emails WHERE email = %s", (email.lower(),)
    ).fetchone()
    assert reserved == (user_id,)


def test_a_user_needs_no_fields(base_url: str) -> None:
    with client(base_url) as c:
        response = c.post("/api/v1/users", json={})
    assert response.status_code == 201
    assert response.json()["email"] is None


def test_an_email_registered_twice_in_any_case_is_409(base_url: str) -> None:
    email = f"dup.{uuid.uuid4().hex[:8]}@example.org"
    register(base_url, email=email)
    with client(base_url) as c:
        for variant in (email, email.upper(), email.title()):
            assert_error(c.post("/api/v1/users", json={"email": variant}), 409, "email_taken")


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email"},
        {"email": "two@@example.org"},
        {"email": "a b@example.org"},
        {"email": 42},
        {"avatar_url": "ftp://example.org/a.png"},
        {"avatar_url": "javascript:alert(1)"},
        {"avatar_url": "example.org/a.png"},
        {"display_name": "x" * 201},
        {"display_name": "nul\u0000byte"},  # PostgreSQL cannot store U+0000
        {"email": "nul\u0000@example.org"},
        {"user_id": str(uuid.uuid4())},  # clients never choose ids
        {"nickname": "unknown field"},
    ],
)
def test_invalid_user_fields_are_400(base_url: str, body: dict[str, Any]) -> None:
    with client(base_url) as c:
        assert_error(c.post("/api/v1/users", json=body), 400, "invalid_request")


def test_a_refused_user_field_is_named_in_the_detail(base_url: str) -> None:
    with client(base_url) as c:
        body = assert_error(
            c.post("/api/v1/users", json={"user_id": str(uuid.uuid4())}), 400, "invalid_request"
        )
        assert "user_id" in body["detail"]
        body = assert_error(c.post("/api/v1/users", json={"email": "x"}), 400, "invalid_request")
        assert body["detail"] == "email: is not in the expected format"


# --- authentication -----------------------------------------------------------------------


def test_a_call_without_x_user_id_is_401(base_url: str) -> None:
    with client(base_url) as c:
        assert_error(c.post("/api/v1/chat", json={"text": "hi"}), 401, "unauthenticated")


@pytest.mark.parametrize("header", ["nope", "123", "not-a-uuid-at-all-0000000000000000"])
def test_an_x_user_id_that_is_not_a_uuid_is_400(base_url: str, header: str) -> None:
    with client(base_url, header) as c:
        assert_error(c.post("/api/v1/chat", json={"text": "hi"}), 400, "invalid_user_id")


def test_an_unregistered_user_is_401(base_url: str) -> None:
    stranger = uuid.uuid4()
    assert_error(chat(base_url, stranger, text="hi"), 401, "unknown_user")
    with client(base_url, stranger) as c:
        assert_error(c.delete(f"/api/v1/sessions/{uuid.uuid4()}"), 401, "unknown_user")


# --- chat ---------------------------------------------------------------------------------


def test_a_first_message_starts_a_session_and_a_project_in_one_transaction(
    base_url: str, db: psycopg.Connection, app_settings: Settings, rds: redis.Redis
) -> None:
    user = register(base_url)
    pubsub = rds.pubsub()
    pubsub.subscribe(channel(app_settings))
    assert pubsub.get_message(timeout=5) is not None  # subscribed
    with client(base_url, user) as c:
        response = c.post(
            "/api/v1/chat",
            json={"text": "  I want to write a horror story\nwith ghosts  "},
            headers={"X-Request-ID": "req-123", "X-Correlation-ID": "corr-456"},
        )
    assert response.status_code == 202, response.text
    assert response.headers["x-request-id"] == "req-123"
    body = response.json()
    session_id, project_id = body["session_id"], body["project_id"]
    assert body["created"] is True
    assert body["stream_url"] == (f"/api/v1/sessions/{session_id}/stream?min_position="
                                  f"{body['position']}&reply_to={body['message_id']}")

    project = stream_events(db, f"project-{project_id}")
    session = stream_events(db, f"session-{session_id}")
    assert [(v, t) for v, t, *_ in project] == [(1, "ProjectCreated")]
    assert [(v, t) for v, t, *_ in session] == [(1, "SessionStarted"), (2, "MessagePosted")]
    assert project[0][2] == {
        "type": "ProjectCreated", "project_id": project_id, "owner_id": str(user)
    }  # the empty title is a default, so it is not stored
    assert session[0][2]["title"] == "I want to write a horror story"
    assert session[0][2]["project_id"] == project_id
    message = session[1][2]
    assert message["content"] == "I want to write a horror story\nwith ghosts"
    assert message["role"] == "user"
    assert message["user_id"] == str(user)
    assert message["message_id"] == body["message_id"]
    assert message["turn_id"] == body["turn_id"]
    assert {txid for *_, txid, _ in project + session} == {project[0][4]}  # one transaction
    assert body["position"] == max(position for *_, position in project + session)
    for *_, metadata, _, _ in project + session:
        assert metadata == {
            "user_id": str(user),
            "request_id": "req-123",
            "correlation_id": "corr-456",
            "causation_id": None,
        }
    owners = db.execute(
        "SELECT stream_id, stream_type, owner_id FROM event_streams WHERE stream_id = ANY(%s)",
        ([f"project-{project_id}", f"session-{session_id}"],),
    ).fetchall()
    assert sorted(owners) == [
        (f"project-{project_id}", "project", user),
        (f"session-{session_id}", "session", user),
    ]

    # The event store is the only hand-off: after the commit, one wake-up for the followers
    # (the projector, and the dispatcher that asks the assistant), and no queued job.
    assert wakeups(pubsub) == 1
    pubsub.close()
    assert not rds.keys(f"{app_settings.redis_prefix}dramatiq*")


def test_a_session_title_is_the_first_line_cut_to_60_characters(
    base_url: str, db: psycopg.Connection
) -> None:
    user = register(base_url)
    body = started(base_url, user, "x" * 80 + "\nsecond line")
    (_, _, data, *_) = stream_events(db, f"session-{body['session_id']}")[0]
    assert data["title"] == "x" * 60


def test_a_request_id_is_generated_when_none_is_sent(
    base_url: str, db: psycopg.Connection
) -> None:
    user = register(base_url)
    response = chat(base_url, user, text="hi")
    request_id = response.headers["x-request-id"]
    session = stream_events(db, f"session-{response.json()['session_id']}")
    assert session[1][3]["request_id"] == request_id
    assert session[1][3]["correlation_id"] == request_id
    assert len(request_id) == 32


def test_chat_in_an_own_project_starts_a_session_there(
    base_url: str, db: psycopg.Connection
) -> None:
    user = register(base_url)
    project_id = started(base_url, user)["project_id"]
    response = chat(base_url, user, text="another story", project_id=project_id)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["project_id"] == project_id
    assert body["created"] is True
    assert len(stream_events(db, f"project-{project_id}")) == 1  # no second project


def test_chat_in_another_users_project_is_404_like_a_missing_one(base_url: str) -> None:
    alice, bob = register(base_url), register(base_url)
    project_id = started(base_url, alice)["project_id"]
    others = assert_error(
        chat(base_url, bob, text="hi", project_id=project_id), 404, "project_not_found"
    )
    missing = assert_error(
        chat(base_url, bob, text="hi", project_id=uuid.uuid4()), 404, "project_not_found"
    )
    assert others == missing


def test_a_session_id_used_as_a_project_is_404(base_url: str) -> None:
    user = register(base_url)
    session_id = started(base_url, user)["session_id"]
    assert_error(chat(base_url, user, text="hi", project_id=session_id), 404, "project_not_found")


def test_chat_to_an_existing_session_appends_at_its_version(
    base_url: str, db: psycopg.Connection
) -> None:
    user = register(base_url)
    first = started(base_url, user)
    response = chat(base_url, user, text="what next?", session_id=first["session_id"])
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["created"] is False
    assert body["session_id"] == first["session_id"]
    assert body["project_id"] == first["project_id"]
    assert body["message_id"] != first["message_id"]
    assert body["position"] > first["position"]
    session = stream_events(db, f"session-{first['session_id']}")
    assert [(v, t) for v, t, *_ in session][-1] == (3, "MessagePosted")
    assert session[-1][2]["content"] == "what next?"


def test_chat_to_a_missing_session_is_404(base_url: str) -> None:
    user = register(base_url)
    assert_error(chat(base_url, user, text="hi", session_id=uuid.uuid4()), 404, "session_not_found")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"text": ""}, 400, "empty_text"),
        ({"text": " \n\t "}, 400, "empty_text"),
        ({"text": "nul\u0000byte"}, 400, "invalid_text"),
        ({}, 400, "invalid_request"),
        ({"text": 5}, 400, "invalid_request"),
        ({"text": None}, 400, "invalid_request"),
        ({"text": "hi", "session_id": "nope"}, 400, "invalid_request"),
        ({"text": "hi", "project_id": 12}, 400, "invalid_request"),
        ({"text": "hi", "role": "assistant"}, 400, "invalid_request"),
        ([{"text": "hi"}], 400, "invalid_request"),
    ],
)
def test_bad_chat_bodies_are_refused_with_a_reason(
    base_url: str, body: Any, status: int, code: str
) -> None:
    user = register(base_url)
    with client(base_url, user) as c:
        assert_error(c.post("/api/v1/chat", json=body), status, code)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"",
        b'{"text": ',
        b"\xff\xfe",
        b"null",
        b'"text"',
        b'{"text": "a\\ud800"}',  # a lone surrogate
        b'{"text": "hi", "zz": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # the decoder's stack
    ],
)
def test_bodies_that_are_not_a_json_object_are_400(base_url: str, content: bytes) -> None:
    user = register(base_url)
    with client(base_url, user) as c:
        response = c.post(
            "/api/v1/chat", content=content, headers={"Content-Type": "application/json"}
        )
    assert_error(response, 400, "invalid_request")


def test_a_message_over_the_character_limit_is_413(
    base_url: str, app_settings: Settings
) -> None:
    user = register(base_url)
    limit = app_settings.max_message_chars
    assert chat(base_url, user, text="y" * limit).status_code == 202
    assert_error(chat(base_url, user, text="y" * (limit + 1)), 413, "message_too_long")


def test_a_body_over_the_size_limit_is_413(base_url: str, app_settings: Settings) -> None:
    user = register(base_url)
    oversize = json.dumps({"text": "z" * (app_settings.max_body_bytes + 1)}).encode()
    with client(base_url, user) as c:
        response = c.post(
            "/api/v1/chat", content=oversize, headers={"Content-Type": "application/json"}
        )
        assert_error(response, 413, "body_too_large")
        # A chunked body (no Content-Length) is cut off as well.
        chunks = iter([oversize[i : i + 65536] for i in range(0, len(oversize), 65536)])
        response = c.post(
            "/api/v1/chat", content=chunks, headers={"Content-Type": "application/json"}
        )
        assert_error(response, 413, "body_too_large")


def test_a_message_is_accepted_when_the_wakeup_cannot_be_sent(
    serve_app: Callable[[Any], str], app_settings: Settings, db: psycopg.Connection
) -> None:
    """Stored is enough: the followers' sweep finds what a lost wake-up did not announce."""
    dead_redis = msgspec.structs.replace(app_settings, redis_url="redis://127.0.0.1:1/0")
    base_url = serve_app(create_app(dead_redis))
    user = register(base_url)  # a failed wake-up is only logged
    response = chat(base_url, user, text="are you there?")
    assert response.status_code == 202, response.text
    body = response.json()
    session = stream_events(db, f"session-{body['session_id']}")
    assert session[-1][2]["message_id"] == body["message_id"]
    assert session[-1][2]["content"] == "are you there?"
    assert {"project_id", "turn_id", "position", "created"} <= body.keys()


def test_concurrent_posts_to_one_session_are_all_stored_in_order(
    base_url: str, db: psycopg.Connection
) -> None:
    user = register(base_url)
    session_id = started(base_url, user)["session_id"]

    def post_four(worker: int) -> list[httpx.Response]:
        with client(base_url, user) as c:
            return [
                c.post("/api/v1/chat", json={"text": f"w{worker} m{i}", "session_id": session_id})
                for i in range(4)
            ]

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = [r for batch in pool.map(post_four, range(8)) for r in batch]
    assert [r.status_code for r in responses] == [202] * 32
    posted = {r.json()["message_id"] for r in responses}

    events = stream_events(db, f"session-{session_id}")
    assert [v for v, *_ in events] == list(range(1, 35))  # contiguous, nothing lost
    messages = [data for _, type_, data, *_ in events if type_ == "MessagePosted"]
    assert len(messages) == 33
    assert posted <= {m["message_id"] for m in messages}
    assert sorted(m["content"] for m in messages[1:]) == sorted(
        f"w{w} m{i}" for w in range(8) for i in range(4)
    )


def test_posts_racing_a_delete_are_stored_before_it_or_refused_after_it(
    base_url: str, db: psycopg.Connection
) -> None:
    user = register(base_url)
    session_id = started(base_url, user)["session_id"]

    def post(i: int) -> int:
        with client(base_url, user) as c:
            response = c.post("/api/v1/chat", json={"text": f"m{i}", "session_id": session_id})
            return response.status_code

    def remove() -> int:
        with client(base_url, user) as c:
            return c.delete(f"/api/v1/sessions/{session_id}").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        posts = [pool.submit(post, i) for i in range(16)]
        deletion = pool.submit(remove)
        statuses = [p.result() for p in posts]
    assert deletion.result() == 204
    assert set(statuses) <= {202, 404}
    events = stream_events(db, f"session-{session_id}")
    assert events[-1][1] == "SessionDeleted"  # nothing was appended after the deletion
    assert statuses.count(202) == len(events) - 3  # started, first message, deleted
    assert all("content" not in d for _, t, d, *_ in events if t == "MessagePosted")


# --- rename -------------------------------------------------------------------------------


def test_renaming_a_session_answers_the_trimmed_title(
    base_url: str, db: psycopg.Connection
) -> None:
    user = register(base_url)
    session_id = started(base_url, user)["session_id"]
    with client(base_url, user) as c:
        response = c.put(f"/api/v1/sessions/{session_id}/title", json={"title": "  Ghosts  "})
        assert response.status_code == 200, response.text
        assert response.json() == {"session_id": session_id, "title": "Ghosts"}
        assert c.put(
            f"/api/v1/sessions/{session_id}/title", json={"title": "t" * 200}
        ).status_code == 200
    last = stream_events(db, f"session-{session_id}")[-2:]
    assert [(t, d["title"]) for _, t, d, *_ in last] == [
        ("SessionRenamed", "Ghosts"),
        ("SessionRenamed", "t" * 200),
    ]


@pytest.mark.parametrize(
    ("title", "code"),
    [
        ("", "invalid_title"),
        ("   ", "invalid_title"),
        ("\n\t", "invalid_title"),
        ("t" * 201, "invalid_title"),
        ("nul\u0000", "invalid_text"),
    ],
)
def test_a_title_outside_1_to_200_characters_is_400(
    base_url: str, title: str, code: str
) -> None:
    user = register(base_url)
    session_id = started(base_url, user)["session_id"]
    with client(base_url, user) as c:
        response = c.put(f"/api/v1/sessions/{session_id}/title", json={"title": title})
    assert_error(response, 400, code)


@pytest.mark.parametrize(
    "body", [{}, {"title": 3}, {"title": "ok", "extra": 1}, {"name": "ok"}, ["ok"]]
)
def test_bad_rename_bodies_are_400(base_url: str, body: Any) -> None:
    user = register(base_url)
    session_id = started(base_url, user)["session_id"]
    with client(base_url, user) as c:
        response = c.put(f"/api/v1/sessions/{session_id}/title", json=body)
    assert_error(response, 400, "invalid_request")


def test_a_session_id_that_is_not_a_uuid_is_400(base_url: str) -> None:
    user = register(base_url)
    with client(base_url, user) as c:
        body = assert_error(
            c.put("/api/v1/sessions/nope/title", json={"title": "x"}), 400, "invalid_parameter"
        )
        assert "session_id" in body["detail"]
        assert_error(c.delete("/api/v1/sessions/12345"), 400, "invalid_parameter")


def test_renaming_a_missing_session_is_404(base_url: str) -> None:
    user = register(base_url)
    with client(base_url, user) as c:
        response = c.put(f"/api/v1/sessions/{uuid.uuid4()}/title", json={"title": "x"})
    assert_error(response, 404, "session_not_found")


# --- delete -------------------------------------------------------------------------------


def test_a_deleted_session_is_404_for_its_owner(base_url: str) -> None:
    user = register(base_url)
    session_id = started(base_url, user)["session_id"]
    with client(base_url, user) as c:
        response = c.delete(f"/api/v1/sessions/{session_id}")
        assert response.status_code == 204
        assert response.content == b""
        assert_error(
            c.post("/api/v1/chat", json={"text": "again", "session_id": session_id}),
            404,
            "session_not_found",
        )
        assert_error(
            c.put(f"/api/v1/sessions/{session_id}/title", json={"title": "x"}),
            404,
            "session_not_found",
        )
        assert_error(c.delete(f"/api/v1/sessions/{session_id}"), 404, "session_not_found")


def test_deleting_a_session_erases_what_was_written_from_the_event_store(
    base_url: str, db: psycopg.Connection
) -> None:
    user = register(base_url)
    secret = f"my secret plot {uuid.uuid4().hex}"
    session_id = started(base_url, user, f"{secret} begins")["session_id"]
    again = chat(base_url, user, text=f"{secret} continues", session_id=session_id)
    assert again.status_code == 202
    with client(base_url, user) as c:
        c.put(f"/api/v1/sessions/{session_id}/title", json={"title": f"{secret} title"})
        assert c.delete(f"/api/v1/sessions/{session_id}").status_code == 204

    events = stream_events(db, f"session-{session_id}")
    assert [t for _, t, *_ in events] == [
        "SessionStarted", "MessagePosted", "MessagePosted", "SessionRenamed", "SessionDeleted"
    ]
    (everything,) = db.execute(
        "SELECT string_agg(data::text, ' ') FROM events WHERE stream_id = %s",
        (f"session-{session_id}",),
    ).fetchone()  # type: ignore[misc]
    assert secret not in everything
    assert all(d.get("redacted") for _, _, d, *_ in events[:-1])
    deleted = db.execute(
        "SELECT deleted FROM event_streams WHERE stream_id = %s", (f"session-{session_id}",)
    ).fetchone()
    assert deleted == (True,)


def test_deleting_a_missing_session_is_404(base_url: str) -> None:
    user = register(base_url)
    with client(base_url, user) as c:
        assert_error(c.delete(f"/api/v1/sessions/{uuid.uuid4()}"), 404, "session_not_found")


# --- isolation ----------------------------------------------------------------------------


def test_another_user_cannot_touch_a_session_and_learns_nothing(
    base_url: str, db: psycopg.Connection
) -> None:
    alice, bob = register(base_url), register(base_url)
    mine = started(base_url, alice)
    session_id = mine["session_id"]
    missing = uuid.uuid4()
    with client(base_url, bob) as c:
        pairs = [
            (
                c.put(f"/api/v1/sessions/{session_id}/title", json={"title": "mine now"}),
                c.put(f"/api/v1/sessions/{missing}/title", json={"title": "mine now"}),
            ),
            (c.delete(f"/api/v1/sessions/{session_id}"), c.delete(f"/api/v1/sessions/{missing}")),
            (
                c.post("/api/v1/chat", json={"text": "hi", "session_id": session_id}),
                c.post("/api/v1/chat", json={"text": "hi", "session_id": str(missing)}),
            ),
            (
                c.post("/api/v1/chat", json={"text": "hi", "project_id": mine["project_id"]}),
                c.post("/api/v1/chat", json={"text": "hi", "project_id": str(missing)}),
            ),
        ]
    for others, absent in pairs:
        names_a_project = b"project_id" in others.request.content
        assert_error(others, 404, "project_not_found" if names_a_project else "session_not_found")
        assert others.json() == absent.json()
    assert len(stream_events(db, f"session-{session_id}")) == 2  # untouched


# --- errors and documentation -------------------------------------------------------------


def test_unknown_routes_and_methods_answer_in_the_error_format(base_url: str) -> None:
    with client(base_url) as c:
        assert_error(c.get("/api/v1/nothing-here"), 404, "not_found")
        assert_error(c.get("/api/v1/chat"), 405, "method_not_allowed")


def test_the_openapi_document_lists_every_route_with_its_operation_id(base_url: str) -> None:
    with client(base_url) as c:
        schema = c.get("/schema/openapi.json").json()
    operations = {
        (path, method): op.get("operationId")
        for path, item in schema["paths"].items()
        for method, op in item.items()
    }
    assert all(operations.values()), operations
    assert len(set(operations.values())) == len(operations)  # unique, as clients generate names
    assert operations.items() >= {
        ("/api/v1/users", "post"): "createUser",
        ("/api/v1/chat", "post"): "postChat",
        ("/api/v1/sessions/{session_id}/title", "put"): "renameSession",
        ("/api/v1/sessions/{session_id}", "delete"): "deleteSession",
        ("/api/v1/sessions/{session_id}/archive", "post"): "archiveSession",
        ("/api/v1/sessions/{session_id}/unarchive", "post"): "unarchiveSession",
        ("/api/v1/sessions/{session_id}/move", "post"): "moveSession",
        ("/api/v1/projects", "post"): "createProject",
        ("/api/v1/projects/{project_id}", "put"): "renameProject",
    }.items()
