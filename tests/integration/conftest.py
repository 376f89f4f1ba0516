"""Integration fixtures: apps served over real HTTP on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn

from services.core.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Runs an ASGI app under uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def serve_app() -> Iterator[Callable[[Any], str]]:
    """serve_app(app) -> base URL; every server is stopped when the test ends."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serve(app))


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Polls until predicate() is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


def client(base_url: str, user_id: Any | None = None) -> httpx.Client:
    headers = {"X-User-ID": str(user_id)} if user_id else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=10)


# Tests of the broker path run on both brokers: Redis (the default) and RabbitMQ.
on_both_brokers = pytest.mark.parametrize("broker_url", ["redis", "rabbitmq"], indirect=True)


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> str:
    """The BROKER_URL setting: "" (Dramatiq's Redis broker on REDIS_URL) unless the test is
    marked on_both_brokers, which runs it once more on this run's RabbitMQ vhost."""
    if getattr(request, "param", "redis") == "redis":
        return ""
    return str(request.getfixturevalue("rabbitmq_url"))


@pytest.fixture
def command_url(
    settings: Settings, serve_app: Callable[[Any], str], broker_url: str
) -> Iterator[str]:
    """A real command service with a real worker (projector and assistant) behind it."""
    from services.command.app import create_app
    from workers.main import running_worker

    settings = msgspec.structs.replace(settings, broker_url=broker_url)
    with running_worker(settings, threads=4):
        yield serve_app(create_app(settings))
