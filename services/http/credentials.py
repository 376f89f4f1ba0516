"""Credentials both services accept, turned into the caller's user id (services/http/auth.py
runs this for every request).

- A browser session: the `chat_session` cookie (httpOnly, SameSite=Lax, Secure under HTTPS)
  holding a random 256-bit token. Its row in `user_credentials` gives the user, the expiry
  and the revocation: signing out deletes nothing from the browser we trust, it marks the
  row, and the next request fails at once. Writes made with the cookie also need the
  `X-CSRF-Token` header equal to the `chat_csrf` cookie (double submit: a cross-site page
  can make the browser send cookies, it cannot read them to copy one into a header).
- An API token: `Authorization: Bearer cst_...`, the same kind of random token, made and
  revoked through the API; it never expires on its own.
- With OpenID Connect configured, a JWT the provider signed (services/http/oidc.py), for
  a user who signed in through it once (`user_identities`).

Only SHA-256 hashes are stored: the tokens are random, so a fast hash loses nothing and a
leaked table holds nothing that signs anyone in. Why an opaque token and not a signed one: a
signed token still needs this lookup to be revocable at once, and then the signature adds a
key to share and rotate and nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from http.cookies import CookieError, SimpleCookie
from typing import Any

from psycopg_pool import AsyncConnectionPool

from services.core.db import open_async_pool

SESSION_COOKIE = "chat_session"
CSRF_COOKIE = "chat_csrf"
CSRF_HEADER = "x-csrf-token"
API_TOKEN_PREFIX = "cst_"
AUTH_ROLE = "chat_auth"  # db/migrations/0030_credentials.sql: reads live credentials only
SESSION_KIND = "session"
API_TOKEN_KIND = "api_token"

USER_FOR_TOKEN = """
SELECT user_id FROM user_credentials
 WHERE token_hash = %s AND kind = %s AND revoked_at IS NULL
   AND (expires_at IS NULL OR expires_at > now())
"""
USER_FOR_IDENTITY = "SELECT user_id FROM user_identities WHERE issuer = %s AND subject = %s"


def new_token(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def cookies_of(header: str | None) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header or "")
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


class CredentialCheck:
    """The lookup, on a small pool of its own acting as `chat_auth` (the query service's
    own role may not read credentials, and a credential check must not queue behind a
    service's busy pool)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.pool: AsyncConnectionPool[Any] | None = None
        self._opening = asyncio.Lock()

    async def open(self) -> AsyncConnectionPool[Any]:
        """The pool, opened on the first credential to check (the apps' own start-up hooks
        stay theirs; a service nobody signs in to never opens it)."""
        async with self._opening:
            if self.pool is None:
                self.pool = await open_async_pool(self.database_url, role=AUTH_ROLE,
                                                  min_size=1, max_size=4)
            return self.pool

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def user_for(self, token: str, kind: str) -> uuid.UUID | None:
        """The user a live credential belongs to; None for anything else."""
        return await self._one(USER_FOR_TOKEN, (token_hash(token), kind))

    async def user_for_identity(self, issuer: str, subject: str) -> uuid.UUID | None:
        """The user an OpenID Connect (issuer, subject) signed in as, if any."""
        return await self._one(USER_FOR_IDENTITY, (issuer, subject))

    async def _one(self, query: str, params: tuple[Any, ...]) -> uuid.UUID | None:
        pool = self.pool or await self.open()
        async with pool.connection() as conn:
            cur = await conn.execute(query, params)
            row = await cur.fetchone()
            await conn.rollback()
        return row[0] if row else None
