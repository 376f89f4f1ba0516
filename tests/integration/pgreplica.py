"""A PostgreSQL primary and a streaming hot standby of our own on loopback ports: initdb,
pg_basebackup and two servers from the machine's PostgreSQL binaries, in a temporary folder.
Never the machine's own server. PostgreSQL refuses to run as root: as root, every binary
runs as the `postgres` OS user (runuser), which owns the folder."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.integration.conftest import free_port

START_TIMEOUT_SECONDS = 60
# fsync off: a throwaway test cluster. hot_standby_feedback: the standby's reads are never
# cancelled by the primary's vacuum (recommended for any read replica, not only here).
SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sockets}'
port = {port}
fsync = off
full_page_writes = off
wal_level = replica
max_wal_senders = 5
hot_standby = on
hot_standby_feedback = on
shared_buffers = 32MB
max_connections = 60
"""


def bindir() -> Path | None:
    """PG_BINDIR, else the newest /usr/lib/postgresql/<version>/bin with what we need."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                         else 0, reverse=True)
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if all((path / b).exists() for b in ("initdb", "pg_ctl", "pg_basebackup", "postgres")):
            return path
    return None


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def can_run() -> str | None:
    """None when a pair can be started here, else why not."""
    if bindir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) found"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` OS user to run PostgreSQL"
        if shutil.which("runuser") is None:
            return "running as root without runuser"
    return None


class Server:
    def __init__(self, bin_: Path, data: Path, port: int) -> None:
        self.bin, self.data, self.port = bin_, data, port

    def url(self, dbname: str = "chat") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str) -> None:
        subprocess.run(_as_postgres([str(self.bin / argv[0]), *argv[1:]]), check=True,
                       capture_output=True, timeout=START_TIMEOUT_SECONDS + 30)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"),
                  "-w", "-t", str(START_TIMEOUT_SECONDS), "start")

    def stop(self, mode: str = "fast") -> None:
        """mode="immediate" is a crash: every backend quits at once, nothing is flushed."""
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                                     mode, "-w", "stop"]), capture_output=True, timeout=60,
                       check=False)

    def connect(self, dbname: str = "chat") -> psycopg.Connection:
        return psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5)


class Pair:
    def __init__(self, root: Path) -> None:
        found = bindir()
        assert found is not None
        self.root, self.bin = root, found
        self.primary = Server(found, root / "primary", free_port())
        self.standby = Server(found, root / "standby", free_port())

    def _settings(self, server: Server) -> None:
        with (server.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(SETTINGS.format(sockets=self.root, port=server.port))

    def start(self) -> None:
        subprocess.run(_as_postgres([str(self.bin / "initdb"), "-D", str(self.primary.data),
                                     "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                     "--no-instructions"]),
                       check=True, capture_output=True, timeout=120)
        self._settings(self.primary)
        self.primary.start()
        with self.primary.connect("postgres") as conn:
            conn.execute("CREATE DATABASE chat")
        from services.core.migrate import migrate

        migrate(self.primary.url())
        subprocess.run(_as_postgres([str(self.bin / "pg_basebackup"), "-h", "127.0.0.1",
                                     "-p", str(self.primary.port), "-U", "postgres",
                                     "-D", str(self.standby.data), "-R", "-X", "stream",
                                     "-c", "fast"]),
                       check=True, capture_output=True, timeout=120)
        # the copy carries the primary's port: the standby's own settings come after
        self._settings(self.standby)
        self.standby.start()
        self.wait_replayed()

    def wait_replayed(self, timeout: float = 30) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        with self.primary.connect() as p:
            target = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        with self.standby.connect() as s:
            while True:
                row = s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                (target,)).fetchone()
                if row and row[0]:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError("the standby did not catch up")
                time.sleep(0.05)

    @contextmanager
    def replay_paused(self) -> Iterator[None]:
        """The standby stops applying WAL (it still receives it) until the block ends."""
        with self.standby.connect() as s:
            s.execute("SELECT pg_wal_replay_pause()")
            while s.execute("SELECT pg_get_wal_replay_pause_state()").fetchone() != ("paused",):
                time.sleep(0.02)
            try:
                yield
            finally:
                s.execute("SELECT pg_wal_replay_resume()")

    def stop(self) -> None:
        self.standby.stop("immediate")
        self.primary.stop("immediate")


@contextmanager
def primary_and_standby() -> Iterator[Pair]:
    root = Path(tempfile.mkdtemp(prefix="chat-pg-pair-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pair = Pair(root)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()
        shutil.rmtree(root, ignore_errors=True)
