"""Migrations: empty to head, idempotent, a failed file leaves nothing, history is immutable."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from services.core.migrate import MIGRATIONS_DIR, MigrationError, migrate, pending_files

HEAD = [p.name for p in pending_files()]

# Everything a migration can create or change in the database, as comparable rows.
CATALOG_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
               pg_get_userbyid(c.relowner), c.relacl::text
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "functions": """
        SELECT p.oid::regprocedure::text, md5(p.prosrc), p.prosecdef, p.proacl::text
          FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1""",
    "policies": """
        SELECT polrelid::regclass::text, polname, polcmd, polroles::regrole[]::text,
               pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)
          FROM pg_policy ORDER BY 1, 2""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, tgtype, tgenabled
          FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "ledger": "SELECT name, checksum, applied_at FROM schema_migrations ORDER BY name",
}


def catalog_snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {name: conn.execute(q).fetchall() for name, q in CATALOG_QUERIES.items()}


@pytest.fixture
def empty_database(server_database_url: str) -> Iterator[str]:
    """A database with nothing in it (make_database() would already have migrated it)."""
    name = f"chat_test_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(server_database_url, dbname=name)
    finally:
        with psycopg.connect(server_database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A private copy of db/migrations to break or extend."""
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, target)
    return target


def _exists(url: str, relation: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,)).fetchone()
    return bool(row and row[0])


def _ledger(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]


def test_an_empty_database_migrates_to_head(empty_database: str) -> None:
    with psycopg.connect(empty_database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        ).fetchone()
        assert row == (0,)

    lines: list[str] = []
    applied = migrate(empty_database, echo=lines.append)

    assert applied == HEAD
    assert applied[0].startswith("0001_") and applied == sorted(applied)
    assert lines == [f"applying {name}" for name in HEAD]
    assert _ledger(empty_database) == HEAD
    for table in ("events", "event_streams", "users", "sessions", "chat_messages", "turns"):
        assert _exists(empty_database, table), table


def test_a_second_run_applies_nothing_and_changes_nothing(empty_database: str) -> None:
    migrate(empty_database)
    before = catalog_snapshot(empty_database)
    assert before["policies"] and before["functions"] and before["triggers"]

    assert migrate(empty_database) == []

    assert catalog_snapshot(empty_database) == before


def test_two_migrators_at_once_apply_each_file_exactly_once(empty_database: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        try:
            start.wait()
            results.append(migrate(empty_database))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert not errors, errors
    assert sorted(results, key=len) == [[], HEAD]
    assert _ledger(empty_database) == HEAD


def test_a_failing_migration_leaves_nothing_of_itself_and_is_not_recorded(
    empty_database: str, migrations_copy: Path
) -> None:
    migrate(empty_database)
    before = catalog_snapshot(empty_database)
    broken = migrations_copy / "9999_broken.sql"
    broken.write_text(
        "CREATE TABLE half_done (id integer PRIMARY KEY);\n"
        "INSERT INTO half_done VALUES (1);\n"
        "ALTER TABLE sessions ADD COLUMN half_done_column integer;\n"
        "SELECT 1 / 0;\n"
        "CREATE TABLE never_reached (id integer);\n"
    )

    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate(empty_database, migrations_copy)

    assert not _exists(empty_database, "half_done")
    assert not _exists(empty_database, "never_reached")
    assert catalog_snapshot(empty_database) == before  # sessions kept its columns too
    assert "9999_broken.sql" not in _ledger(empty_database)

    # fixed, the same file applies on the next run: the failure released the migrator lock
    broken.write_text("CREATE TABLE half_done (id integer PRIMARY KEY);\n")
    assert migrate(empty_database, migrations_copy) == ["9999_broken.sql"]
    assert _exists(empty_database, "half_done")


def test_a_failing_migration_stops_the_run_before_later_files(
    empty_database: str, migrations_copy: Path
) -> None:
    (migrations_copy / "9998_broken.sql").write_text("CREATE TABLE x (;\n")
    (migrations_copy / "9999_after.sql").write_text("CREATE TABLE after_broken (id integer);\n")

    with pytest.raises(psycopg.errors.SyntaxError):
        migrate(empty_database, migrations_copy)

    # every file before the broken one committed on its own; nothing from or after it did
    assert _ledger(empty_database) == HEAD
    assert not _exists(empty_database, "after_broken")


def test_an_edited_migration_that_was_already_applied_is_refused(
    make_database: Callable[[], str], migrations_copy: Path
) -> None:
    url = make_database()
    before = catalog_snapshot(url)
    edited = migrations_copy / "0004_functions.sql"
    edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")
    (migrations_copy / "9999_new.sql").write_text("CREATE TABLE new_after_edit (id integer);\n")

    with pytest.raises(MigrationError, match=r"0004_functions\.sql"):
        migrate(url, migrations_copy)

    assert not _exists(url, "new_after_edit")
    assert catalog_snapshot(url) == before


def test_only_numbered_sql_files_are_migrations(migrations_copy: Path) -> None:
    (migrations_copy / "README.md").write_text("notes")
    (migrations_copy / "draft.sql").write_text("DROP TABLE events;")
    (migrations_copy / "0008_draft.sql.bak").write_text("DROP TABLE events;")

    assert [p.name for p in pending_files(migrations_copy)] == HEAD
