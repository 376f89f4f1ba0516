"""Signing in and out, passwords and API tokens. Credentials live in their own tables
(db/migrations/0030_credentials.sql), never in events; services/http/credentials.py is the
check that reads them on every request of both services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import structlog
from psycopg_pool import AsyncConnectionPool

from services.command.passwords import (
    check_policy,
    hash_password,
    needs_rehash,
    verify_password,
)
from services.command.throttle import SignInThrottle
from services.core.settings import Settings
from services.http.credentials import (
    API_TOKEN_KIND,
    API_TOKEN_PREFIX,
    SESSION_KIND,
    new_token,
    token_hash,
)
from services.http.errors import ApiError

log = structlog.get_logger("command.accounts")

PASSWORD_OF_EMAIL = """
SELECT e.user_id, p.password_hash
  FROM user_emails e
  JOIN event_streams s ON s.stream_id = 'user-' || e.user_id AND NOT s.deleted
  LEFT JOIN user_passwords p ON p.user_id = e.user_id
 WHERE e.email = %s
"""
PASSWORD_OF_USER = "SELECT password_hash FROM user_passwords WHERE user_id = %s"
UPDATE_PASSWORD = """
UPDATE user_passwords SET password_hash = %s, updated_at = now() WHERE user_id = %s
"""
INSERT_CREDENTIAL = """
INSERT INTO user_credentials (credential_id, user_id, kind, token_hash, name, expires_at)
VALUES (%s, %s, %s, %s, %s, %s)
"""
REVOKE_BY_TOKEN = """
UPDATE user_credentials SET revoked_at = now()
 WHERE token_hash = %s AND kind = %s AND revoked_at IS NULL
"""
# Every live browser session of the user but `keep` (NULL keeps none).
REVOKE_SESSIONS = """
UPDATE user_credentials SET revoked_at = now()
 WHERE user_id = %s AND kind = 'session' AND revoked_at IS NULL
   AND token_hash IS DISTINCT FROM %s
"""
REVOKE_API_TOKEN = """
UPDATE user_credentials SET revoked_at = now()
 WHERE credential_id = %s AND user_id = %s AND kind = 'api_token' AND revoked_at IS NULL
RETURNING credential_id
"""

Password = Annotated[str, msgspec.Meta(max_length=1024)]


class SignIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(max_length=254)]
    password: Password


class SignedIn(msgspec.Struct, frozen=True, kw_only=True):
    user_id: uuid.UUID
    # also in the chat_csrf cookie: send it back as X-CSRF-Token on every write
    csrf_token: str
    expires_at: datetime


class ChangePassword(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    current_password: Password
    new_password: Password


class NewApiToken(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00]*$")]


class ApiTokenCreated(msgspec.Struct, frozen=True, kw_only=True):
    token_id: uuid.UUID
    name: str
    # shown once: only its hash is kept
    token: str


class Session(msgspec.Struct, frozen=True):
    token: str
    csrf_token: str
    expires_at: datetime


async def sign_in(pool: AsyncConnectionPool[Any], throttle: SignInThrottle,
                  settings: Settings, body: SignIn, address: str) -> tuple[uuid.UUID, Session]:
    """A new browser session, or 401 sign_in_failed whichever part was wrong."""
    email = body.email.strip().lower()
    await throttle.check(email, address)
    async with pool.connection() as conn:
        cur = await conn.execute(PASSWORD_OF_EMAIL, (email,))
        row = await cur.fetchone()
    user_id, password_hash = row if row else (None, None)
    if user_id is None or not await verify_password(password_hash, body.password):
        await throttle.failed(email, address)
        log.info("sign_in_failed", address=address)
        raise ApiError("sign_in_failed", "no account with that e-mail and password")
    rehash = await hash_password(body.password) if needs_rehash(password_hash) else None
    async with pool.connection() as conn:
        if rehash:
            await conn.execute(UPDATE_PASSWORD, (rehash, user_id))
        session = await new_session(conn, user_id, settings)
    log.info("signed_in", user_id=str(user_id))
    return user_id, session


async def sign_out(pool: AsyncConnectionPool[Any], session_token: str | None) -> None:
    if session_token:
        async with pool.connection() as conn:
            await conn.execute(REVOKE_BY_TOKEN, (token_hash(session_token), SESSION_KIND))


async def sign_out_everywhere(pool: AsyncConnectionPool[Any], user_id: uuid.UUID) -> None:
    """Every browser session of the user ends at once (API tokens are revoked one by one)."""
    async with pool.connection() as conn:
        await conn.execute(REVOKE_SESSIONS, (user_id, None))
    log.info("signed_out_everywhere", user_id=str(user_id))


async def change_password(pool: AsyncConnectionPool[Any], user_id: uuid.UUID,
                          body: ChangePassword, session_token: str | None) -> None:
    """Needs the current password; every other browser session of the user ends."""
    async with pool.connection() as conn:
        cur = await conn.execute(PASSWORD_OF_USER, (user_id,))
        row = await cur.fetchone()
    if row is None or not await verify_password(row[0], body.current_password):
        raise ApiError("sign_in_failed", "the current password is not right")
    check_policy(body.new_password)
    new_hash = await hash_password(body.new_password)
    keep = token_hash(session_token) if session_token else None
    async with pool.connection() as conn:
        await conn.execute(UPDATE_PASSWORD, (new_hash, user_id))
        await conn.execute(REVOKE_SESSIONS, (user_id, keep))
    log.info("password_changed", user_id=str(user_id))


async def create_api_token(pool: AsyncConnectionPool[Any], user_id: uuid.UUID,
                           body: NewApiToken) -> ApiTokenCreated:
    token_id, token = uuid.uuid4(), new_token(API_TOKEN_PREFIX)
    async with pool.connection() as conn:
        await conn.execute(INSERT_CREDENTIAL, (token_id, user_id, API_TOKEN_KIND,
                                               token_hash(token), body.name, None))
    log.info("api_token_created", user_id=str(user_id), token_id=str(token_id))
    return ApiTokenCreated(token_id=token_id, name=body.name, token=token)


async def revoke_api_token(pool: AsyncConnectionPool[Any], user_id: uuid.UUID,
                           token_id: uuid.UUID) -> None:
    """404 for a token that is not the caller's (or no longer live)."""
    async with pool.connection() as conn:
        cur = await conn.execute(REVOKE_API_TOKEN, (token_id, user_id))
        if await cur.fetchone() is None:
            raise ApiError("not_found", "no such API token")


async def new_session(conn: Any, user_id: uuid.UUID, settings: Settings) -> Session:
    token = new_token()
    expires_at = datetime.now(UTC) + timedelta(hours=settings.auth_session_hours)
    await conn.execute(INSERT_CREDENTIAL, (uuid.uuid4(), user_id, SESSION_KIND,
                                           token_hash(token), None, expires_at))
    return Session(token=token, csrf_token=new_token(), expires_at=expires_at)
