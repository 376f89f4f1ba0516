"""Signed-token mode: who may call, decided once, at the gateway.

Two settings, independent but meant to be set together:

- `auth_jwt_secret` (HS256 key; empty = off): the gateway requires
  `Authorization: Bearer <JWT>` (HS256, `sub` = the user's UUID, `exp` required) on every
  proxied route but signup (`POST /api/v1/users`), drops any `X-User-ID` the client sent and
  sets it from `sub`. Tokens come from the identity provider that shares the key; this
  service issues none.
- `gateway_secret` (empty = off): the gateway adds `X-Gateway-Proof` to what it forwards and
  both services answer 401 to a request without a valid one, so nobody who can reach a
  service's port directly can claim an `X-User-ID` the gateway did not set.

The proof is `<unix time>.<HMAC-SHA256(gateway_secret, time, method, path, X-User-ID)>`, not
the shared secret itself: the secret never travels, so a proof read from a log, a trace or a
misrouted request is good only for that one method, path and user, and only for
PROOF_MAX_AGE_SECONDS. The query string is not covered (it selects a page, never a user).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import jwt
import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Receive,
    Scope,
    Send,
)

from services.core.settings import Settings

PROOF_HEADER = "x-gateway-proof"
USER_HEADER = "x-user-id"
AUTHORIZATION_HEADER = "authorization"
PROOF_MAX_AGE_SECONDS = 300  # also the clock skew tolerated between gateway and services
JWT_ALGORITHMS = ["HS256"]
# Reached without a token through the gateway (signup), and without a proof on a service
# (probes, the OpenAPI document the gateway merges, metrics scrapes).
SIGNUP = ("POST", "/api/v1/users")
SERVICE_PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics")
SERVICE_PUBLIC_PREFIXES = ("/schema",)


class Refused(Exception):
    """The gateway refuses the request with 401; `code` and `detail` make the JSON body."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


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


def user_from_token(secret: str, authorization: str | None) -> str:
    """The token's `sub` (a UUID, normalised); Refused for anything less than a valid token."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused("token_required", "Authorization: Bearer <token> is required")
    try:
        claims = jwt.decode(token.strip(), secret, algorithms=JWT_ALGORITHMS,
                            options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise Refused("token_expired", "the token has expired") from None
    except jwt.InvalidTokenError:
        raise Refused("invalid_token", "the token is not valid") from None
    try:
        return str(uuid.UUID(str(claims["sub"])))
    except ValueError:
        raise Refused("invalid_token", "the token's sub is not a user id") from None


def authorize_upstream(
    settings: Settings, method: str, path: str, headers: Sequence[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The gateway's half, before forwarding: in token mode, the headers with X-User-ID taken
    from the token (whatever the client sent is dropped); a client's proof is always dropped."""
    kept = [(k, v) for k, v in headers if k.lower() != PROOF_HEADER.encode()]
    if not settings.auth_jwt_secret:
        return kept
    kept = [(k, v) for k, v in kept if k.lower() != USER_HEADER.encode()]
    if (method, path) == SIGNUP or path.startswith(SERVICE_PUBLIC_PREFIXES):
        return kept
    authorization = next(
        (v.decode("latin-1") for k, v in kept if k.lower() == AUTHORIZATION_HEADER.encode()),
        None,
    )
    user_id = user_from_token(settings.auth_jwt_secret, authorization)
    return [*kept, (USER_HEADER.encode(), user_id.encode())]


def sign_upstream(settings: Settings, method: str, raw_path: bytes,
                  headers: Any) -> None:
    """Adds the proof to an outgoing request's headers (an httpx.Headers), computed over
    the path exactly as it goes on the wire."""
    if settings.gateway_secret:
        path = raw_path.split(b"?", 1)[0].decode("latin-1")
        headers[PROOF_HEADER] = gateway_proof(
            settings.gateway_secret, method, path, headers.get(USER_HEADER, ""))


class GatewayProofMiddleware(ASGIMiddleware):
    """The services' half: 401 unless the request carries a proof the gateway made for this
    method, path and X-User-ID."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, secret: str) -> None:
        self.secret = secret

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        path = scope["path"]
        if path in SERVICE_PUBLIC_PATHS or path.startswith(SERVICE_PUBLIC_PREFIXES):
            await next_app(scope, receive, send)
            return
        proofs, users = [], []
        for key, value in scope["headers"]:
            name = key.lower()
            if name == PROOF_HEADER.encode():
                proofs.append(value.decode("latin-1"))
            elif name == USER_HEADER.encode():
                users.append(value.decode("latin-1"))
        raw_path = (scope.get("raw_path") or path.encode()).decode("latin-1")
        # Repeated X-User-ID headers are signed as the gateway's HTTP client joins them.
        method = cast(HTTPScope, scope)["method"]  # scopes = HTTP only
        if len(proofs) != 1 or not proof_is_valid(self.secret, method, raw_path,
                                                  ", ".join(users), proofs[0]):
            body = msgspec.json.encode({"error": "gateway_proof_required",
                                        "detail": "requests must come through the gateway"})
            start: HTTPResponseStartEvent = {
                "type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]}
            end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body,
                                          "more_body": False}
            await send(start)
            await send(end)
            return
        await next_app(scope, receive, send)


def gateway_guard(settings: Settings) -> list[ASGIMiddleware]:
    """The middleware for a service's app: none unless `gateway_secret` is set."""
    return [GatewayProofMiddleware(settings.gateway_secret)] if settings.gateway_secret else []
