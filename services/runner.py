"""Starting the pieces: one service in this process, or all of them as child processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import structlog
import uvicorn

from services.core.settings import Settings

log = structlog.get_logger("runner")
READY_WAIT_SECONDS = 60.0


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
    """The whole system in one command: find (or start) PostgreSQL and Redis, create and
    migrate the database, then run gateway, both services and a worker as children.
    Ctrl-C or SIGTERM stops the children first and the embedded servers last."""
    from services.core.migrate import migrate
    from services.embedded import child_environment, ensure_database, infrastructure

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    # Installed before anything starts, so a Ctrl-C during start-up still stops cleanly.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with infrastructure(os.environ) as infra:
        ensure_database(infra.database_url)
        applied = migrate(infra.database_url)
        log.info("migrated", applied=applied)
        env = child_environment(os.environ, infra)
        settings = Settings.from_env(env)
        if stopping:
            return 0
        return _supervise(settings, env, lambda: stopping)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM if the runner dies without cleaning up (SIGKILL, OOM)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _supervise(settings: Settings, env: dict[str, str], stopping: Callable[[], bool]) -> int:
    chatctl = [sys.executable, "-m", "services.cli"]
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    # Each child in its own process group: the terminal's Ctrl-C reaches the runner alone,
    # which then stops every child exactly once (a second signal makes uvicorn skip its
    # graceful shutdown). PDEATHSIG covers the runner dying without that chance.
    children = {
        name: subprocess.Popen([*chatctl, *argv], env=env, preexec_fn=preexec,
                               process_group=0, stdin=subprocess.DEVNULL)
        for name, argv in (("command", ["serve", "command"]), ("query", ["serve", "query"]),
                           ("worker", ["worker"]), ("gateway", ["serve", "gateway"]))
    }
    url = f"http://{settings.host}:{settings.port}"
    log.info("system_starting", url=url, pids={n: p.pid for n, p in children.items()})
    code = 0
    # Probe the gateway's /readyz until it answers 200 (then say so once), or give up
    # probing after a minute and say what is not answering; the children keep running.
    probing_until = time.monotonic() + READY_WAIT_SECONDS
    next_probe = time.monotonic()
    while not stopping() and code == 0:
        for name, child in children.items():
            if child.poll() is not None:
                log.error("child_exited", name=name, code=child.returncode)
                code = 1
        now = time.monotonic()
        if next_probe and now >= next_probe:
            ready, detail = _ready(url)
            next_probe = now + 0.5
            if ready:
                log.info("system_ready", url=url)
                next_probe = 0
            elif now > probing_until:
                log.warning("system_not_ready", url=url, detail=detail)
                next_probe = 0
        time.sleep(0.1)
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
    log.info("system_stopped", code=code)
    return code


def _ready(url: str) -> tuple[bool, str]:
    try:
        response = httpx.get(f"{url}/readyz", timeout=3)
    except httpx.HTTPError as exc:
        return False, repr(exc)
    return response.is_success, response.text
