"""The test bed: real PostgreSQL and Redis, a throwaway database and key prefix per run.

Servers come from TEST_DATABASE_URL / TEST_REDIS_URL when set; else the standard local ones
when they answer; else testcontainers starts them (a laptop with Docker).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import psycopg
import pytest
import redis
from psycopg import sql

from services.core.migrate import migrate
from services.core.settings import Settings

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _with_database(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def _containers() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def server_database_url(_containers: ExitStack) -> str:
    """A maintenance connection to a server we may create databases on."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        return url
    if _answers("127.0.0.1", 5432):
        return LOCAL_POSTGRES
    from testcontainers.postgres import PostgresContainer

    pg = _containers.enter_context(PostgresContainer("postgres:16-alpine", driver=None))
    return pg.get_connection_url()


@pytest.fixture(scope="session")
def make_database(server_database_url: str) -> Iterator[Callable[[], str]]:
    """Creates a migrated throwaway database; all are dropped at the end of the run."""
    created: list[str] = []

    def create() -> str:
        name = f"chat_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(server_database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        url = _with_database(server_database_url, name)
        migrate(url)
        return url

    yield create
    with psycopg.connect(server_database_url, autocommit=True) as conn:
        for name in created:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def database_url(make_database: Callable[[], str]) -> str:
    """The run's shared database. Tests stay apart by using fresh ids."""
    return make_database()


@pytest.fixture(scope="session")
def redis_url(_containers: ExitStack) -> str:
    if url := os.environ.get("TEST_REDIS_URL"):
        return url
    if _answers("127.0.0.1", 6379):
        return LOCAL_REDIS
    from testcontainers.redis import RedisContainer

    rc = _containers.enter_context(RedisContainer("redis:7-alpine"))
    return f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"chat-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ vhost of this run's own (deleted afterwards): TEST_RABBITMQ_URL when set
    (CI: a server for this run alone), else a throwaway vhost on the local server, made with
    rabbitmqctl, so test runs side by side never take each other's messages."""
    if url := os.environ.get("TEST_RABBITMQ_URL"):
        yield url
        return
    if not _answers("127.0.0.1", 5672):
        pytest.skip("no RabbitMQ: set TEST_RABBITMQ_URL or run one on 127.0.0.1:5672")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("RabbitMQ answers on 5672 but rabbitmqctl (to make a throwaway vhost) "
                    "is not on PATH: set TEST_RABBITMQ_URL")
    vhost = f"chat-test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{LOCAL_RABBITMQ}{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return Settings.from_env(
        {},
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        log_json=False,
        worker_metrics_port=0,  # tests that want the worker's endpoint pick a free port
        # the suite sends far more than a person would (and into sessions still being
        # answered); tests/integration/test_abuse.py turns the limits on with its own numbers
        rate_limit_enabled=False,
        reply_slots_enabled=False,
    )


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A connection as the migrating (owner) user, autocommit."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn
