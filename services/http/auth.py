"""Who is calling: one check in both services, whatever gateway routes the request (the
Python one in `make run`, nginx in compose). The gateway only routes (and may sign).

- Credentials (services/http/credentials.py): an API token (`Authorization: Bearer cst_...`)
  or the browser session cookie (writes also need the CSRF header). A live one names the
  caller: its user replaces any X-User-ID the client sent; a dead one is 401
  `invalid_credential`, never a fall-back.
- `X-User-ID` (the seed's contract): the caller's UUID. Missing → 401 `unauthenticated`, not
  a UUID → 400 `invalid_user_id`; whether it names a registered user each service checks
  where it reads (401 `unknown_user`). A client may send it only on a loopback `make run`
  (`allow_user_header`, and every bind loopback: the seed's own examples); anywhere else a
  request with no credential and a client-sent X-User-ID is 401 `user_header_refused`.
- Signed-token mode, `auth_jwt_secret` (HS256 key; empty = off): every route but signup
  (`POST /api/v1/users`) and the public ones needs `Authorization: Bearer <JWT>` (HS256,
  `sub` = the user's UUID, `exp` required); the caller is the token's `sub`, and any
  `X-User-ID` the client sent is replaced by it. Tokens come from the identity provider that
  shares the key; this service issues none.
- Gateway proof, `gateway_secret` (empty = off): the services answer 401 to a request
  without a valid `X-Gateway-Proof`, which only a gateway holding the secret can make, so
  nobody who reaches a service's port directly can claim an `X-User-ID`. The proof is
  `<unix time>.<HMAC-SHA256(secret, time, method, path, X-User-ID)>`, not the secret itself:
  the secret never travels, so a proof read from a log is good only for that one method,
  path and user, and only for PROOF_MAX_AGE_SECONDS. The query string is not covered (it
  selects a page, never a user).
- Header cap, `max_header_bytes`: 431 past it (uvicorn sets no limit of its own).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
import uuid
from typing import Any, cast
from urllib.parse import urlsplit

import jwt
import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPScope, Receive, Scope, Send

from services.core.settings import Settings
from services.http.credentials import (
    API_TOKEN_KIND,
    API_TOKEN_PREFIX,
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSION_KIND,
    CredentialCheck,
    cookies_of,
)
from services.http.errors import ApiError, error_body
from services.http.oidc import oidc_provider
from services.http.paths import unsafe_path

USER_HEADER = "X-User-ID"
PROOF_HEADER = "x-gateway-proof"
AUTHORIZATION_HEADER = "authorization"
PROOF_MAX_AGE_SECONDS = 300  # also the clock skew tolerated between gateway and services
JWT_ALGORITHMS = ["HS256"]
# Reached without a token (signup), and without a proof or token at all (probes, the OpenAPI
# document the gateway merges, metrics scrapes).
SIGNUP = ("POST", "/api/v1/users")
SIGNIN = ("POST", "/api/v1/auth/signin")
# Signing up or in needs no caller, and ignores any credential the browser still holds (a
# cookie revoked by "sign out everywhere" must not stop the next sign-in).
OPEN_ROUTES = (SIGNUP, SIGNIN, ("GET", "/api/v1/auth/oidc"), ("GET", "/api/v1/auth/oidc/start"),
               ("GET", "/api/v1/auth/oidc/callback"))
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics")
PUBLIC_PREFIXES = ("/schema",)
_USER_HEADER_BYTES = USER_HEADER.lower().encode()
_PROOF_HEADER_BYTES = PROOF_HEADER.encode()
_AUTHORIZATION_BYTES = AUTHORIZATION_HEADER.encode()
_COOKIE_BYTES = b"cookie"
_CSRF_HEADER_BYTES = CSRF_HEADER.encode()


# X-User-ID ------------------------------------------------------------------------------


def parse_user_id(header: str | None) -> uuid.UUID:
    """Missing → 401 `unauthenticated`; present but not a UUID → 400 `invalid_user_id`."""
    if header is None or not header.strip():
        raise ApiError("unauthenticated", f"the {USER_HEADER} header is required")
    try:
        return uuid.UUID(header.strip())
    except ValueError:
        raise ApiError("invalid_user_id", f"{USER_HEADER} is not a UUID") from None


def unknown_user() -> ApiError:
    return ApiError("unknown_user", f"{USER_HEADER} names no registered user")


# Gateway proofs -------------------------------------------------------------------------


def gateway_proof(secret: str, method: str, path: str, user_id: str, at: int | None = None) -> str:
    stamp = int(time.time()) if at is None else at
    return f"{stamp}.{_mac(secret, stamp, method, path, user_id)}"


def proof_is_valid(secret: str, method: str, path: str, user_id: str, proof: str) -> bool:
    stamp_text, _, mac = proof.partition(".")
    if not stamp_text.isascii() or not stamp_text.isdigit() or len(stamp_text) > 12:
        return False
    stamp = int(stamp_text)
    if abs(time.time() - stamp) > PROOF_MAX_AGE_SECONDS:
        return False
    return hmac.compare_digest(mac, _mac(secret, stamp, method, path, user_id))


def _mac(secret: str, stamp: int, method: str, path: str, user_id: str) -> str:
    message = "\n".join((str(stamp), method.upper(), path, user_id)).encode("utf-8", "replace")
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_upstream(settings: Settings, method: str, raw_path: bytes, headers: Any) -> None:
    """The gateway's part: adds the proof to an outgoing request's headers (an httpx.Headers,
    whose item assignment replaces any proof the client sent), computed over the path
    exactly as it goes on the wire."""
    if settings.gateway_secret:
        path = raw_path.split(b"?", 1)[0].decode("latin-1")
        headers[PROOF_HEADER] = gateway_proof(
            settings.gateway_secret, method, path, headers.get(USER_HEADER, ""))


# Tokens ---------------------------------------------------------------------------------


def user_from_token(secret: str, authorization: str | None) -> str:
    """The token's `sub` (a UUID, normalised); ApiError 401 for anything less."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("token_required", "Authorization: Bearer <token> is required")
    try:
        claims = jwt.decode(token.strip(), secret, algorithms=JWT_ALGORITHMS,
                            options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise ApiError("token_expired", "the token has expired") from None
    except jwt.InvalidTokenError:
        raise ApiError("invalid_token", "the token is not valid") from None
    try:
        return str(uuid.UUID(str(claims["sub"])))
    except ValueError:
        raise ApiError("invalid_token", "the token's sub is not a user id") from None


# The services' middleware -----------------------------------------------------------------


class CallerCheckMiddleware(ASGIMiddleware):
    """Before any handler: the header cap, the path's shape (services/http/paths.py), then
    the gateway proof (over the headers as
    received), then the token (whose `sub` then replaces X-User-ID in the scope: nothing may
    have read the headers through Litestar's cache before this runs)."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, settings: Settings, credentials: CredentialCheck) -> None:
        self.max_header_bytes = settings.max_header_bytes
        self.gateway_secret = settings.gateway_secret
        self.jwt_secret = settings.auth_jwt_secret
        self.user_header_trusted = user_header_trusted(settings)
        self.credentials = credentials
        self.oidc = oidc_provider(settings)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers = list(scope["headers"])
        if sum(len(k) + len(v) for k, v in headers) > self.max_header_bytes:
            await _refuse(send, ApiError("headers_too_large",
                                         "the request headers are over the limit"))
            return
        if unsafe_path(scope.get("raw_path") or scope["path"].encode()):
            await _refuse(send, ApiError("invalid_path", "dot segments and encoded slashes "
                                                         "are refused"))
            return
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await next_app(scope, receive, send)
            return
        method = cast(HTTPScope, scope)["method"]  # scopes = HTTP only
        try:
            if self.gateway_secret:
                self._check_proof(scope, method, headers)
            if (method, path) in OPEN_ROUTES:
                scope["headers"] = [(k, v) for k, v in headers
                                    if k.lower() != _USER_HEADER_BYTES]
            else:
                await self._identify(scope, method, headers)
        except ApiError as refusal:
            await _refuse(send, refusal)
            return
        await next_app(scope, receive, send)

    async def _identify(self, scope: Scope, method: str,
                        headers: list[tuple[bytes, bytes]]) -> None:
        """Sets X-User-ID in the scope from a credential (or the JWT mode), or leaves a
        client's X-User-ID where it is trusted; ApiError otherwise."""
        user_id = await self._user_from_credential(method, headers)
        if user_id is not None:
            scope["headers"] = _with_user(headers, user_id)
        elif self.jwt_secret:
            scope["headers"] = self._user_from_token(headers)
        elif not self.user_header_trusted and _header(headers, _USER_HEADER_BYTES):
            raise ApiError("user_header_refused", f"{USER_HEADER} from a client is "
                           "refused here: sign in, or send an API token")

    def _check_proof(self, scope: Scope, method: str, headers: list[tuple[bytes, bytes]]) -> None:
        proofs = [v.decode("latin-1") for k, v in headers if k.lower() == _PROOF_HEADER_BYTES]
        # Repeated X-User-ID headers are signed as the gateway's HTTP client joins them.
        users = ", ".join(v.decode("latin-1") for k, v in headers
                          if k.lower() == _USER_HEADER_BYTES)
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if len(proofs) != 1 or not proof_is_valid(self.gateway_secret, method, raw_path, users,
                                                  proofs[0]):
            raise ApiError("gateway_proof_required", "requests must come through the gateway")

    def _user_from_token(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        user_id = user_from_token(self.jwt_secret, _header(headers, _AUTHORIZATION_BYTES))
        return _with_user(headers, user_id)

    async def _user_from_credential(self, method: str,
                                    headers: list[tuple[bytes, bytes]]) -> str | None:
        """An API token or a session cookie, if the request carries one (then it must be
        live: a dead one is 401, never a fall-back to X-User-ID); None without either."""
        scheme, _, token = (_header(headers, _AUTHORIZATION_BYTES) or "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token.startswith(API_TOKEN_PREFIX):
            return await self._live(token, API_TOKEN_KIND)
        if scheme.lower() == "bearer" and self.oidc is not None and token and not (
                self.jwt_secret and _jwt_alg(token).upper().startswith("HS")):
            return await self._provider_user(token)
        cookies = cookies_of(_header(headers, _COOKIE_BYTES))
        session = cookies.get(SESSION_COOKIE)
        if not session or scheme.lower() == "bearer":
            return None
        user_id = await self._live(session, SESSION_KIND)
        if method not in SAFE_METHODS:
            csrf = cookies.get(CSRF_COOKIE) or ""
            if not csrf or not hmac.compare_digest(
                    csrf.encode(), (_header(headers, _CSRF_HEADER_BYTES) or "").encode()):
                raise ApiError("csrf_failed", f"a write with the session cookie needs the "
                               f"{CSRF_HEADER} header equal to the {CSRF_COOKIE} cookie")
        return user_id

    async def _provider_user(self, token: str) -> str:
        assert self.oidc is not None
        claims = await self.oidc.verify(token)
        user_id = await self.credentials.user_for_identity(self.oidc.issuer, str(claims["sub"]))
        if user_id is None:
            raise unknown_user()
        return str(user_id)

    async def _live(self, token: str, kind: str) -> str:
        user_id = await self.credentials.user_for(token, kind)
        if user_id is None:
            raise ApiError("invalid_credential", "the credential is unknown, expired or "
                           "revoked: sign in again")
        return str(user_id)


def user_header_trusted(settings: Settings) -> bool:
    """A client may name the caller with X-User-ID only on a loopback `make run`."""
    return settings.allow_user_header and all(
        _is_loopback(host) for host in (settings.host, _host_of(settings.command_url),
                                        _host_of(settings.query_url)))


def _host_of(url: str) -> str:
    return urlsplit(url).hostname or "" if url else "127.0.0.1"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _jwt_alg(token: str) -> str:
    try:
        return str(jwt.get_unverified_header(token).get("alg", ""))
    except jwt.InvalidTokenError:
        return ""


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), None)


def _with_user(headers: list[tuple[bytes, bytes]], user_id: str) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != _USER_HEADER_BYTES]
    return [*kept, (_USER_HEADER_BYTES, user_id.encode())]


async def _refuse(send: Send, refusal: ApiError) -> None:
    body = msgspec.json.encode(error_body(refusal.code, refusal.detail))
    await send({"type": "http.response.start", "status": refusal.status_code, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
