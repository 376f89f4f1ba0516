"""Ordered, transactional SQL migrations from db/migrations.

Each file runs in its own transaction together with the row that records it, so a failed
migration leaves nothing half-applied, and a second run finds nothing to do. An advisory
lock keeps two migrators (say, several containers starting at once) from racing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "db" / "migrations"
_LOCK_KEY = 7_246_001  # arbitrary, constant: the migrator's advisory lock

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
SELECT_APPLIED = "SELECT name, checksum FROM schema_migrations"
INSERT_APPLIED = "INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)"


class MigrationError(RuntimeError):
    pass


def pending_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def migrate(
    database_url: str,
    directory: Path = MIGRATIONS_DIR,
    echo: Callable[[str], None] = lambda _line: None,
) -> list[str]:
    """Applies what has not run yet; returns the names applied (empty when up to date)."""
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(CREATE_LEDGER)
            applied: dict[str, str] = dict(conn.execute(SELECT_APPLIED).fetchall())
            for path in pending_files(directory):
                sql = path.read_text()
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if path.name in applied:
                    if applied[path.name] != checksum:
                        raise MigrationError(
                            f"{path.name} changed after it was applied; add a new migration"
                        )
                    continue
                echo(f"applying {path.name}")
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute(INSERT_APPLIED, (path.name, checksum))
                applied_now.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now
