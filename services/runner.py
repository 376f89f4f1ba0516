"""Starting the pieces: one service in this process, or all of them as child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import structlog
import uvicorn

from services.core.settings import Settings

log = structlog.get_logger("runner")


def _app(settings: Settings, what: str) -> tuple[Any, int]:
    if what == "command":
        from services.command.app import create_app as command_app

        return command_app(settings), settings.command_port
    if what == "query":
        from services.query.app import create_app as query_app

        return query_app(settings), settings.query_port
    from services.gateway.app import create_app as gateway_app

    return gateway_app(settings), settings.port


def serve(settings: Settings, what: str) -> int:
    if what == "all":
        return _serve_all(settings)
    app, port = _app(settings, what)
    uvicorn.run(app, host=settings.host, port=port, log_level="warning", lifespan="on",
                timeout_graceful_shutdown=5)
    return 0


def _serve_all(settings: Settings) -> int:
    """Gateway, both services and a worker as children; Ctrl-C or SIGTERM stops them all."""
    chatctl = [sys.executable, "-m", "services.cli"]
    children = {
        name: subprocess.Popen([*chatctl, *argv], env=os.environ.copy())
        for name, argv in (("command", ["serve", "command"]), ("query", ["serve", "query"]),
                           ("worker", ["worker"]), ("gateway", ["serve", "gateway"]))
    }
    log.info("system_started", url=f"http://{settings.host}:{settings.port}",
             pids={n: p.pid for n, p in children.items()})
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                log.error("child_exited", name=name, code=child.returncode)
                stopping, code = True, 1
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return code
