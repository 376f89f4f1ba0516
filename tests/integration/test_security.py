"""Security, after the OWASP API Security Top 10 where it applies: object-level
authorization on every route (API1), authentication and the signed-token mode (API2),
mass assignment (API3), resource limits (API4), and injection-looking or odd Unicode input
that must come back byte-exact or be refused (API8/API10 hygiene).

Real HTTP on loopback: both services, a gateway in front of them, and a worker projecting,
once with the signed-token mode off, once with it on, and once with tokens but no gateway
secret (the services' checks alone, as behind nginx in compose). docs/security.md lists
what is covered and why.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import msgspec
import pytest

from services.command.app import create_app as command_app
from services.core.settings import Settings
from services.gateway.app import create_app as gateway_app
from services.http.auth import PROOF_HEADER, gateway_proof, proof_is_valid
from services.query.app import create_app as query_app
from tests.integration.conftest import serve, wait_until
from workers.main import running_worker

JWT_SECRET = "test-jwt-key-" + "k" * 60  # shorter HMAC keys draw warnings (HS512 wants 64 bytes)
GATEWAY_SECRET = "test-gateway-secret-" + "s" * 40
TIMEOUT = 15.0


@dataclass(frozen=True)
class System:
    command: str
    query: str
    gateway: str


@pytest.fixture(scope="module")
def sec_settings(settings: Settings) -> Settings:
    prefix = f"{settings.redis_prefix}sec-{uuid.uuid4().hex[:8]}:"
    return msgspec.structs.replace(settings, redis_prefix=prefix, worker_metrics_port=0)


@pytest.fixture(scope="module")
def worker(sec_settings: Settings) -> Iterator[None]:
    # projects every event of the run's database, whichever system wrote it
    with running_worker(sec_settings, threads=2):
        yield


def _system(stack: ExitStack, settings: Settings) -> System:
    command = stack.enter_context(serve(command_app(settings)))
    query = stack.enter_context(serve(query_app(settings)))
    gateway = stack.enter_context(serve(gateway_app(
        msgspec.structs.replace(settings, command_url=command, query_url=query))))
    return System(command, query, gateway)


@pytest.fixture(scope="module")
def plain(sec_settings: Settings, worker: None) -> Iterator[System]:
    """Signed-token mode off: X-User-ID is taken as the gateway (or a test) sets it."""
    with ExitStack() as stack:
        yield _system(stack, sec_settings)


@pytest.fixture(scope="module")
def signed(sec_settings: Settings, worker: None) -> Iterator[System]:
    """Signed-token mode on: the services check tokens and the gateway's proofs."""
    with ExitStack() as stack:
        yield _system(stack, msgspec.structs.replace(
            sec_settings, auth_jwt_secret=JWT_SECRET, gateway_secret=GATEWAY_SECRET))


@pytest.fixture(scope="module")
def tokens_only(sec_settings: Settings, worker: None) -> Iterator[System]:
    """Tokens, no gateway secret: what the services check whatever fronts them (nginx in
    compose cannot sign), reached straight."""
    with ExitStack() as stack:
        yield _system(stack, msgspec.structs.replace(sec_settings, auth_jwt_secret=JWT_SECRET))


