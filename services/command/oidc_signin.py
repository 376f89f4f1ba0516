"""Sign in with OpenID Connect: the authorization-code flow with PKCE (S256) and a nonce.

start: a fresh state, nonce and PKCE verifier, kept in Redis for LOGIN_WINDOW_SECONDS under
the state (and the state in a cookie of this browser, so a callback started elsewhere is
refused); the browser goes to the provider. callback: the state must match the cookie and
be known (once), the code is exchanged with the verifier, the ID token verified
(services/http/oidc.py: signature against the JWKS, alg pinned, iss, aud, exp, nbf, nonce).
The user is (issuer, subject): linked the first time, registering a new user from the
claims (e-mail if no account holds it yet, name, picture); never matched to a local account
by e-mail, which would let a provider's unverified address take that account over.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
import psycopg
import structlog
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from psycopg_pool import AsyncConnectionPool
from redis import asyncio as aioredis

from services.command.accounts import Session, new_session
from services.command.auth import Caller
from services.command.store import append, in_transaction
from services.core.events import UserRegistered, user_stream
from services.core.eventstore import ConcurrencyError, StreamAppend
from services.core.settings import Settings
from services.core.wakeup import Wake
from services.http.context import RequestIds
from services.http.errors import ApiError
from services.http.oidc import OidcProvider

log = structlog.get_logger("command.oidc")

LOGIN_WINDOW_SECONDS = 600
STATE_COOKIE = "chat_oidc_state"
SCOPE = "openid email profile"
HTTP_TIMEOUT_SECONDS = 10.0

LINK_IDENTITY = """
INSERT INTO user_identities (issuer, subject, user_id) VALUES (%s, %s, %s)
    ON CONFLICT (issuer, subject) DO NOTHING
RETURNING user_id
"""
USER_OF_IDENTITY = "SELECT user_id FROM user_identities WHERE issuer = %s AND subject = %s"
RESERVE_EMAIL_IF_FREE = """
INSERT INTO user_emails (email, user_id) VALUES (%s, %s) ON CONFLICT (email) DO NOTHING
RETURNING email
"""


class Pending(msgspec.Struct, frozen=True):
    nonce: str
    verifier: str


def redirect_url(settings: Settings) -> str:
    return (settings.auth_oidc_redirect_url
            or f"http://{settings.host}:{settings.port}/api/v1/auth/oidc/callback")


def _key(settings: Settings, state: str) -> str:
    return f"{settings.redis_prefix}oidc:{state}"


async def start(provider: OidcProvider, redis: aioredis.Redis,
                settings: Settings) -> tuple[str, str]:
    """(the provider's authorization URL, the state for this browser's cookie)."""
    metadata = await provider.metadata()
    state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
    await redis.set(_key(settings, state), msgspec.json.encode(Pending(nonce, verifier)),
                    ex=LOGIN_WINDOW_SECONDS)
    query = urlencode({
        "response_type": "code", "client_id": settings.auth_oidc_client_id,
        "redirect_uri": redirect_url(settings), "scope": SCOPE, "state": state,
        "nonce": nonce, "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    })
    return f"{metadata['authorization_endpoint']}?{query}", state


async def callback(provider: OidcProvider, pool: AsyncConnectionPool[Any],
                   redis: aioredis.Redis, wake: Wake, settings: Settings, ids: RequestIds,
                   *, code: str | None, state: str | None,
                   cookie_state: str | None) -> tuple[uuid.UUID, Session]:
    if not code or not state or not cookie_state or not hmac.compare_digest(
            state.encode(), cookie_state.encode()):
        raise ApiError("sign_in_failed", "this sign-in was not started by this browser")
    raw = await redis.getdel(_key(settings, state))
    if raw is None:
        raise ApiError("sign_in_failed", "this sign-in expired or was already used")
    pending = msgspec.json.decode(raw, type=Pending)
    tokens = await _exchange(provider, settings, code, pending.verifier)
    claims = await provider.verify(str(tokens.get("id_token", "")), nonce=pending.nonce)
    user_id, registered = await _user_for(pool, provider.issuer, claims, ids)
    if registered:
        await wake()
    async with pool.connection() as conn:
        session = await new_session(conn, user_id, settings)
    log.info("signed_in_oidc", user_id=str(user_id), registered=registered)
    return user_id, session


async def _exchange(provider: OidcProvider, settings: Settings, code: str,
                    verifier: str) -> dict[str, Any]:
    metadata = await provider.metadata()
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as client:
        response = await client.post(
            metadata["token_endpoint"],
            data={"grant_type": "authorization_code", "code": code,
                  "redirect_uri": redirect_url(settings), "code_verifier": verifier},
            auth=(settings.auth_oidc_client_id, settings.auth_oidc_client_secret))
    if response.status_code != 200:
        log.warning("oidc_token_refused", status=response.status_code)
        raise ApiError("sign_in_failed", "the provider refused the sign-in")
    return dict(response.json())


async def _user_for(pool: AsyncConnectionPool[Any], issuer: str, claims: dict[str, Any],
                    ids: RequestIds) -> tuple[uuid.UUID, bool]:
    """The linked user, else a new one registered from the claims (and linked)."""
    subject = str(claims["sub"])

    async def work(conn: psycopg.AsyncConnection[Any]) -> tuple[uuid.UUID, bool]:
        row = await (await conn.execute(USER_OF_IDENTITY, (issuer, subject))).fetchone()
        if row is not None:
            return row[0], False
        user_id = uuid.uuid4()
        linked = await (await conn.execute(LINK_IDENTITY, (issuer, subject, user_id))).fetchone()
        if linked is None:  # a concurrent first sign-in linked it: the retry finds it
            raise ConcurrencyError(f"identity {issuer} {subject}", 0)
        email = _claim(claims, "email", 254)
        if email is not None:
            reserved = await (await conn.execute(
                RESERVE_EMAIL_IF_FREE, (email.lower(), user_id))).fetchone()
            email = email if reserved else None
        event = UserRegistered(user_id=user_id, email=email,
                               display_name=_claim(claims, "name", 200),
                               avatar_url=_claim(claims, "picture", 2048))
        await append(conn, [StreamAppend(stream_id=user_stream(user_id), expected_version=0,
                                         events=[event], stream_type="user",
                                         owner_id=user_id)],
                     Caller(user_id, ids).event_metadata())
        return user_id, True

    return await in_transaction(pool, work)


def _claim(claims: dict[str, Any], name: str, max_length: int) -> str | None:
    value = claims.get(name)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        return None
    return value.strip()[:max_length]
