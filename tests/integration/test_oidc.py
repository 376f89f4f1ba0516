"""OpenID Connect, black-box: a real provider process on loopback (`oidc-provider-mock`)
for the sign-in round trip, and a key server of our own (discovery + JWKS over real HTTP)
for the tokens an attacker would make: forged, expired, not yet valid, for another
audience or issuer, `alg: none`, HS256 signed with the public key, and a rotated key."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import psycopg
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from services.core.settings import Settings
from tests.integration.conftest import free_port, wait_until
from tests.integration.test_security import System, _system

TIMEOUT = 15.0
CLIENT_ID = "chat-test-client"
CLIENT_SECRET = "chat-test-secret"


@pytest.fixture(scope="module")
def oidc_settings(settings: Settings) -> Settings:
    prefix = f"{settings.redis_prefix}oidc-{uuid.uuid4().hex[:8]}:"
    return msgspec.structs.replace(settings, redis_prefix=prefix, worker_metrics_port=0,
                                   host="0.0.0.0")  # beyond loopback: credentials only


@pytest.fixture(scope="module")
def worker(oidc_settings: Settings) -> Iterator[None]:
    from workers.main import running_worker

    with running_worker(oidc_settings, threads=2):
        yield


# --- the round trip against a real provider ----------------------------------------------


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "oidc_provider_mock", "--port", str(port),
         "--require-nonce", "true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    issuer = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{issuer}/.well-known/openid-configuration",
                             timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=30, interval=0.2)
        yield issuer
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def with_provider(oidc_settings: Settings, provider: str, worker: None) -> Iterator[System]:
    with ExitStack() as stack:
        yield _system(stack, msgspec.structs.replace(
            oidc_settings, auth_oidc_issuer=provider, auth_oidc_client_id=CLIENT_ID,
            auth_oidc_client_secret=CLIENT_SECRET, auth_oidc_name="Mock",
            # the provider sends the browser here; the test reads code and state from it
            auth_oidc_redirect_url="http://127.0.0.1:9/api/v1/auth/oidc/callback"))


def sign_in_with_provider(system: System, subject: str) -> httpx.Response:
    """What a browser does: start, consent at the provider, come back with the code."""
    started = httpx.get(f"{system.gateway}/api/v1/auth/oidc/start", timeout=TIMEOUT)
    assert started.status_code == 303, started.text
    authorize = started.headers["location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"][0]
    consent = httpx.post(authorize, data={"sub": subject}, timeout=TIMEOUT)
    assert consent.status_code in (302, 303), consent.text
    back = parse_qs(urlsplit(consent.headers["location"]).query)
    return httpx.get(f"{system.gateway}/api/v1/auth/oidc/callback", timeout=TIMEOUT,
                     params={"code": back["code"][0], "state": back["state"][0]},
                     headers={"Cookie": f"chat_oidc_state={started.cookies['chat_oidc_state']}"})


def test_first_sign_in_registers_from_the_claims_and_the_second_finds_the_user(
    with_provider: System, provider: str
) -> None:
    subject = f"ada-{uuid.uuid4().hex[:8]}"
    email = f"{subject}@example.com"
    claims = {"email": email, "name": "Ada Lovelace", "picture": "https://example.com/a.png"}
    assert httpx.put(f"{provider}/users/{subject}", json=claims,
                     timeout=TIMEOUT).status_code in (200, 204)
    assert httpx.get(f"{with_provider.gateway}/api/v1/auth/oidc",
                     timeout=TIMEOUT).json() == {"enabled": True, "name": "Mock"}

    first = sign_in_with_provider(with_provider, subject)
    assert first.status_code == 303 and first.headers["location"] == "/", first.text
    cookie = {"Cookie": f"chat_session={first.cookies['chat_session']}"}
    me = httpx.get(f"{with_provider.gateway}/api/v1/users/me", headers=cookie, timeout=TIMEOUT)
    assert me.status_code == 200, me.text
    body = me.json()
    assert (body["email"], body["display_name"], body["avatar_url"]) == (
        email, "Ada Lovelace", "https://example.com/a.png")

    second = sign_in_with_provider(with_provider, subject)
    again = httpx.get(f"{with_provider.gateway}/api/v1/users/me", timeout=TIMEOUT,
                      headers={"Cookie": f"chat_session={second.cookies['chat_session']}"})
    assert again.json()["user_id"] == body["user_id"]


def test_a_callback_not_started_by_this_browser_or_replayed_is_refused(
    with_provider: System,
) -> None:
    started = httpx.get(f"{with_provider.gateway}/api/v1/auth/oidc/start", timeout=TIMEOUT)
    authorize = started.headers["location"]
    consent = httpx.post(authorize, data={"sub": "mallory"}, timeout=TIMEOUT)
    back = parse_qs(urlsplit(consent.headers["location"]).query)
    params = {"code": back["code"][0], "state": back["state"][0]}
    url = f"{with_provider.gateway}/api/v1/auth/oidc/callback"
    no_cookie = httpx.get(url, params=params, timeout=TIMEOUT)
    assert no_cookie.status_code == 401 and "set-cookie" not in no_cookie.headers
    cookie = {"Cookie": f"chat_oidc_state={started.cookies['chat_oidc_state']}"}
    assert httpx.get(url, params=params, headers=cookie, timeout=TIMEOUT).status_code == 303
    replayed = httpx.get(url, params=params, headers=cookie, timeout=TIMEOUT)
    assert replayed.status_code == 401


# --- bearer tokens against keys we control ------------------------------------------------


class KeyServer:
    """An issuer's discovery document and JWKS over real HTTP; `keys` may rotate."""

    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"})]
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server = server
        self.issuer = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {"issuer": outer.issuer,
                                            "jwks_uri": f"{outer.issuer}/jwks"}
                else:
                    body = KeySet(outer.keys).as_dict(private=False)
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def token(self, subject: str, *, key: RSAKey | None = None, **claims: Any) -> str:
        key = key or self.keys[-1]
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": CLIENT_ID, "sub": subject, "iat": now,
                   "exp": now + 300, **claims}
        return jwt.encode({"alg": "RS256", "kid": key.kid}, payload, key)


