"""Rate limits per user and per client IP, counted in Redis across every instance of both
services by the `limits` library (sliding-window counters), answered as `429 rate_limited`
with `Retry-After` and the `RateLimit-Limit/-Remaining/-Reset` headers.

Which limits apply to a request (each a `limits` string, several joined by ";"; empty = off):
- every request: `rate_limit_per_ip` for its client IP, and `rate_limit_per_user` for its
  X-User-ID (set by the caller check, services/http/auth.py, before this runs);
- posting a chat (`POST /api/v1/chat`, the legacy `POST /chat`): `rate_limit_chat_per_user`;
- sign-up (`POST /api/v1/users`): `rate_limit_signup_per_ip`;
- the legacy `POST /chat`: `rate_limit_legacy_per_ip`.
Probes, `/metrics` and `/schema` are never limited.

The client IP is the connection's peer, unless that peer is one of `trusted_proxies` (the
gateway, nginx): then X-Forwarded-For is read from the right, skipping trusted proxies, and
the first address that is not one is the client (so a client cannot choose its own IP by
sending X-Forwarded-For). When Redis does not answer the request passes (fail open): a
limit is a defence, not a dependency, and the write path reports Redis faults itself.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import time
import uuid
from collections.abc import Sequence
from typing import cast

import msgspec
import structlog
from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from services.core.settings import Settings
from services.http.auth import PUBLIC_PATHS, PUBLIC_PREFIXES, SIGNUP
from services.http.errors import ApiError, error_body

log = structlog.get_logger("http.ratelimit")

CHAT_ROUTES = frozenset({("POST", "/api/v1/chat"), ("POST", "/chat")})
LEGACY_CHAT = ("POST", "/chat")
_USER_HEADER_BYTES = b"x-user-id"
_FORWARDED_FOR_BYTES = b"x-forwarded-for"
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def limits_from(text: str) -> list[RateLimitItem]:
    """`"20/second;300/minute"` → the items; empty → none (a bad string fails at start)."""
    return parse_many(text) if text.strip() else []


@functools.cache
def trusted_networks(text: str) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False)
                 for part in text.split(",") if part.strip())


def scope_ip(scope: Scope, trusted_proxies: str) -> str:
    """The client IP of a request (see client_ip)."""
    forwarded = [v.decode("latin-1") for k, v in scope["headers"]
                 if k.lower() == _FORWARDED_FOR_BYTES]
    client = scope.get("client")
    return client_ip(client[0] if client else None, forwarded,
                     trusted_networks(trusted_proxies))


def client_ip(peer: str | None, forwarded_for: Sequence[str],
              trusted: Sequence[IpNetwork]) -> str:
    """The first address, from the right, that is not a trusted proxy: the peer itself when
    it is not trusted; the peer when every hop is trusted."""
    if peer is None:
        return "unknown"
    hops = [peer]
    for header in reversed(forwarded_for):
        hops.extend(part.strip() for part in reversed(header.split(",")) if part.strip())
    for hop in hops:
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return hop[:64]  # a trusted proxy passed garbage: count it as its own client
        if not any(address in network for network in trusted):
            return str(address)
    return peer


_limiters: dict[tuple[int, str, str], SlidingWindowCounterRateLimiter] = {}


def limiter_for(settings: Settings) -> SlidingWindowCounterRateLimiter:
    """The process's limiter for this Redis and prefix, made on first use inside the running
    event loop (its Redis client belongs to that loop)."""
    key = (id(asyncio.get_running_loop()), settings.redis_url, settings.redis_prefix)
    if key not in _limiters:
        storage = RedisStorage(f"async+{settings.redis_url}", implementation="redispy",
                               key_prefix=f"{settings.redis_prefix}ratelimit",
                               socket_timeout=1.0, socket_connect_timeout=1.0)
        _limiters[key] = SlidingWindowCounterRateLimiter(storage)
    return _limiters[key]


async def hit_or_refuse(settings: Settings, limits_text: str, name: str,
                        identifier: str) -> None:
    """For a limit a handler applies itself (it depends on the body): ApiError 429
    rate_limited + Retry-After past it. Fails open like the middleware."""
    if not settings.rate_limit_enabled:
        return
    limiter = limiter_for(settings)
    for item in limits_from(limits_text):
        try:
            allowed = await limiter.hit(item, name, identifier)
            reset = (await limiter.get_window_stats(item, name, identifier)).reset_time
        except Exception as error:  # fail open, said in the log
            log.warning("rate_limit_unavailable", error=repr(error))
            return
        if not allowed:
            raise ApiError("rate_limited", f"over the {name} limit of {item}",
                           retry_after=_seconds_until(reset))


class RateLimitMiddleware(ASGIMiddleware):
    """The limits above; after the caller check, so the user is the token's."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.per_ip = limits_from(settings.rate_limit_per_ip)
        self.per_user = limits_from(settings.rate_limit_per_user)
        self.chat_per_user = limits_from(settings.rate_limit_chat_per_user)
        self.signup_per_ip = limits_from(settings.rate_limit_signup_per_ip)
        self.legacy_per_ip = limits_from(settings.rate_limit_legacy_per_ip)
        self.trusted_proxies = settings.trusted_proxies
        self.settings = settings

    def checks(self, scope: Scope) -> list[tuple[RateLimitItem, str, str]]:
        """(limit, scope name, identifier) for each limit this request counts against."""
        method = cast(HTTPScope, scope)["method"]
        route = (method, scope["path"])
        headers = scope["headers"]
        ip = scope_ip(scope, self.trusted_proxies)
        found: list[tuple[RateLimitItem, str, str]] = [(item, "ip", ip) for item in self.per_ip]
        if route == SIGNUP:
            found += [(item, "signup-ip", ip) for item in self.signup_per_ip]
        if route == LEGACY_CHAT:
            found += [(item, "legacy-ip", ip) for item in self.legacy_per_ip]
        user = _user(headers)
        if user is not None:
            found += [(item, "user", user) for item in self.per_user]
            if route in CHAT_ROUTES:
                found += [(item, "chat-user", user) for item in self.chat_per_user]
        return found

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        path = scope["path"]
        if not self.enabled or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await next_app(scope, receive, send)
            return
        limiter = limiter_for(self.settings)
        tightest: tuple[RateLimitItem, int, float] | None = None  # limit, remaining, reset
        refused: tuple[RateLimitItem, float, str] | None = None  # limit, reset, which
        try:
            for item, name, identifier in self.checks(scope):
                allowed = await limiter.hit(item, name, identifier)
                stats = await limiter.get_window_stats(item, name, identifier)
                if not allowed:
                    refused = (item, stats.reset_time, name)
                    break
                if tightest is None or stats.remaining < tightest[1]:
                    tightest = (item, stats.remaining, stats.reset_time)
        except Exception as error:  # fail open, said in the log
            log.warning("rate_limit_unavailable", error=repr(error))
            tightest = refused = None
        if refused is not None:
            await _too_many(send, *refused)
            return
        if tightest is None:
            await next_app(scope, receive, send)
            return
        headers = _ratelimit_headers(*tightest)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await next_app(scope, receive, send_with_headers)


def _user(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key.lower() == _USER_HEADER_BYTES:
            try:
                return str(uuid.UUID(value.decode("latin-1").strip()))
            except ValueError:
                return None
    return None


def _seconds_until(reset_time: float) -> int:
    return max(1, math.ceil(reset_time - time.time()))


def _ratelimit_headers(item: RateLimitItem, remaining: int,
                       reset_time: float) -> list[tuple[bytes, bytes]]:
    return [(b"ratelimit-limit", str(item.amount).encode()),
            (b"ratelimit-remaining", str(max(0, remaining)).encode()),
            (b"ratelimit-reset", str(_seconds_until(reset_time)).encode())]


async def _too_many(send: Send, item: RateLimitItem, reset_time: float, name: str) -> None:
    wait = _seconds_until(reset_time)
    body = msgspec.json.encode(error_body("rate_limited", f"over the {name} limit of {item}; "
                                                          f"retry in {wait} s"))
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(wait).encode()), *_ratelimit_headers(item, 0, reset_time)]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
