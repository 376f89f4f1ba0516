"""An OpenID Connect provider as both services see it: its discovery document and its
signing keys (JWKS), and the check of a token it signed (joserfc: no hand-written JOSE).

- `alg` is pinned (AUTH_OIDC_ALGORITHMS, RS256 by default): `none`, HS* (a key made of the
  public key) or any algorithm not listed is refused before a key is even looked up.
- `iss` must be the issuer, `aud` must name our client id, `exp` is required and checked,
  `nbf` and `iat` are checked when present (60 s of clock skew); an ID token's `nonce` must
  be the one the sign-in sent.
- Keys rotate: a token whose `kid` is not in the cached set makes one refetch of the JWKS
  (at most every JWKS_REFETCH_SECONDS, so junk kids cannot make us hammer the provider).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from services.core.settings import Settings
from services.http.errors import ApiError

JWKS_REFETCH_SECONDS = 1.0  # at most one refetch a second, whatever kids arrive
LEEWAY_SECONDS = 60
HTTP_TIMEOUT_SECONDS = 10.0


class OidcProvider:
    def __init__(self, settings: Settings) -> None:
        # exactly as configured: `iss` must equal it (Auth0's ends with a slash)
        self.issuer = settings.auth_oidc_issuer
        self.client_id = settings.auth_oidc_client_id
        self.algorithms = [a.strip() for a in settings.auth_oidc_algorithms.split(",")
                           if a.strip() and a.strip().lower() != "none"
                           and not a.strip().upper().startswith("HS")]
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            base = self.issuer.rstrip("/")
            document = await _get_json(f"{base}/.well-known/openid-configuration")
            if document.get("issuer") != self.issuer:
                raise RuntimeError("the provider's discovery document names another issuer")
            self._metadata = document
        return self._metadata

    async def verify(self, token: str, *, nonce: str | None = None) -> dict[str, Any]:
        """The token's claims, or ApiError 401 `invalid_token` / `token_expired`."""
        try:
            header = jws.extract_compact(token.encode()).protected
        except (JoseError, ValueError):
            raise ApiError("invalid_token", "the token is not a JWT") from None
        if header.get("alg") not in self.algorithms:
            raise ApiError("invalid_token", "the token's algorithm is not accepted")
        try:
            decoded = jwt.decode(token, await self._key_set(), algorithms=self.algorithms)
        except InvalidKeyIdError:
            decoded = await self._decode_after_refetch(token)
        except (JoseError, ValueError):
            raise ApiError("invalid_token", "the token's signature is not valid") from None
        claims = dict(decoded.claims)
        self._check_claims(claims, nonce)
        return claims

    async def _decode_after_refetch(self, token: str) -> Any:
        await self._key_set(refetch=True)
        try:
            return jwt.decode(token, await self._key_set(), algorithms=self.algorithms)
        except (JoseError, ValueError):
            raise ApiError("invalid_token", "the token's signature is not valid") from None

    def _check_claims(self, claims: dict[str, Any], nonce: str | None) -> None:
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": self.issuer},
            "aud": {"essential": True, "value": self.client_id},
            "sub": {"essential": True},
            "exp": {"essential": True},
        }
        if nonce is not None:
            options["nonce"] = {"essential": True, "value": nonce}
        now = int(time.time())
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp + LEEWAY_SECONDS < now:
            raise ApiError("token_expired", "the token has expired")
        try:
            jwt.JWTClaimsRegistry(now=now, leeway=LEEWAY_SECONDS, **options).validate(claims)
        except JoseError:
            raise ApiError("invalid_token", "the token's claims are not valid") from None

    async def _key_set(self, refetch: bool = False) -> KeySet:
        async with self._lock:
            stale = time.monotonic() - self._fetched_at > JWKS_REFETCH_SECONDS
            if self._keys is None or (refetch and stale):
                jwks_uri = (await self.metadata())["jwks_uri"]
                self._keys = KeySet.import_key_set(await _get_json(jwks_uri))
                self._fetched_at = time.monotonic()
            return self._keys


def oidc_provider(settings: Settings) -> OidcProvider | None:
    """The configured provider, or None (AUTH_OIDC_ISSUER empty: OIDC off)."""
    if not settings.auth_oidc_issuer:
        return None
    return OidcProvider(settings)


async def _get_json(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as client:
        response = await client.get(url)
        response.raise_for_status()
        return dict(response.json())
