"""The rebuild tables: copies of the live read-model tables taken from the catalog
(columns, defaults, checks, keys, foreign keys among themselves, indexes, triggers, row level
security, policies, owner, grants), every object under its own name, so the copy cannot
drift from the migrations (workers/replay.py explains why; a test compares both catalogs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[Any]
Statement = sql.Composed | sql.SQL

# Catalog reads. They run with search_path = public, so names in the generated definitions
# come out unqualified and resolve to the rebuild tables when run with search_path = rebuild.
SELECT_CONSTRAINTS = """
SELECT c.conname, c.contype, pg_get_constraintdef(c.oid, true),
       CASE WHEN c.contype = 'f' THEN c.confrelid::regclass::text END
  FROM pg_constraint c
 WHERE c.conrelid = %s::regclass AND c.contype IN ('p', 'u', 'c', 'f', 'x')
 ORDER BY c.contype = 'f', c.conname
"""
SELECT_INDEXES = """
SELECT pg_get_indexdef(i.indexrelid, 0, true)
  FROM pg_index i
 WHERE i.indrelid = %s::regclass
   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
 ORDER BY i.indexrelid::regclass::text
"""
SELECT_TRIGGERS = """
SELECT pg_get_triggerdef(t.oid, true) FROM pg_trigger t
 WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal
 ORDER BY t.tgname
"""
SELECT_TABLE = """
SELECT pg_get_userbyid(c.relowner), c.relrowsecurity, c.relforcerowsecurity
  FROM pg_class c WHERE c.oid = %s::regclass
"""
SELECT_GRANTS = """
SELECT pg_get_userbyid(a.grantee), a.privilege_type
  FROM pg_class c, aclexplode(c.relacl) a
 WHERE c.oid = %s::regclass AND a.grantee <> c.relowner AND a.grantee <> 0
 ORDER BY 1, 2
"""
SELECT_POLICIES = """
SELECT p.polname, p.polpermissive,
       CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                     WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END
               FROM unnest(p.polroles) r ORDER BY 1),
       pg_get_expr(p.polqual, p.polrelid, true), pg_get_expr(p.polwithcheck, p.polrelid, true)
  FROM pg_policy p WHERE p.polrelid = %s::regclass
 ORDER BY p.polname
"""

GRANT_USAGE = "GRANT USAGE ON SCHEMA {} TO {}"
SEARCH_PUBLIC = "SET LOCAL search_path = public"
LIKE_TABLE = (
    "CREATE TABLE {new} (LIKE {old} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY"
    " INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING COMMENTS INCLUDING STATISTICS)"
)


#--------------------------------------------------------------------


@dataclass
class TableDefinition:
    """Statements that recreate a public table's properties under search_path = rebuild."""

    owner: str = ""
    statements: list[Statement] = field(default_factory=list)
    foreign_keys: list[Statement] = field(default_factory=list)  # after every table


def table_definition(conn: Conn, table: str, tables: Iterable[str]) -> TableDefinition:
    """Read with search_path = public, so that names come out unqualified."""
    members = set(tables)
    name = sql.Identifier(table)
    owner, rls, force = conn.execute(SELECT_TABLE, (f"public.{table}",)).fetchone() or ("", 0, 0)
    definition = TableDefinition()
    statements = definition.statements
    definition.owner = owner
    statements.append(sql.SQL("ALTER TABLE {} OWNER TO {}").format(name, sql.Identifier(owner)))
    for conname, contype, text, target in conn.execute(SELECT_CONSTRAINTS, (table,)):
        if target is not None and target not in members:
            # it would point at a table the swap retires, and the drop would remove it
            raise RuntimeError(f"{table}.{conname} references {target}, outside the rebuild")
        (definition.foreign_keys if contype == "f" else statements).append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                name, sql.Identifier(conname), sql.SQL(text)))
    statements += [sql.SQL(r[0]) for r in conn.execute(SELECT_INDEXES, (table,))]
    statements += [sql.SQL(r[0]) for r in conn.execute(SELECT_TRIGGERS, (table,))]
    if rls:
        statements.append(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(name))
    if force:
        statements.append(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(name))
    for polname, permissive, cmd, roles, qual, check in conn.execute(SELECT_POLICIES, (table,)):
        statement: Statement = sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
            sql.Identifier(polname), name, sql.SQL("PERMISSIVE" if permissive else "RESTRICTIVE"),
            sql.SQL(cmd), sql.SQL(", ").join(
                sql.SQL("PUBLIC") if r == "public" else sql.Identifier(r) for r in roles))
        if qual is not None:
            statement += sql.SQL(" USING ({})").format(sql.SQL(qual))
        if check is not None:
            statement += sql.SQL(" WITH CHECK ({})").format(sql.SQL(check))
        statements.append(statement)
    for grantee, privilege in conn.execute(SELECT_GRANTS, (table,)):
        statements.append(sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(privilege), name, sql.Identifier(grantee)))
    return definition


def create_tables(conn: Conn, schema: str, tables: Sequence[str], writer: str) -> None:
    """Creates `tables` in `schema` as copies of the public ones (the caller's transaction;
    search_path is left at `schema, public`). `writer` gets USAGE on the schema, as do the
    tables' owners (foreign key checks run as the referenced table's owner)."""
    conn.execute(SEARCH_PUBLIC)
    statements: list[Statement] = [
        sql.SQL(LIKE_TABLE).format(new=sql.Identifier(schema, t), old=sql.Identifier("public", t))
        for t in tables]
    definitions = [table_definition(conn, t, tables) for t in tables]
    users = sorted({writer, *(d.owner for d in definitions)})
    statements.append(sql.SQL(GRANT_USAGE).format(
        sql.Identifier(schema), sql.SQL(", ").join(map(sql.Identifier, users))))
    statements += [s for d in definitions for s in d.statements]
    # foreign keys last: every table they point at must exist first
    statements += [s for d in definitions for s in d.foreign_keys]
    conn.execute(sql.SQL("SET LOCAL search_path = {}, public").format(sql.Identifier(schema)))
    for statement in statements:
        conn.execute(statement)