@pytest.fixture(scope="module")
def keys() -> Iterator[KeyServer]:
    server = KeyServer()
    yield server
    server.server.shutdown()


@pytest.fixture(scope="module")
def with_keys(oidc_settings: Settings, keys: KeyServer, worker: None) -> Iterator[System]:
    with ExitStack() as stack:
        yield _system(stack, msgspec.structs.replace(
            oidc_settings, auth_oidc_issuer=keys.issuer, auth_oidc_client_id=CLIENT_ID))


@pytest.fixture(scope="module")
def linked_subject(with_keys: System, keys: KeyServer, oidc_settings: Settings) -> str:
    """A registered user linked to (issuer, subject), as a first sign-in leaves it."""
    user = httpx.post(f"{with_keys.command}/api/v1/users", json={}, timeout=TIMEOUT).json()
    subject = f"sub-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(oidc_settings.database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO user_identities (issuer, subject, user_id) VALUES (%s, %s, %s)",
                      (keys.issuer, subject, user["user_id"]))
    return subject


def get_sessions(system: System, token: str) -> httpx.Response:
    return httpx.get(f"{system.gateway}/api/v1/sessions", timeout=TIMEOUT,
                     headers={"Authorization": f"Bearer {token}"})


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_valid_provider_token_names_its_linked_user(
    with_keys: System, keys: KeyServer, linked_subject: str
) -> None:
    assert get_sessions(with_keys, keys.token(linked_subject)).status_code == 200
    wrote = httpx.post(f"{with_keys.command}/api/v1/chat", json={"text": "hi"},
                       timeout=TIMEOUT, headers={
                           "Authorization": f"Bearer {keys.token(linked_subject)}",
                           "Accept": "application/json"})
    assert wrote.status_code == 202, wrote.text
    assert get_sessions(with_keys, keys.token("nobody-linked")).status_code == 401


def test_bad_tokens_are_401_never_data(
    with_keys: System, keys: KeyServer, linked_subject: str
) -> None:
    good = keys.token(linked_subject)
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    other_key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    public_pem = keys.keys[-1].as_pem(private=False)
    hs256_with_public_key = ".".join([
        _b64({"alg": "HS256", "kid": "k1"}), _b64(claims), ""])
    import hashlib
    import hmac

    mac = hmac.new(public_pem, hs256_with_public_key[:-1].encode(), hashlib.sha256).digest()
    hs256_with_public_key += base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    bad = {
        "forged payload": ".".join([header, _b64({**claims, "sub": "someone-else"}), signature]),
        "other key, same kid": keys.token(linked_subject, key=other_key),
        "expired": keys.token(linked_subject, exp=int(time.time()) - 3600),
        "not yet valid": keys.token(linked_subject, nbf=int(time.time()) + 3600),
        "wrong audience": keys.token(linked_subject, aud="another-client"),
        "wrong issuer": keys.token(linked_subject, iss="http://127.0.0.1:1"),
        "alg none": ".".join([_b64({"alg": "none"}), _b64(claims), ""]),
        "hs256 with the public key": hs256_with_public_key,
        "not a jwt": "garbage",
    }
    for name, token in bad.items():
        response = get_sessions(with_keys, token)
        assert response.status_code == 401, (name, response.text)
        assert "sessions" not in response.json(), name
    # the public key as an HMAC secret is refused by the library too, not only by our pin
    with pytest.raises(ValueError):
        OctKey.import_key(public_pem)


def test_a_rotated_key_is_fetched_on_its_first_token(
    with_keys: System, keys: KeyServer, linked_subject: str
) -> None:
    assert get_sessions(with_keys, keys.token(linked_subject)).status_code == 200
    keys.keys.append(RSAKey.generate_key(2048, parameters={"kid": f"k-{uuid.uuid4().hex[:6]}",
                                                           "alg": "RS256"}))
    time.sleep(1.1)  # JWKS_REFETCH_SECONDS: refetches are spaced out
    assert get_sessions(with_keys, keys.token(linked_subject)).status_code == 200
