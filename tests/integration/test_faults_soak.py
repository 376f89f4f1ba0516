"""The soak's short form (bench/soak.py; `make soak` runs the long one): 10 simulated users
of mixed traffic for 30 s against `chatctl serve all`: no 5xx, no message lost or doubled,
and no process's memory growing past a generous bound after the warm-up."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from bench.soak import run_soak, system_processes
from tests.e2e.system import running_system

USERS, SECONDS = 10, 30
RSS_GROWTH_BOUND_MB = 60.0


@pytest.fixture
def soak_database_url(server_database_url: str) -> object:
    name = f"chat_test_{uuid.uuid4().hex[:12]}"
    yield psycopg.conninfo.make_conninfo(server_database_url, dbname=name)
    with psycopg.connect(server_database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def test_a_short_soak_has_no_errors_no_lost_messages_and_flat_memory(
    soak_database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    with running_system(soak_database_url, redis_url, redis_prefix, tmp_path) as system:
        processes = system_processes(system.process.pid)
        assert set(processes) == {"serve command", "serve query", "serve gateway", "worker"}
        report = run_soak(system.url, USERS, SECONDS, processes, sample_every=2)
    summary = report.summary()
    print("soak:", summary)
    assert report.server_errors == [], report.server_errors[:5]
    assert report.client_errors == [], report.client_errors[:5]
    assert report.messages_sent > USERS * 5
    assert (report.lost, report.duplicated, report.misordered) == (0, 0, 0), summary
    assert (report.double_replies, report.deleted_visible) == (0, 0), summary
    for name, growth in report.rss_growth_mb().items():
        assert growth < RSS_GROWTH_BOUND_MB, (name, summary["rss_mb_first_warm_last"])
