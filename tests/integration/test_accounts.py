"""Local accounts, black-box over real HTTP: a gateway, both services and a worker.

Sign-up with a password, sign-in (cookie + CSRF), sign-out and sign-out-everywhere (revoked
at once), password change, API tokens, throttling, and the X-User-ID rule: trusted from a
client only on a loopback `make run`, refused anywhere else.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import msgspec
import pytest

from services.core.settings import Settings
from tests.integration.conftest import wait_until
from tests.integration.test_security import System, _system, operations

TIMEOUT = 15.0
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def acc_settings(settings: Settings) -> Settings:
    prefix = f"{settings.redis_prefix}acc-{uuid.uuid4().hex[:8]}:"
    return msgspec.structs.replace(settings, redis_prefix=prefix, worker_metrics_port=0)


@pytest.fixture(scope="module")
def worker(acc_settings: Settings) -> Iterator[None]:
    from workers.main import running_worker

    with running_worker(acc_settings, threads=2):
        yield


@pytest.fixture(scope="module")
def local(acc_settings: Settings, worker: None) -> Iterator[System]:
    """`make run` on loopback: X-User-ID from a client is trusted, credentials work too."""
    with ExitStack() as stack:
        yield _system(stack, acc_settings)


@pytest.fixture(scope="module")
def exposed(acc_settings: Settings, worker: None) -> Iterator[System]:
    """Bound beyond loopback (HOST=0.0.0.0, as in compose): only credentials name a user."""
    with ExitStack() as stack:
        yield _system(stack, msgspec.structs.replace(acc_settings, host="0.0.0.0"))


def sign_up(base: str, email: str | None = None, password: str = PASSWORD) -> str:
    email = email or f"{uuid.uuid4().hex[:10]}@example.com"
    response = httpx.post(f"{base}/api/v1/users", timeout=TIMEOUT,
                          json={"email": email, "password": password, "display_name": "A"})
    assert response.status_code == 201, response.text
    assert "password" not in response.json()
    return email


def sign_in(base: str, email: str, password: str = PASSWORD,
            address: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": address} if address else {}
    return httpx.post(f"{base}/api/v1/auth/signin", json={"email": email, "password": password},
                      headers=headers, timeout=TIMEOUT)


class Browser:
    """What a browser sends after signing in: both cookies, and the CSRF header on writes."""

    def __init__(self, base: str, signed_in: httpx.Response) -> None:
        assert signed_in.status_code == 200, signed_in.text
        self.base = base
        self.session = signed_in.cookies["chat_session"]
        self.csrf = signed_in.cookies["chat_csrf"]
        assert signed_in.json()["csrf_token"] == self.csrf
        self.user_id = signed_in.json()["user_id"]
        set_cookie = [v for k, v in signed_in.headers.multi_items() if k == "set-cookie"]
        session_cookie = next(c for c in set_cookie if c.startswith("chat_session="))
        assert "httponly" in session_cookie.lower() and "samesite=lax" in session_cookie.lower()

    def request(self, method: str, path: str, csrf: bool = True, **kwargs: Any) -> httpx.Response:
        headers = {"Cookie": f"chat_session={self.session}; chat_csrf={self.csrf}",
                   **kwargs.pop("headers", {})}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        return httpx.request(method, self.base + path, headers=headers, timeout=TIMEOUT,
                             **kwargs)


def post_chat(browser: Browser, csrf: bool = True) -> httpx.Response:
    return browser.request("POST", "/api/v1/chat", csrf=csrf, json={"text": "Once upon"},
                           headers={"Accept": "application/json"})


def test_sign_up_sign_in_and_write_with_the_cookie(local: System) -> None:
    email = sign_up(local.gateway)
    browser = Browser(local.gateway, sign_in(local.gateway, email.upper()))
    assert post_chat(browser).status_code == 202
    me = browser.request("GET", "/api/v1/users/me")
    assert me.status_code == 200 and me.json()["email"] == email


def test_the_profile_is_changed_with_patch_me(exposed: System) -> None:
    browser = Browser(exposed.gateway, sign_in(exposed.gateway, sign_up(exposed.gateway)))
    changed = browser.request("PATCH", "/api/v1/users/me", json={
        "display_name": "Ada", "avatar_url": "https://example.com/ada.png"})
    assert changed.status_code == 200, changed.text
    me = browser.request("GET", "/api/v1/users/me",
                         headers={"X-Min-Position": str(changed.json()["position"])}).json()
    assert (me["display_name"], me["avatar_url"]) == ("Ada", "https://example.com/ada.png")
    assert browser.request("PATCH", "/api/v1/users/me", csrf=False,
                           json={"display_name": "Eve"}).status_code == 403
    assert browser.request("PATCH", "/api/v1/users/me",
                           json={"user_id": str(uuid.uuid4())}).status_code == 400


def test_a_cookie_write_without_the_csrf_token_is_403(exposed: System) -> None:
    browser = Browser(exposed.gateway, sign_in(exposed.gateway, sign_up(exposed.gateway)))
    response = post_chat(browser, csrf=False)
    assert response.status_code == 403 and response.json()["error"] == "csrf_failed"
    wrong = browser.request("POST", "/api/v1/chat", csrf=False, json={"text": "x"},
                            headers={"X-CSRF-Token": "guess"})
    assert wrong.status_code == 403
    assert post_chat(browser).status_code == 202


def test_unknown_email_and_wrong_password_answer_the_same(exposed: System) -> None:
    email = sign_up(exposed.gateway)
    unknown = sign_in(exposed.gateway, f"nobody-{uuid.uuid4().hex}@example.com")
    wrong = sign_in(exposed.gateway, email, "wrong password here")
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()
    assert "set-cookie" not in wrong.headers


@pytest.mark.parametrize("password", ["short", "password123", "iloveyou1", "x" * 300])
def test_weak_passwords_are_refused(local: System, password: str) -> None:
    response = httpx.post(f"{local.command}/api/v1/users", timeout=TIMEOUT, json={
        "email": f"{uuid.uuid4().hex[:10]}@example.com", "password": password})
    assert response.status_code == 422 and response.json()["error"] == "weak_password"


def test_sign_out_and_sign_out_everywhere_revoke_at_once(exposed: System) -> None:
    email = sign_up(exposed.gateway)
    first = Browser(exposed.gateway, sign_in(exposed.gateway, email))
    second = Browser(exposed.gateway, sign_in(exposed.gateway, email))
    third = Browser(exposed.gateway, sign_in(exposed.gateway, email))
    assert first.request("POST", "/api/v1/auth/signout").status_code == 204
    for method, path in (("GET", "/api/v1/sessions"), ("POST", "/api/v1/chat")):
        refused = first.request(method, path, json={"text": "x"})
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_credential"
    assert second.request("GET", "/api/v1/sessions").status_code == 200
    assert second.request("POST", "/api/v1/auth/signout-everywhere").status_code == 204
    for browser in (second, third):
        assert browser.request("GET", "/api/v1/sessions").status_code == 401
        assert post_chat(browser).status_code == 401


def test_changing_the_password_ends_other_sessions(exposed: System) -> None:
    email = sign_up(exposed.gateway)
    current = Browser(exposed.gateway, sign_in(exposed.gateway, email))
    other = Browser(exposed.gateway, sign_in(exposed.gateway, email))
    wrong = current.request("POST", "/api/v1/auth/password",
                            json={"current_password": "not it at all",
                                  "new_password": "a brand new passphrase"})
    assert wrong.status_code == 401
    changed = current.request("POST", "/api/v1/auth/password",
                              json={"current_password": PASSWORD,
                                    "new_password": "a brand new passphrase"})
    assert changed.status_code == 204, changed.text
    assert current.request("GET", "/api/v1/sessions").status_code == 200
    assert other.request("GET", "/api/v1/sessions").status_code == 401
    assert sign_in(exposed.gateway, email).status_code == 401
    assert sign_in(exposed.gateway, email, "a brand new passphrase").status_code == 200


def test_api_tokens_work_without_cookies_and_die_when_revoked(exposed: System) -> None:
    browser = Browser(exposed.gateway, sign_in(exposed.gateway, sign_up(exposed.gateway)))
    created = browser.request("POST", "/api/v1/auth/tokens", json={"name": "cli"})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    for base in (exposed.gateway, exposed.command):
        wrote = httpx.post(f"{base}/api/v1/chat", json={"text": "hi"}, timeout=TIMEOUT,
                           headers={**bearer, "Accept": "application/json"})
        assert wrote.status_code == 202, wrote.text
    assert httpx.get(f"{exposed.query}/api/v1/sessions", headers=bearer,
                     timeout=TIMEOUT).status_code == 200
    revoked = browser.request("DELETE", f"/api/v1/auth/tokens/{created.json()['token_id']}")
    assert revoked.status_code == 204
    after = httpx.get(f"{exposed.gateway}/api/v1/sessions", headers=bearer, timeout=TIMEOUT)
    assert after.status_code == 401 and after.json()["error"] == "invalid_credential"
    forged = httpx.get(f"{exposed.gateway}/api/v1/sessions", timeout=TIMEOUT,
                       headers={"Authorization": "Bearer cst_" + "A" * 43})
    assert forged.status_code == 401


def test_another_users_api_token_is_404(exposed: System) -> None:
    owner = Browser(exposed.gateway, sign_in(exposed.gateway, sign_up(exposed.gateway)))
    intruder = Browser(exposed.gateway, sign_in(exposed.gateway, sign_up(exposed.gateway)))
    token = owner.request("POST", "/api/v1/auth/tokens", json={"name": "mine"}).json()
    path = f"/api/v1/auth/tokens/{token['token_id']}"
    assert intruder.request("DELETE", path).status_code == 404
    assert intruder.request("DELETE", f"/api/v1/auth/tokens/{uuid.uuid4()}").status_code == 404
    still = httpx.get(f"{exposed.gateway}/api/v1/sessions", timeout=TIMEOUT,
                      headers={"Authorization": f"Bearer {token['token']}"})
    assert still.status_code == 200


def test_twenty_wrong_passwords_are_throttled(exposed: System) -> None:
    email = sign_up(exposed.gateway)
    address = f"198.51.100.{uuid.uuid4().int % 250}"
    answers = [sign_in(exposed.gateway, email, f"wrong guess {i}", address) for i in range(20)]
    statuses = [a.status_code for a in answers]
    assert 429 in statuses, statuses
    throttled = answers[-1]
    assert throttled.status_code == 429 and throttled.json()["error"] == "too_many_attempts"
    assert int(throttled.headers["Retry-After"]) > 0
    # while throttled even the right password is refused
    assert sign_in(exposed.gateway, email, PASSWORD, address).status_code == 429


def test_exposed_services_refuse_a_client_sent_user_id(exposed: System) -> None:
    user = httpx.post(f"{exposed.command}/api/v1/users", json={}, timeout=TIMEOUT).json()
    for base in (exposed.gateway, exposed.query):
        response = httpx.get(f"{base}/api/v1/sessions", timeout=TIMEOUT,
                             headers={"X-User-ID": user["user_id"]})
        assert response.status_code == 401 and response.json()["error"] == "user_header_refused"
    for base in (exposed.gateway, exposed.command):
        wrote = httpx.post(f"{base}/api/v1/chat", json={"text": "x"}, timeout=TIMEOUT,
                           headers={"X-User-ID": user["user_id"], "Accept": "application/json"})
        assert wrote.status_code == 401 and wrote.json()["error"] == "user_header_refused"


OPEN_ROUTES = {("POST", "/api/v1/users"), ("POST", "/api/v1/auth/signin"),
               ("GET", "/api/v1/auth/oidc"), ("GET", "/api/v1/auth/oidc/start"),
               ("GET", "/api/v1/auth/oidc/callback"),
               ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
               ("POST", "/chat")}  # legacy, keyed by project id (issue 15 locks it down)


def test_every_route_without_a_credential_is_401(exposed: System) -> None:
    checked = []
    for base, method, path in operations(exposed):
        if (method, path) in OPEN_ROUTES:
            continue
        url = base + path.replace("{session_id}", str(uuid.uuid4())).replace(
            "{token_id}", str(uuid.uuid4()))
        response = httpx.request(method, url, json={"text": "x"}, timeout=TIMEOUT)
        assert response.status_code == 401, (method, path, response.status_code)
        checked.append((method, path))
    assert len(checked) >= 10, checked


def test_loopback_make_run_keeps_the_seeds_user_header(local: System) -> None:
    user = httpx.post(f"{local.gateway}/api/v1/users", json={}, timeout=TIMEOUT).json()
    response = httpx.post(f"{local.gateway}/api/v1/chat", json={"text": "seed example"},
                          headers={"X-User-ID": user["user_id"], "Accept": "application/json"},
                          timeout=TIMEOUT)
    assert response.status_code == 202, response.text


def test_deleting_the_account_leaves_no_row_no_text_and_no_live_key(
    exposed: System, acc_settings: Settings
) -> None:
    import psycopg
    import redis

    from services.core.livewire import live_key
    from workers.publisher import stream_key

    secret = f"my secret plot {uuid.uuid4().hex}"
    email = sign_up(exposed.gateway)
    browser = Browser(exposed.gateway, sign_in(exposed.gateway, email))
    token = browser.request("POST", "/api/v1/auth/tokens", json={"name": "cli"}).json()
    posted = browser.request("POST", "/api/v1/chat", json={"text": secret},
                             headers={"Accept": "application/json"}).json()
    session_id = posted["session_id"]
    user_id = browser.user_id
    broker = redis.Redis.from_url(acc_settings.redis_url)

    def replied() -> bool:
        page = browser.request("GET", f"/api/v1/sessions/{session_id}/messages",
                               headers={"X-Min-Position": str(posted["position"])}).json()
        return len(page.get("messages", [])) == 2

    wait_until(replied, timeout=30)
    assert broker.exists(live_key(acc_settings, session_id))

    deleted = browser.request("DELETE", "/api/v1/users/me")
    assert deleted.status_code == 204, deleted.text
    # the credentials died with it
    assert browser.request("GET", "/api/v1/sessions").status_code == 401
    assert httpx.get(f"{exposed.gateway}/api/v1/sessions", timeout=TIMEOUT, headers={
        "Authorization": f"Bearer {token['token']}"}).status_code == 401
    assert sign_in(exposed.gateway, email).status_code == 401
    assert not broker.exists(live_key(acc_settings, session_id))

    with psycopg.connect(acc_settings.database_url, autocommit=True) as conn:
        def projected() -> bool:
            return conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM users WHERE user_id = %s)"
                " AND NOT EXISTS (SELECT 1 FROM sessions WHERE user_id = %s)"
                " AND NOT EXISTS (SELECT 1 FROM user_projects WHERE user_id = %s)",
                (user_id, user_id, user_id)).fetchone() == (True,)

        wait_until(projected, timeout=30)
        for table in ("chat_messages", "turns"):
            count = conn.execute(f"SELECT count(*) FROM {table} WHERE user_id = %s",
                                 (user_id,)).fetchone()
            assert count == (0,), table
        for table in ("user_emails", "user_passwords", "user_credentials"):
            count = conn.execute(f"SELECT count(*) FROM {table} WHERE user_id = %s",
                                 (user_id,)).fetchone()
            assert count == (0,), table
        texts = conn.execute("SELECT data::text FROM events WHERE data::text LIKE %s"
                             " OR data::text ILIKE %s",
                             (f"%{secret}%", f"%{email}%")).fetchall()
        assert texts == []
        types = [r[0] for r in conn.execute(
            "SELECT type FROM events WHERE stream_id = %s ORDER BY version",
            (f"user-{user_id}",))]
        assert types[-1] == "UserDeleted"

    def published_without_text() -> bool:
        entries = broker.xrange(stream_key(acc_settings))
        types = [f.get(b"type") for _, f in entries if user_id.encode() in f.get(b"data", b"")]
        blobs = [b"".join(f.values()) for _, f in entries]
        text = [b for b in blobs if secret.encode() in b or email.encode() in b]
        return types == [b"UserDeleted"] and not text

    wait_until(published_without_text, timeout=30)
