"""The whole system as `make run` starts it (`chatctl serve all`), in a subprocess, against
the test run's throwaway database and a Redis key prefix of its own, on free ports.

Used by tests/integration/test_gateway.py and tests/e2e/test_browser.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningSystem:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    redis_prefix: str = ""

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def interrupt(self) -> list[psutil.Process]:
        """Ctrl-C to the runner alone; returns the descendants still alive afterwards."""
        family = self.descendants()
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        _gone, alive = psutil.wait_procs(family, timeout=5)
        return alive


@contextmanager
def running_system(database_url: str | None, redis_url: str | None, redis_prefix: str,
                   tmp_path: Path, **extra_env: str) -> Iterator[RunningSystem]:
    """None for a URL leaves its variable unset (the runner then probes and embeds)."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        **({"DATABASE_URL": database_url} if database_url else {}),
        **({"REDIS_URL": redis_url} if redis_url else {}),
        # a prefix of its own: no other test's worker may take this system's jobs
        "REDIS_PREFIX": (prefix := f"{redis_prefix}system-{uuid.uuid4().hex[:8]}:"),
        "PORT": str(port),
        "COMMAND_PORT": str(free_port()),
        "QUERY_PORT": str(free_port()),
        "HOST": "127.0.0.1",
        "COMMAND_URL": "",
        "QUERY_URL": "",
        "LOG_JSON": "false",
        "CHAT_DATA_DIR": str(tmp_path / "data"),  # never the developer's ./data
        # tests send far more than people do; tests/integration/test_abuse.py turns it on
        "RATE_LIMIT_ENABLED": "false",
        "REPLY_SLOTS_ENABLED": "false",
        **extra_env,
    }
    log_path = tmp_path / "system.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "all"],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    system = RunningSystem(f"http://127.0.0.1:{port}", process, log_path, prefix)
    try:
        _wait_ready(system)
        yield system
    finally:
        if process.poll() is None:
            leftovers = system.descendants()
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
            for child in leftovers:  # only if the runner failed to stop them
                if child.is_running():
                    child.kill()


def _wait_ready(system: RunningSystem) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    last = ""
    while time.monotonic() < deadline:
        if system.process.poll() is not None:
            raise RuntimeError(f"chatctl serve all exited ({system.process.returncode}):\n"
                               + system.log_tail())
        try:
            response = httpx.get(f"{system.url}/readyz", timeout=3)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise RuntimeError(f"the system was not ready within {READY_TIMEOUT_SECONDS}s "
                       f"(last /readyz: {last}):\n{system.log_tail()}")
