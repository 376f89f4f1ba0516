"""The gateway: one origin. Reads (GET/HEAD, the SSE stream included) go to the query
service, writes (POST/PUT/DELETE, the legacy POST /chat included) to the command service.
Response bodies stream through chunk by chunk, so server-sent events reach the client as
they are written.

It also answers what belongs to the whole system rather than to one service: `/healthz`,
`/readyz` (both services, the database and Redis), the merged OpenAPI document at
`/schema/openapi.json`, and the reference UI (web/) at `/` and `/ui/...`.

A plain ASGI app over aiohttp's client: routing is two lines and a framework would add
buffering questions without adding anything we need. It checks nobody: who is calling is
decided by the services themselves (services/http/auth.py), so the system is as safe behind
nginx as behind this gateway. With GATEWAY_SECRET set it signs what it forwards.

The upstream client is aiohttp rather than httpx because httpcore's pool walks every pooled
connection (a readability probe, a system call each) on every request: under 32 concurrent
clients that was half the gateway's time and it served 0.2x of going direct (py-spy
profiles in docs/). aiohttp keeps idle connections per host and parses with its C parser.
Bodies with a length are read whole and sent in one message; streams (SSE, chunked) are
relayed chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import mimetypes
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import psycopg
import redis.asyncio as aioredis
from multidict import CIMultiDict
from yarl import URL

from services.core.settings import Settings
from services.gateway.openapi import merge_openapi
from services.gateway.routes import RouteTable, allow_header, service_routes
from services.http.auth import sign_upstream
from services.http.headers import add_missing, security_headers, served_over_https
from services.http.metrics import METRICS_PATH, exposition, timed_send
from services.http.paths import unsafe_path

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

READ_METHODS = frozenset({"GET", "HEAD"})
# Hop-by-hop headers (RFC 9110 §7.6.1) are the connection's, not the message's.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
})
# What goes back to the client: the body is relayed byte for byte (no decompression), so
# the upstream's Content-Length stays true and spares a chunked re-encoding.
RESPONSE_DROPPED = HOP_BY_HOP - {b"content-length"}
REQUEST_ID_HEADER = b"x-request-id"
# aiohttp would add these when the client did not send them; a proxy adds nothing.
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
WEB_DIR = Path(__file__).resolve().parents[2] / "web"
UI_PREFIX = "/ui/"
OPENAPI_PATH = "/schema/openapi.json"
READY_TIMEOUT_SECONDS = 2.0
# The gateway's own paths and their methods (the UI's files: any path under UI_PREFIX).
OWN_ROUTES = (("/healthz", ["GET"]), ("/readyz", ["GET"]), (METRICS_PATH, ["GET"]),
              (OPENAPI_PATH, ["GET"]), ("/", ["GET", "HEAD"]))
UI_METHODS = frozenset({"GET", "HEAD"})
# /readyz answers from a result at most this old: probes cannot make the gateway open a
# database connection each (one check runs at a time; the others wait for it).
READY_CACHE_SECONDS = 1.0
UPSTREAM_CONNECT_SECONDS = 10.0  # a new connection to a service
UPSTREAM_POOL_TIMEOUT_SECONDS = 5.0  # waiting for one of the pool's connections


# Sign-in's redirects (OpenID Connect) are GETs that write: the command service's, whatever
# the method.
COMMAND_PREFIXES = ("/api/v1/auth/",)


def upstream_for(method: str, settings: Settings, path: str = "") -> str:
    if method in READ_METHODS and not path.startswith(COMMAND_PREFIXES):
        return settings.query_url
    return settings.command_url


class Gateway:
    def __init__(self, settings: Settings, web_dir: Path = WEB_DIR) -> None:
        self.settings = settings
        self.web_dir = web_dir.resolve()
        self.routes = RouteTable([*service_routes(settings).paths(), *OWN_ROUTES])
        self.client: aiohttp.ClientSession | None = None
        self.redis: aioredis.Redis | None = None
        self._ready_lock = asyncio.Lock()
        self._ready_at = -READY_CACHE_SECONDS
        self._ready_answer: tuple[int, dict[str, Any]] = (503, {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here: the live stream is SSE
        path, method = scope["path"], scope["method"]
        send = timed_send(send, "gateway", method, _metrics_route(path, method))
        send = _hardened(send, ui=method in READ_METHODS and (path == "/" or path.startswith(
            UI_PREFIX)), https=served_over_https(scope))
        allowed = UI_METHODS if path.startswith(UI_PREFIX) else self.routes.allowed(path)
        if unsafe_path(scope.get("raw_path") or path.encode()):
            # before any route or exemption reads it (services/http/paths.py)
            await _json(send, 400, {"error": "invalid_path",
                                    "detail": "dot segments and encoded slashes are refused"})
        elif allowed is not None and method not in allowed:
            await _json(send, 405, {"error": "method_not_allowed",
                                    "detail": f"{path} answers {allow_header(allowed)} only"},
                        headers=[(b"allow", allow_header(allowed).encode())])
        elif path == "/healthz":
            await _json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            await self._ready(send)
        elif method in READ_METHODS and path == METRICS_PATH:
            if self._may_scrape(scope):
                await _metrics(scope, send)
            else:  # not public: as if there were nothing here
                await _json(send, 404, {"error": "not_found", "detail": "no such file"})
        elif method in READ_METHODS and path == OPENAPI_PATH:
            await self._openapi(send)
        elif method in READ_METHODS and (path == "/" or path.startswith(UI_PREFIX)):
            await self._static(path, method, send)
        else:
            await self._proxy(scope, receive, send)

    def _may_scrape(self, scope: Scope) -> bool:
        """/metrics needs `Authorization: Bearer <METRICS_TOKEN>` when the token is set."""
        token = self.settings.metrics_token
        if not token:
            return True
        given = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
        return hmac.compare_digest(given, f"Bearer {token}".encode())

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Every hop is bounded: a live stream sends at least a heartbeat per
                # SSE_HEARTBEAT_SECONDS, so a read that waits three of them is a dead
                # upstream; `connect` covers the wait for a pooled connection too.
                read = 3 * self.settings.sse_heartbeat_seconds + 15
                self.client = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
                    timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=UPSTREAM_CONNECT_SECONDS,
                        connect=UPSTREAM_CONNECT_SECONDS + UPSTREAM_POOL_TIMEOUT_SECONDS,
                        sock_read=read),
                    auto_decompress=False,
                    skip_auto_headers=NO_AUTO_HEADERS,
                    # it relays Set-Cookie to the client and must never keep one itself (a
                    # jar would send one user's session cookie with everyone's requests)
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
                self.redis = aioredis.Redis.from_url(
                    self.settings.redis_url, socket_connect_timeout=READY_TIMEOUT_SECONDS,
                    socket_timeout=READY_TIMEOUT_SECONDS)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client:
                    await self.client.close()
                if self.redis:
                    await self.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _ready(self, send: Send) -> None:
        """Ready when both services say so and the database and Redis answer: the checks run
        at once, each bounded, so a dead dependency costs two seconds, not a hung probe.
        The result is kept READY_CACHE_SECONDS."""
        async with self._ready_lock:
            if time.monotonic() - self._ready_at >= READY_CACHE_SECONDS:
                self._ready_answer = await self._check_ready()
                self._ready_at = time.monotonic()
        status, payload = self._ready_answer
        await _json(send, status, payload)

    async def _check_ready(self) -> tuple[int, dict[str, Any]]:
        names = ("command", "query", "database", "redis")
        results = await asyncio.gather(
            self._service_ready(self.settings.command_url),
            self._service_ready(self.settings.query_url),
            self._database_ready(),
            self._redis_ready(),
        )
        checks = dict(zip(names, results, strict=True))
        if all(results):
            return 200, {"status": "ready", "checks": checks}
        failing = ", ".join(name for name, ok in checks.items() if not ok)
        return 503, {"error": "not_ready", "detail": f"not answering: {failing}",
                     "checks": checks}

    async def _service_ready(self, base: str) -> bool:
        assert self.client is not None
        try:
            async with self.client.get(
                f"{base}/readyz", timeout=aiohttp.ClientTimeout(total=READY_TIMEOUT_SECONDS)
            ) as response:
                return response.ok
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _database_ready(self) -> bool:
        # A fresh connection per probe: the gateway needs no pool for anything else.
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                conn = await psycopg.AsyncConnection.connect(
                    self.settings.database_url, connect_timeout=int(READY_TIMEOUT_SECONDS))
                async with conn:
                    await conn.execute("SELECT 1")
        except (psycopg.Error, OSError, TimeoutError):
            return False
        return True

    async def _redis_ready(self) -> bool:
        assert self.redis is not None
        try:
            return bool(await self.redis.ping())
        except (aioredis.RedisError, OSError):
            return False

    async def _openapi(self, send: Send) -> None:
        """The two services' documents merged into one, fetched on each call so it is never
        stale after a deploy (it is small, and clients fetch it rarely)."""
        assert self.client is not None
        documents: dict[str, Any] = {}
        for name, base in (("command", self.settings.command_url),
                           ("query", self.settings.query_url)):
            try:
                async with self.client.get(
                    f"{base}{OPENAPI_PATH}",
                    timeout=aiohttp.ClientTimeout(total=READY_TIMEOUT_SECONDS * 5),
                    raise_for_status=True,
                ) as response:
                    documents[name] = msgspec.json.decode(await response.read())
            except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError):
                await _json(send, 503, {"error": "upstream_unavailable",
                                        "detail": f"the {name} service's OpenAPI document "
                                                  "could not be read"})
                return
        await _json(send, 200, merge_openapi(documents))

    async def _static(self, path: str, method: str, send: Send) -> None:
        relative = "index.html" if path == "/" else path[len(UI_PREFIX):]
        file = (self.web_dir / relative).resolve()
        if not file.is_relative_to(self.web_dir) or not file.is_file():
            await _json(send, 404, {"error": "not_found", "detail": "no such file"})
            return
        content = file.read_bytes()
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "text/javascript"):
            kind += "; charset=utf-8"
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", kind.encode()),
            (b"content-length", str(len(content)).encode()),
            # no build step, so no hashed names: revalidate instead of caching stale code
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
        ]})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else content})

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.client is not None
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.settings.max_body_bytes:
                await _json(send, 413, {"error": "body_too_large",
                                        "detail": "request body is over the limit"})
                return
            if not message.get("more_body"):
                break
        raw_path = scope["raw_path"]
        if scope["query_string"]:
            raw_path += b"?" + scope["query_string"]
        url = URL(upstream_for(scope["method"], self.settings, scope["path"])
                  + raw_path.decode("latin-1"),
                  encoded=True)  # the path goes on as the client wrote it
        headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1"))
                              for k, v in _upstream_headers(scope))
        sign_upstream(self.settings, scope["method"], raw_path, headers)
        response: aiohttp.ClientResponse | None = None
        try:
            response = await self.client.request(scope["method"], url, headers=headers,
                                                 data=bytes(body), allow_redirects=False)
            headers_out = [(k, v) for k, v in response.raw_headers
                           if k.lower() not in RESPONSE_DROPPED]
            event_stream = response.content_type == "text/event-stream"
            # a body of known length is read whole and sent in one message
            content = (None if event_stream or response.content_length is None
                       else await response.read())
        except (aiohttp.ClientError, TimeoutError):
            if response is not None:
                response.close()
            await _json(send, 503, {"error": "upstream_unavailable",
                                    "detail": "the service behind this route is not answering"})
            return
        try:
            if event_stream:
                # tells an nginx in front of us (if any) not to buffer the stream either
                headers_out.append((b"x-accel-buffering", b"no"))
            await send({"type": "http.response.start", "status": response.status,
                        "headers": headers_out})
            if content is not None:
                await send({"type": "http.response.body", "body": content})
            else:
                await _relay_body(response, receive, send)
        except (aiohttp.ClientError, TimeoutError):
            pass  # the upstream went away mid-body: the client sees the body cut short
        finally:
            if response.content.is_eof():
                response.release()  # the connection goes back to the pool
            else:
                response.close()  # a stream the client left: this connection is done


def _hardened(send: Send, *, ui: bool, https: bool) -> Send:
    """Adds the security headers (services/http/headers.py) an answer does not carry."""
    extra = security_headers(ui=ui, https=https)

    async def hardened(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = add_missing(list(message.get("headers", [])), extra)
        await send(message)

    return hardened


def _upstream_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The client's end-to-end headers, plus a request id (so both services log the one the
    client sees) and the X-Forwarded-* a service needs to know who called."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
    names = {k.lower() for k, _ in headers}
    if REQUEST_ID_HEADER not in names:
        headers.append((REQUEST_ID_HEADER, uuid.uuid4().hex.encode()))
    client = scope.get("client")
    if client:
        forwarded = next((v for k, v in headers if k.lower() == b"x-forwarded-for"), None)
        chain = f"{forwarded.decode()}, {client[0]}" if forwarded else client[0]
        headers = [(k, v) for k, v in headers if k.lower() != b"x-forwarded-for"]
        headers.append((b"x-forwarded-for", chain.encode()))
    for key, value in scope["headers"]:
        if key == b"host":
            headers.append((b"x-forwarded-host", value))
    headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
    return headers


async def _relay_body(response: aiohttp.ClientResponse, receive: Receive, send: Send) -> None:
    """Copies the upstream body chunk by chunk, as it arrives; stops when the client goes
    away."""

    async def pump() -> None:
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    pump_task = asyncio.create_task(pump())
    gone_task = asyncio.create_task(client_gone())
    done, pending = await asyncio.wait({pump_task, gone_task},
                                       return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for task in done:
        if task is pump_task:
            task.result()


async def _json(send: Send, status: int, payload: dict[str, Any],
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = msgspec.json.encode(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _metrics_route(path: str, method: str) -> str:
    """The `route` label: the gateway's own paths, else which service it proxied to (a raw
    path would be a label value per session id)."""
    if path in ("/healthz", "/readyz", METRICS_PATH, OPENAPI_PATH):
        return path
    if method in READ_METHODS and (path == "/" or path.startswith(UI_PREFIX)):
        return "/ui"
    if path.startswith(COMMAND_PREFIXES):
        return "proxy:command"
    return "proxy:query" if method in READ_METHODS else "proxy:command"  # as upstream_for


async def _metrics(scope: Scope, send: Send) -> None:
    """This process's registry: the gateway's own numbers (each service has its own)."""
    accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"), None)
    body, content_type = exposition(accept)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type.encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings) -> Gateway:
    return Gateway(settings)
