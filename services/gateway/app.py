"""The gateway: one origin. Reads (GET/HEAD, the SSE stream included) go to the query
service, writes to the command service. Bodies stream through unbuffered in both directions,
so server-sent events reach the client as they are written.

A plain ASGI app over httpx: routing is two lines and a framework would add buffering
questions without adding anything we need.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import msgspec

from services.core.settings import Settings

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


def upstream_for(method: str, settings: Settings) -> str:
    return settings.query_url if method in READ_METHODS else settings.command_url


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["path"] == "/healthz":
                await _json(send, 200, {"status": "ok"})
            elif scope["path"] == "/readyz":
                await self._ready(send)
            else:
                await self._proxy(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
                timeout = httpx.Timeout(30.0, read=None)  # SSE responses stay open
                self.client = httpx.AsyncClient(limits=limits, timeout=timeout)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _ready(self, send: Send) -> None:
        assert self.client is not None
        checks: dict[str, bool] = {}
        for name, base in (("command", self.settings.command_url),
                           ("query", self.settings.query_url)):
            try:
                checks[name] = (await self.client.get(f"{base}/readyz", timeout=2)).is_success
            except httpx.HTTPError:
                checks[name] = False
        status = 200 if all(checks.values()) else 503
        await _json(send, status, {"status": "ready" if status == 200 else "unready", **checks})

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.client is not None
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.settings.max_body_bytes:
                await _json(send, 413, {"error": "body_too_large",
                                        "detail": "request body is over the limit"})
                return
            if not message.get("more_body"):
                break
        url = upstream_for(scope["method"], self.settings) + scope["raw_path"].decode()
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        request = self.client.build_request(scope["method"], url, headers=headers,
                                            content=bytes(body))
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError:
            await _json(send, 503, {"error": "upstream_unavailable",
                                    "detail": "the service behind this route is not answering"})
            return
        try:
            await send({
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(k, v) for k, v in response.headers.raw
                            if k.lower() not in HOP_BY_HOP],
            })
            await _relay_body(response, receive, send)
        finally:
            await response.aclose()


async def _relay_body(response: httpx.Response, receive: Receive, send: Send) -> None:
    """Copies the upstream body chunk by chunk; stops when the client goes away."""

    async def pump() -> None:
        async for chunk in response.aiter_raw():
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


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = msgspec.json.encode(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings) -> Gateway:
    return Gateway(settings)