def register(base: str, **fields: Any) -> str:
    response = httpx.post(f"{base}/api/v1/users", json=fields or {"display_name": "T"},
                          timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return str(response.json()["user_id"])


def chat(base: str, user: str, text: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{base}/api/v1/chat", json={"text": text, **body},
                          headers={"X-User-ID": user, "Accept": "application/json"},
                          timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    return dict(response.json())


def read(base: str, user: str, path: str, position: int | None = None,
         **params: Any) -> httpx.Response:
    headers = {"X-User-ID": user}
    if position is not None:
        headers["X-Min-Position"] = str(position)
    return httpx.get(f"{base}{path}", headers=headers, params=params, timeout=TIMEOUT)


def token(sub: Any, *, exp: float | None = 300, key: str = JWT_SECRET,
          algorithm: str = "HS256", **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": str(sub), **claims}
    if exp is not None:
        payload["exp"] = int(time.time() + exp)
    return jwt.encode(payload, key, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# --- API1: object-level authorization on every route --------------------------------------

# Routes that name no object of a user in their path, each with the check that covers it.
# A route in neither this table nor the path-parameter sweep below fails the test: a new
# route must say how it is protected.
NO_OBJECT_IN_PATH = {
    ("POST", "/api/v1/users"): "signup: creates a new user, reads nobody's data",
    ("POST", "/api/v1/chat"): "ids in the body: test_ids_in_a_body_are_checked_like_paths",
    ("GET", "/api/v1/sessions"): "the caller's own list: checked below",
    ("GET", "/api/v1/users/me"): "the caller's own profile: checked below",
    ("PATCH", "/api/v1/users/me"): "the caller's own profile (test_accounts.py)",
    ("DELETE", "/api/v1/users/me"): "the caller's own account (test_accounts.py)",
    ("GET", "/api/v1/projects"): "the caller's own projects (tests/integration/test_organize.py)",
    ("POST", "/api/v1/projects"): "creates a project of the caller's own",
    ("GET", "/healthz"): "public probe",
    ("GET", "/readyz"): "public probe",
    ("GET", "/metrics"): "public to the scraper, no user data",
    # Legacy clients have no user: a project id is the capability (see docs/security.md).
    ("POST", "/chat"): "legacy, keyed by project id: a known exception",
    # Credentials (tests/integration/test_accounts.py): each acts on the caller's own.
    ("POST", "/api/v1/auth/signin"): "signs in: checks the password, reads nobody's data",
    ("POST", "/api/v1/auth/signout"): "ends the caller's own session",
    ("POST", "/api/v1/auth/signout-everywhere"): "ends the caller's own sessions",
    ("POST", "/api/v1/auth/password"): "the caller's own password",
    ("POST", "/api/v1/auth/tokens"): "makes a token for the caller",
    ("GET", "/api/v1/auth/oidc"): "public: whether OpenID Connect is offered",
    ("GET", "/api/v1/auth/oidc/start"): "signs in: redirects to the provider (test_oidc.py)",
    ("GET", "/api/v1/auth/oidc/callback"): "signs in: the provider's answer (test_oidc.py)",
}
# Routes whose path names another kind of object, each with the test of its own check.
OWN_OBJECT_CHECKS = {
    ("DELETE", "/api/v1/auth/tokens/{token_id}"):
        "test_accounts.py::test_another_users_api_token_is_404",
}


def operations(system: System) -> list[tuple[str, str, str]]:
    """(service base URL, method, path template) of every route both services document."""
    found = []
    for base in (system.command, system.query):
        document = httpx.get(f"{base}/schema/openapi.json", timeout=TIMEOUT).json()
        for path, item in document["paths"].items():
            for method in item:
                if method in ("get", "put", "post", "delete", "patch"):
                    found.append((base, method.upper(), path))
    return found


@pytest.fixture(scope="module")
def owned(plain: System) -> dict[str, Any]:
    """A user with a session (projected, replied to), and what it looks like to its owner."""
    owner = register(plain.command, display_name="Owner")
    accepted = chat(plain.command, owner, "My secret plot")
    session_id = accepted["session_id"]

    def replied() -> Any:
        page = read(plain.query, owner, f"/api/v1/sessions/{session_id}/messages",
                    accepted["position"]).json()
        return page if [m["role"] for m in page["messages"]] == ["user", "assistant"] else None

    return {"owner": owner, "accepted": accepted, "messages": wait_until(replied, timeout=30)}


def test_another_users_ids_answer_404_on_every_route_and_change_nothing(
    plain: System, owned: dict[str, Any]
) -> None:
    intruder = register(plain.command, display_name="Intruder")
    intruder_project = httpx.post(f"{plain.command}/api/v1/projects", json={"title": "mine"},
                                  headers={"X-User-ID": intruder},
                                  timeout=TIMEOUT).json()["project_id"]
    session_id = owned["accepted"]["session_id"]
    missing = str(uuid.uuid4())
    swept, unlisted = [], []
    for base, method, path in operations(plain):
        if "{" not in path:
            if (method, path) not in NO_OBJECT_IN_PATH:
                unlisted.append(f"{method} {path}")
            continue
        if (method, path) in OWN_OBJECT_CHECKS:
            continue
        assert path.count("{") == 1 and ("{session_id}" in path or "{project_id}" in path), (
            f"{method} {path}: a new kind of path parameter needs its own BOLA check")
        body: dict[str, str] | None = {"title": "taken over"} if method == "PUT" else None
        if path.endswith("/move"):  # into the intruder's own project: still the session 404
            body = {"project_id": intruder_project}
        owned_id = session_id if "{session_id}" in path else owned["accepted"]["project_id"]
        answers = []
        for target in (owned_id, missing):
            response = httpx.request(method, base + path.format(session_id=target,
                                                                project_id=target), json=body,
                                     headers={"X-User-ID": intruder}, timeout=TIMEOUT)
            answers.append((response.status_code, response.json()["error"]))
        # another user's session is exactly a session that does not exist
        assert answers[0][0] == 404 and answers[0] == answers[1], (method, path, answers)
        swept.append(f"{method} {path}")
    assert not unlisted, f"routes with no BOLA check: {unlisted}"
    assert len(swept) >= 5, swept  # title, delete, stop, messages, stream

    owner = owned["owner"]
    page = read(plain.query, owner, f"/api/v1/sessions/{session_id}/messages").json()
    assert page["messages"] == owned["messages"]["messages"]
    listed = read(plain.query, owner, "/api/v1/sessions").json()["sessions"]
    assert [s["title"] for s in listed if s["session_id"] == session_id] == ["My secret plot"]
    assert read(plain.query, intruder, "/api/v1/sessions").json()["sessions"] == []
    me = read(plain.query, intruder, "/api/v1/users/me", owned["accepted"]["position"])
    assert me.status_code == 200 and me.json()["user_id"] == intruder


def test_ids_in_a_body_are_checked_like_paths(plain: System, owned: dict[str, Any]) -> None:
    intruder = register(plain.command)
    for body in ({"session_id": owned["accepted"]["session_id"]},
                 {"project_id": owned["accepted"]["project_id"]}):
        response = httpx.post(f"{plain.gateway}/api/v1/chat", json={"text": "mine", **body},
                              headers={"X-User-ID": intruder, "Accept": "application/json"},
                              timeout=TIMEOUT)
        assert response.status_code == 404, response.text


def test_a_missing_malformed_or_unknown_caller_is_refused_everywhere(plain: System) -> None:
    for base, method, path in operations(plain):
        if (method, path) in NO_OBJECT_IN_PATH and path != "/api/v1/sessions" \
                and path != "/api/v1/users/me" and path != "/api/v1/chat":
            continue
        url = base + path.format(session_id=uuid.uuid4(), token_id=uuid.uuid4(),
                                 project_id=uuid.uuid4())
        for headers, status in (({}, 401), ({"X-User-ID": "not-a-uuid"}, 400),
                                ({"X-User-ID": "x" * 10_000}, 400),
                                ({"X-User-ID": str(uuid.uuid4())}, 401)):
            body = ({"text": "hi"} if path.endswith("/chat") else
                    {"display_name": "t"} if path.endswith("/me") else {"title": "t"})
            response = httpx.request(method, url, headers=headers, timeout=TIMEOUT,
                                     json=body if method in ("POST", "PUT", "PATCH") else None)
            assert response.status_code == status, (method, path, headers, response.text)


# --- API3: mass assignment ----------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/users", {"display_name": "M", "user_id": str(uuid.uuid4())}),
    ("/api/v1/users", {"display_name": "M", "role": "admin"}),
    ("/api/v1/users", {"display_name": "M", "is_active": False}),
    ("/api/v1/chat", {"text": "hi", "message_id": str(uuid.uuid4())}),
    ("/api/v1/chat", {"text": "hi", "user_id": str(uuid.uuid4())}),
    ("/api/v1/chat", {"text": "hi", "role": "assistant"}),
    ("/api/v1/chat", {"text": "hi", "turn_id": str(uuid.uuid4())}),
    ("/api/v1/chat", {"text": "hi", "is_active": False}),
])
def test_fields_a_client_may_not_set_are_refused(plain: System, path: str,
                                                 body: dict[str, Any]) -> None:
    caller = register(plain.command)
    response = httpx.post(f"{plain.gateway}{path}", json=body, timeout=TIMEOUT,
                          headers={"X-User-ID": caller, "Accept": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert "unknown field" in response.json()["detail"]


def test_a_rename_cannot_move_a_session_to_another_user(
    plain: System, owned: dict[str, Any]
) -> None:
    session_id = owned["accepted"]["session_id"]
    response = httpx.put(f"{plain.command}/api/v1/sessions/{session_id}/title",
                         json={"title": "x", "user_id": str(uuid.uuid4())},
                         headers={"X-User-ID": owned["owner"]}, timeout=TIMEOUT)
    assert response.status_code == 400 and "unknown field" in response.json()["detail"]


# --- API4: resource limits ----------------------------------------------------------------


def test_oversize_bodies_are_413_and_the_servers_stay_up(
    plain: System, sec_settings: Settings
) -> None:
    caller = register(plain.command)
    huge = b'{"text": "' + b"a" * (sec_settings.max_body_bytes + 10) + b'"}'
    for base in (plain.command, plain.gateway):
        response = httpx.post(f"{base}/api/v1/chat", content=huge, timeout=TIMEOUT,
                              headers={"X-User-ID": caller, "Content-Type": "application/json"})
        assert response.status_code == 413, response.text
    deep = b"[" * 100_000 + b"]" * 100_000
    response = httpx.post(f"{plain.command}/api/v1/users", content=deep, timeout=TIMEOUT,
                          headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500
    for base in (plain.command, plain.query, plain.gateway):
        assert httpx.get(f"{base}/healthz", timeout=TIMEOUT).status_code == 200


def test_very_long_headers_are_431_whatever_fronts_the_services(plain: System) -> None:
    caller = register(plain.command)
    many = {"X-User-ID": caller, **{f"X-H{i}": "b" * 100 for i in range(500)}}
    # the services cap headers themselves: the same answer straight or through the gateway
    for base, method, path in ((plain.gateway, "GET", "/api/v1/users/me"),
                               (plain.gateway, "POST", "/api/v1/chat"),
                               (plain.command, "POST", "/api/v1/chat"),
                               (plain.query, "GET", "/api/v1/users/me")):
        for headers in ({"X-User-ID": caller, "X-Padding": "a" * 40_000},
                        {"X-User-ID": caller, "X-Padding": "a" * 1_000_000}, many):
            response = httpx.request(method, base + path, headers=headers, timeout=TIMEOUT,
                                     json={"text": "hi"} if method == "POST" else None)
            assert response.status_code == 431, (base, response.text)
            assert response.json()["error"] == "headers_too_large"
    assert httpx.get(f"{plain.gateway}/readyz", timeout=TIMEOUT).status_code == 200


# --- injection-looking and odd Unicode input ----------------------------------------------

ROUND_TRIP = [
    "'; DROP TABLE sessions; --",
    "' OR '1'='1' /* */ UNION SELECT * FROM users --",
    "$$; SELECT pg_sleep(5); $$ \\x00 %s %(user)s {0} ${jndi:ldap://x}",
    "😀👩‍👩‍👧‍👦 🧛🏽‍♀️ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𠜎",  # noqa: RUF001 (4-byte code points, ZWJ)
    "\u202eevil.exe\u202c \u200fשלום\u200e مرحبا",  # noqa: RUF001 (bidi, RTL)
    "Z\u0351\u0364\u0300a\u0302\u0303l\u030cg\u0361o\u0489 e\u0301 \u0065\u0301\u0308",
    "zero\u200bwidth\u2060joiner\ufeffbom\u00adsoft",
    "line\u2028sep\u2029para\r\ncrlf\ttab",
]


def test_odd_text_is_stored_and_returned_byte_exact(plain: System) -> None:
    caller = register(plain.gateway, display_name=ROUND_TRIP[3])
    sessions = {}
    for text in ROUND_TRIP:
        accepted = chat(plain.gateway, caller, text)
        sessions[accepted["session_id"]] = (text, accepted)
        renamed = httpx.put(f"{plain.gateway}/api/v1/sessions/{accepted['session_id']}/title",
                            json={"title": text[:200]}, headers={"X-User-ID": caller},
                            timeout=TIMEOUT)
        assert renamed.status_code == 200 and renamed.json()["title"] == text[:200].strip()
    position = max(a["position"] for _, a in sessions.values())
    for session_id, (text, _) in sessions.items():
        page = read(plain.gateway, caller, f"/api/v1/sessions/{session_id}/messages",
                    position).json()
        stored = page["messages"][0]
        assert stored["role"] == "user"
        assert stored["content"].encode() == text.strip().encode()

    def titles() -> dict[str, str] | None:
        listed = read(plain.gateway, caller, "/api/v1/sessions", limit=100).json()
        found = {s["session_id"]: s["title"] for s in listed["sessions"]}
        expected = {sid: t[:200].strip() for sid, (t, _) in sessions.items()}
        return found if found == expected else None

    assert wait_until(titles, timeout=15)
    me = read(plain.gateway, caller, "/api/v1/users/me").json()
    assert me["display_name"].encode() == ROUND_TRIP[3].encode()


@pytest.mark.parametrize("raw", [
    b'{"text": "nul \\u0000 inside"}',
    b'{"text": "lone high \\ud800 surrogate"}',
    b'{"text": "lone low \\udfff surrogate"}',
    b'{"text": "invalid utf-8 \xff\xfe here"}',
    b'{"text": "overlong \xc0\xaf"}',
])
def test_unstorable_text_is_refused_with_400(plain: System, raw: bytes) -> None:
    caller = register(plain.command)
    for base in (plain.command, plain.gateway):
        response = httpx.post(f"{base}/api/v1/chat", content=raw, timeout=TIMEOUT,
                              headers={"X-User-ID": caller, "Accept": "application/json",
                                       "Content-Type": "application/json"})
        assert response.status_code == 400, response.text


def test_a_body_that_is_not_utf8_is_400_not_500(plain: System) -> None:
    # found by this suite: Litestar's JSON decoding raised UnicodeDecodeError, answered 500
    response = httpx.post(f"{plain.command}/api/v1/users", content=b'{"display_name": "\xff"}',
                          headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request",
                               "detail": "the body is not valid UTF-8"}


# --- API2: signed-token mode --------------------------------------------------------------


def test_proofs_are_bound_to_method_path_user_and_time() -> None:
    user = str(uuid.uuid4())
    proof = gateway_proof(GATEWAY_SECRET, "GET", "/api/v1/users/me", user)
    assert proof_is_valid(GATEWAY_SECRET, "GET", "/api/v1/users/me", user, proof)
    assert not proof_is_valid(GATEWAY_SECRET, "GET", "/api/v1/sessions", user, proof)
    assert not proof_is_valid(GATEWAY_SECRET, "DELETE", "/api/v1/users/me", user, proof)
    assert not proof_is_valid(GATEWAY_SECRET, "GET", "/api/v1/users/me", str(uuid.uuid4()),
                              proof)
    assert not proof_is_valid("another secret", "GET", "/api/v1/users/me", user, proof)
    old = gateway_proof(GATEWAY_SECRET, "GET", "/", user, at=int(time.time()) - 3600)
    assert not proof_is_valid(GATEWAY_SECRET, "GET", "/", user, old)
    for junk in ("", ".", "abc.def", "9" * 40 + ".x", GATEWAY_SECRET):
        assert not proof_is_valid(GATEWAY_SECRET, "GET", "/", user, junk)


def test_services_refuse_requests_that_bypass_the_gateway(signed: System) -> None:
    user = register(signed.gateway)  # signup needs no token
    # straight to the services: every documented route but the probes and docs is 401
    for base, method, path in operations(signed):
        url = base + path.format(session_id=uuid.uuid4(), token_id=uuid.uuid4(),
                                 project_id=uuid.uuid4())
        response = httpx.request(method, url, headers={"X-User-ID": user}, timeout=TIMEOUT,
                                 json={} if method in ("POST", "PUT") else None)
        if path in ("/healthz", "/readyz", "/metrics"):
            assert response.status_code == 200, (method, path)
        else:
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"] == "gateway_proof_required"
    # a proof made for one user or path does not open another
    proof = gateway_proof(GATEWAY_SECRET, "GET", "/api/v1/users/me", user)
    other = str(uuid.uuid4())
    for path, caller in (("/api/v1/sessions", user), ("/api/v1/users/me", other)):
        response = httpx.get(f"{signed.query}{path}", timeout=TIMEOUT,
                             headers={"X-User-ID": caller, PROOF_HEADER: proof})
        assert response.status_code == 401
    forged = gateway_proof("a guessed secret", "GET", "/api/v1/users/me", user)
    response = httpx.get(f"{signed.query}/api/v1/users/me", timeout=TIMEOUT,
                         headers={"X-User-ID": user, PROOF_HEADER: forged})
    assert response.status_code == 401
    assert httpx.get(f"{signed.query}/schema/openapi.json", timeout=TIMEOUT).status_code == 200


def test_the_caller_is_the_tokens_subject_whatever_x_user_id_says(signed: System) -> None:
    alice, mallory = register(signed.gateway), register(signed.gateway)
    headers = {**bearer(token(mallory)), "X-User-ID": alice, "Accept": "application/json"}
    accepted = httpx.post(f"{signed.gateway}/api/v1/chat", json={"text": "whose is this?"},
                          headers=headers, timeout=TIMEOUT)
    assert accepted.status_code == 202, accepted.text
    session_id = accepted.json()["session_id"]
    position = accepted.json()["position"]
    me = httpx.get(f"{signed.gateway}/api/v1/users/me", timeout=TIMEOUT,
                   headers={**headers, "X-Min-Position": str(position)})
    assert me.status_code == 200 and me.json()["user_id"] == mallory
    listed = httpx.get(f"{signed.gateway}/api/v1/sessions", headers=headers, timeout=TIMEOUT)
    assert [s["session_id"] for s in listed.json()["sessions"]] == [session_id]
    as_alice = {**bearer(token(alice)), "X-Min-Position": str(position)}
    alices = httpx.get(f"{signed.gateway}/api/v1/sessions", headers=as_alice, timeout=TIMEOUT)
    assert alices.status_code == 200 and alices.json()["sessions"] == []
    # a client-sent proof is dropped, not trusted
    spoofed = {**as_alice, PROOF_HEADER: gateway_proof(GATEWAY_SECRET, "GET", "/x", mallory)}
    assert httpx.get(f"{signed.gateway}/api/v1/users/me", headers=spoofed,
                     timeout=TIMEOUT).json()["user_id"] == alice


@pytest.mark.parametrize("case", [
    "missing", "not bearer", "empty", "garbage", "wrong key", "expired", "no exp",
    "no sub", "sub not a uuid", "HS512", "alg none",
])
@pytest.mark.parametrize("front", ["through the gateway", "straight to the services"])
def test_bad_tokens_are_401(signed: System, tokens_only: System, case: str, front: str) -> None:
    user = uuid.uuid4()
    header = {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {token(user)}"},
        "empty": {"Authorization": "Bearer"},
        "garbage": bearer("a.b.c"),
        "wrong key": bearer(token(user, key="another-key-" + "z" * 40)),
        "expired": bearer(token(user, exp=-10)),
        "no exp": bearer(token(user, exp=None)),
        "no sub": bearer(jwt.encode({"exp": int(time.time()) + 60}, JWT_SECRET,
                                    algorithm="HS256")),
        "sub not a uuid": bearer(token("alice")),
        "HS512": bearer(token(user, algorithm="HS512")),
        "alg none": bearer(jwt.encode({"sub": str(user), "exp": int(time.time()) + 60}, None,
                                      algorithm="none")),
    }[case]
    for method, path in (("GET", "/api/v1/users/me"), ("GET", "/api/v1/sessions"),
                         ("POST", "/api/v1/chat"), ("DELETE", f"/api/v1/sessions/{user}")):
        if front == "through the gateway":
            base = signed.gateway
        else:
            base = tokens_only.query if method == "GET" else tokens_only.command
        response = httpx.request(method, f"{base}{path}", timeout=TIMEOUT,
                                 headers={**header, "X-User-ID": str(user)},
                                 json={"text": "hi"} if method == "POST" else None)
        assert response.status_code == 401, (case, path, response.text)
        expected = {"missing": "token_required", "not bearer": "token_required",
                    "empty": "token_required", "expired": "token_expired"}.get(case,
                                                                                "invalid_token")
        assert response.json()["error"] == expected, (case, path, response.text)


def test_without_a_gateway_the_services_take_the_user_from_the_token(
    tokens_only: System,
) -> None:
    alice = register(tokens_only.command)  # signup needs no token
    mallory = register(tokens_only.command)
    headers = {**bearer(token(mallory)), "X-User-ID": alice, "Accept": "application/json"}
    accepted = httpx.post(f"{tokens_only.command}/api/v1/chat", json={"text": "whose?"},
                          headers=headers, timeout=TIMEOUT)
    assert accepted.status_code == 202, accepted.text
    me = httpx.get(f"{tokens_only.query}/api/v1/users/me", timeout=TIMEOUT,
                   headers={**headers, "X-Min-Position": str(accepted.json()["position"])})
    assert me.status_code == 200 and me.json()["user_id"] == mallory
    # X-User-ID alone opens nothing, on either service
    for base, method, path in (
        (tokens_only.query, "GET", "/api/v1/sessions"),
        (tokens_only.command, "POST", "/api/v1/chat"),
        (tokens_only.command, "DELETE", f"/api/v1/sessions/{accepted.json()['session_id']}"),
    ):
        response = httpx.request(method, base + path, headers={"X-User-ID": mallory},
                                 json={"text": "hi"} if method == "POST" else None,
                                 timeout=TIMEOUT)
        assert response.status_code == 401 and response.json()["error"] == "token_required"
    for base in (tokens_only.command, tokens_only.query):
        for path in ("/healthz", "/readyz", "/schema/openapi.json"):
            assert httpx.get(base + path, timeout=TIMEOUT).status_code == 200, (base, path)


def test_public_routes_need_no_token_in_signed_mode(signed: System) -> None:
    for path in ("/healthz", "/readyz", "/schema/openapi.json", "/"):
        assert httpx.get(f"{signed.gateway}{path}", timeout=TIMEOUT).status_code == 200, path


def test_with_the_mode_off_behaviour_is_unchanged(plain: System) -> None:
    user = register(plain.gateway)
    for base in (plain.gateway, plain.query):  # through the gateway and straight
        me = httpx.get(f"{base}/api/v1/users/me", timeout=TIMEOUT,
                       headers={"X-User-ID": user, "Authorization": "Bearer nonsense"})
        if me.status_code == 401:  # not projected yet
            me = wait_until(lambda b=base: (r := read(b, user, "/api/v1/users/me")).status_code
                            == 200 and r, timeout=10)
        assert me.json()["user_id"] == user
