"""`chatctl replay`: rebuild a projection from the event store aside, then swap it in.

How, and why this way:

1. Build aside. The projection's tables are created afresh in the schema `rebuild`, copied
   from the live tables' catalog entries (workers/replay_schema.py), everything under its own
   name, so after the swap the tables look exactly as the migrations left them.
2. Project. The read model's one fold (workers/fold.py) applies the events: the initial
   build writes its rows with COPY, a chunk per transaction (workers/replay_bulk.py); the
   fallback and the swap's catch-up use the live projector's writer, REBUILD_BATCH events a
   transaction. Both name their tables unqualified: `search_path = rebuild, public` points
   their writes (and the trigger's) at the new tables. The rebuild follows its own checkpoint
   (`<projection>@rebuild`); the query side reads the live tables meanwhile.
3. Swap, in one transaction: lock the live checkpoint row FOR UPDATE (the live projector
   takes it SKIP LOCKED, so it pauses rather than waits), apply the events that arrived
   meanwhile, take ACCESS EXCLUSIVE locks on old and new tables, move the old ones to the
   schema `retired` and the new ones into public (ALTER TABLE ... SET SCHEMA keeps OIDs, so
   indexes, triggers, policies and foreign keys travel along), and copy the rebuild's
   checkpoint onto the live one. A query that was waiting for the lock resolves its table
   names again once it gets it (PostgreSQL re-resolves a name after invalidation), so it
   reads the new table; cached plans are invalidated the same way. Lock waits are capped by
   SWAP_LOCK_TIMEOUT, shorter than deadlock_timeout, so a query transaction that holds one
   table and wants another makes the swap give up and retry instead of being killed as a
   deadlock victim. The seed's functions are bound to no table OID (SQL functions are parsed
   at call time, PL/pgSQL plans are invalidated), so they read the new tables at once.
4. Drop the retired tables with RESTRICT: should anything else depend on them (a view, a
   foreign key), the drop fails loudly instead of silently cascading to that object.

Interrupted at any point, a run leaves either the old read model serving (before the swap
commits) or the new one (after); the next run drops the leftovers of `rebuild` and
`retired` and starts over. One replay runs at a time (a session advisory lock).

Rows no event produced. The legacy dossier and turns rows written by the old system before
the import (dossier rows without a `project-<id>` stream, turns with no session) are not the
projection's to rebuild: they are copied across, once before the build (so events that refer
to a legacy project find it) and again inside the swap transaction (what the legacy endpoint
wrote meanwhile), deleting rows the live tables no longer have.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import psycopg
import structlog
from psycopg import sql

from services.core.db import PROJECTOR_ROLE, SET_LOCAL_ROLE
from services.core.eventstore import (
    SELECT_CHECKPOINT,
    Checkpoint,
    RecordedEvent,
    claim_checkpoint_sync,
    read_all_sync,
    save_checkpoint_sync,
)
from workers import projector, replay_bulk
from workers.progress import Progress
from workers.replay_schema import create_tables

log = structlog.get_logger("replay")

REBUILD_SCHEMA = "rebuild"
RETIRED_SCHEMA = "retired"
REBUILD_BATCH = 10_000  # events per build transaction (also the catch-up step in the swap)
SWAP_LOCK_TIMEOUT = "300ms"  # below the default deadlock_timeout (1 s): see the docstring
SWAP_ATTEMPTS = 50
_REPLAY_LOCK_KEY = 7_246_002  # arbitrary, constant: one replay at a time

TRY_REPLAY_LOCK = "SELECT pg_try_advisory_lock(%s)"
REPLAY_UNLOCK = "SELECT pg_advisory_unlock(%s)"
DROP_REBUILD = f"DROP SCHEMA IF EXISTS {REBUILD_SCHEMA} CASCADE"
SELECT_RETIRED_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relkind = 'r'
"""
CREATE_REBUILD = f"CREATE SCHEMA {REBUILD_SCHEMA}"
CREATE_RETIRED = f"CREATE SCHEMA {RETIRED_SCHEMA}"
SEARCH_PUBLIC = "SET LOCAL search_path = public"
SEARCH_REBUILD = f"SET LOCAL search_path = {REBUILD_SCHEMA}, public"
RESET_LOCAL_ROLE = "SET LOCAL ROLE NONE"
SET_LOCK_TIMEOUT = f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"
RESET_CHECKPOINT = """
INSERT INTO projection_checkpoints (name) VALUES (%s)
ON CONFLICT (name) DO UPDATE SET last_txid = '0'::xid8, last_position = 0,
                                 updated_at = clock_timestamp()
"""
COPY_CHECKPOINT = """
UPDATE projection_checkpoints live
   SET last_txid = r.last_txid, last_position = r.last_position,
       updated_at = clock_timestamp()
  FROM projection_checkpoints r
 WHERE live.name = %(live)s AND r.name = %(rebuild)s
"""
DELETE_CHECKPOINT = "DELETE FROM projection_checkpoints WHERE name = %s"
# The rebuild's parked events become the projection's (they describe the new tables).
DROP_LIVE_PARKED = "DELETE FROM parked_events WHERE projection = %s"
ADOPT_PARKED = "UPDATE parked_events SET projection = %(live)s WHERE projection = %(rebuild)s"
PARK_EVENT = """
INSERT INTO parked_events (projection, position, error, parked) VALUES (%s, %s, %s, true)
ON CONFLICT (projection, position) DO UPDATE SET error = EXCLUDED.error, parked = true
"""
COUNT_EVENTS_AFTER = """
SELECT count(*) FROM events WHERE (txid, position) > (%s::text::xid8, %s)
"""

# Legacy rows (see the module docstring), live → rebuild. A dossier row is legacy when no
# event stream created it; a turn is legacy when it belongs to no session.
SYNC_LEGACY_DOSSIER = f"""
INSERT INTO {REBUILD_SCHEMA}.dossier AS r
SELECT d.* FROM public.dossier d
 WHERE NOT EXISTS (SELECT 1 FROM event_streams s WHERE s.stream_id = 'project-' || d.project_id)
ON CONFLICT (project_id) DO UPDATE
   SET title = EXCLUDED.title, description = EXCLUDED.description,
       created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at
"""
# Before the build, a legacy turn may sit in a project only events create: it comes across
# in the swap, when that project exists.
SYNC_LEGACY_TURNS = f"""
INSERT INTO {REBUILD_SCHEMA}.turns AS r
SELECT t.* FROM public.turns t
 WHERE t.session_id IS NULL
   AND EXISTS (SELECT 1 FROM {REBUILD_SCHEMA}.dossier d WHERE d.project_id = t.project_id)
   AND (t.user_id IS NULL
        OR EXISTS (SELECT 1 FROM {REBUILD_SCHEMA}.users u WHERE u.user_id = t.user_id))
ON CONFLICT (turn_id) DO UPDATE
   SET project_id = EXCLUDED.project_id, user_text = EXCLUDED.user_text,
       assistant_text = EXCLUDED.assistant_text, created_at = EXCLUDED.created_at,
       user_id = EXCLUDED.user_id
 WHERE r.session_id IS NULL
"""
PRUNE_LEGACY_TURNS = f"""
DELETE FROM {REBUILD_SCHEMA}.turns r
 WHERE r.session_id IS NULL
   AND NOT EXISTS (SELECT 1 FROM public.turns t
                    WHERE t.turn_id = r.turn_id AND t.session_id IS NULL)
"""
PRUNE_LEGACY_DOSSIER = f"""
DELETE FROM {REBUILD_SCHEMA}.dossier r
 WHERE NOT EXISTS (SELECT 1 FROM event_streams s WHERE s.stream_id = 'project-' || r.project_id)
   AND NOT EXISTS (SELECT 1 FROM public.dossier d WHERE d.project_id = r.project_id)
"""

Conn = psycopg.Connection[Any]


class ReplayBusy(RuntimeError):
    """Another replay holds the lock."""


@dataclass(frozen=True)
class Projection:
    """What replay needs to know to rebuild one projection.

    `apply` writes a batch through the unqualified table names in the caller's transaction
    and returns the events it could not apply (the caller parks them). `copy_foreign_rows`
    brings across rows of these tables that no event produced.
    """

    name: str
    tables: tuple[str, ...]
    apply: Callable[[Conn, list[RecordedEvent]], list[RecordedEvent]]
    copy_foreign_rows: Callable[[Conn, bool], None] = lambda _conn, _final: None
    role: str = PROJECTOR_ROLE
    # A faster initial build than `apply` event by event, when the projection has one:
    # (conn, projection, progress, chunk) -> events read. It may raise BulkBuildRefused or
    # psycopg.Error, and the replay then builds again with `apply`.
    bulk_build: Callable[[Conn, Projection, Progress | None, int], int] | None = None

    @property
    def rebuild_checkpoint(self) -> str:
        return f"{self.name}@{REBUILD_SCHEMA}"


def _apply_read_model(conn: Conn, batch: list[RecordedEvent]) -> list[RecordedEvent]:
    """The projector's own writer, one savepoint for the batch; on failure, one per event."""
    try:
        # pipeline mode: the batch's statements go out without waiting for each answer
        with conn.pipeline(), conn.transaction():
            projector.apply_events(conn, batch)
        return []
    except projector.REFUSED:
        failed: list[RecordedEvent] = []
        for recorded in batch:
            try:
                with conn.transaction():
                    projector.apply_events(conn, [recorded])
            except projector.REFUSED as exc:
                log.error("replay_event_failed", position=recorded.position,
                          type=recorded.type, error=str(exc))
                failed.append(recorded)
        return failed


def _bulk_read_model(conn: Conn, projection: Projection, progress: Progress | None,
                     chunk: int) -> int:
    """The read model's fold written with COPY (workers/replay_bulk.py)."""
    name = projection.rebuild_checkpoint

    def park(c: Conn, position: int, why: str) -> None:
        c.execute(PARK_EVENT, (name, position, f"failed during replay: {why}"))

    def save(c: Conn, at: Checkpoint) -> None:
        save_checkpoint_sync(c, name, at)

    return replay_bulk.build(conn, REBUILD_SCHEMA, park=park, save_checkpoint=save,
                             progress=progress.advance if progress else None, chunk=chunk)


def _copy_legacy_rows(conn: Conn, final: bool) -> None:
    if final:
        conn.execute(PRUNE_LEGACY_TURNS)
        conn.execute(PRUNE_LEGACY_DOSSIER)
    conn.execute(SYNC_LEGACY_DOSSIER)
    conn.execute(SYNC_LEGACY_TURNS)


READ_MODEL = Projection(
    name=projector.PROJECTION,
    # parents before children: the order tables are created and constraints added in
    tables=("users", "dossier", "sessions", "turns", "chat_messages", "user_projects"),
    apply=_apply_read_model,
    copy_foreign_rows=_copy_legacy_rows,
    bulk_build=_bulk_read_model,
)
PROJECTIONS: dict[str, Projection] = {READ_MODEL.name: READ_MODEL}


def _drop_leftovers(conn: Conn) -> None:
    """What an interrupted run left: a half-built rebuild, or retired tables not dropped."""
    conn.execute(DROP_REBUILD)
    retired = [r[0] for r in conn.execute(SELECT_RETIRED_TABLES, (RETIRED_SCHEMA,))]
    if retired:
        conn.execute(sql.SQL("DROP TABLE {}").format(
            sql.SQL(", ").join(sql.Identifier(RETIRED_SCHEMA, t) for t in retired)))
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(RETIRED_SCHEMA)))


# The phases -------------------------------------------------------------------------------


def prepare(conn: Conn, projection: Projection) -> None:
    """Fresh rebuild tables, the rows no event produced, the rebuild checkpoint at zero."""
    with conn.transaction():
        _drop_leftovers(conn)
        conn.execute(CREATE_REBUILD)
        create_tables(conn, REBUILD_SCHEMA, projection.tables, projection.role)
        projection.copy_foreign_rows(conn, False)
        conn.execute(RESET_CHECKPOINT, (projection.rebuild_checkpoint,))
        conn.execute(DROP_LIVE_PARKED, (projection.rebuild_checkpoint,))


def advance(conn: Conn, projection: Projection, limit: int) -> int:
    """Applies up to `limit` events to the rebuild tables in the caller's transaction."""
    conn.execute(SEARCH_REBUILD)
    conn.execute(SET_LOCAL_ROLE.format(projection.role))
    checkpoint = claim_checkpoint_sync(conn, projection.rebuild_checkpoint, wait=True)
    assert checkpoint is not None  # waited for it
    batch = read_all_sync(conn, checkpoint, limit)
    if batch:
        for failed in projection.apply(conn, batch):
            conn.execute(PARK_EVENT, (projection.rebuild_checkpoint, failed.position,
                                      "failed during replay"))
        save_checkpoint_sync(conn, projection.rebuild_checkpoint, batch[-1].checkpoint)
    conn.execute(RESET_LOCAL_ROLE)
    return len(batch)


def build(conn: Conn, projection: Projection, progress: Progress | None = None,
          batch_size: int = REBUILD_BATCH) -> int:
    """Projects into the rebuild tables until it has caught up; returns events applied."""
    total = 0
    while True:
        with conn.transaction():
            n = advance(conn, projection, batch_size)
        total += n
        if progress:
            progress.advance(n)
        if n == 0:
            return total


def analyze(conn: Conn, projection: Projection) -> None:
    """Fresh tables have no statistics: without them the first queries after the swap
    would be planned blind."""
    for table in projection.tables:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(REBUILD_SCHEMA, table)))


def swap(conn: Conn, projection: Projection, batch_size: int = REBUILD_BATCH) -> int:
    """Catches up and swaps in one transaction; returns the events applied in it."""
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with conn.transaction():
                return _swap_once(conn, projection, batch_size)
        except psycopg.errors.LockNotAvailable:
            log.info("replay_swap_retry", projection=projection.name, attempt=attempt)
            time.sleep(min(0.05 * attempt, 1.0))
    raise RuntimeError(f"could not lock the {projection.name} tables to swap them")


def _swap_once(conn: Conn, projection: Projection, batch_size: int) -> int:
    claim_checkpoint_sync(conn, projection.name, wait=True)  # the live projector pauses
    applied = 0
    while n := advance(conn, projection, batch_size):
        applied += n
    conn.execute(SEARCH_PUBLIC)
    projection.copy_foreign_rows(conn, True)
    conn.execute(SET_LOCK_TIMEOUT)
    tables = [sql.Identifier(s, t) for s in ("public", REBUILD_SCHEMA) for t in projection.tables]
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        sql.SQL(", ").join(tables)))
    conn.execute(CREATE_RETIRED)
    for table in projection.tables:
        conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
            sql.Identifier("public", table), sql.Identifier(RETIRED_SCHEMA)))
    for table in projection.tables:
        conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA public").format(
            sql.Identifier(REBUILD_SCHEMA, table)))
    names = {"live": projection.name, "rebuild": projection.rebuild_checkpoint}
    conn.execute(COPY_CHECKPOINT, names)
    conn.execute(DELETE_CHECKPOINT, (projection.rebuild_checkpoint,))
    conn.execute(DROP_LIVE_PARKED, (projection.name,))
    conn.execute(ADOPT_PARKED, names)
    return applied


def cleanup(conn: Conn) -> None:
    with conn.transaction():
        _drop_leftovers(conn)


def count_pending(conn: Conn, projection: Projection) -> int:
    row = conn.execute(SELECT_CHECKPOINT, (projection.rebuild_checkpoint,)).fetchone()
    row = row or (0, 0)
    counted = conn.execute(COUNT_EVENTS_AFTER, (str(row[0]), row[1])).fetchone()
    return int(counted[0]) if counted else 0


def replay(database_url: str, names: Iterable[str] | None = None,
           out: TextIO | None = None, batch_size: int = REBUILD_BATCH, *,
           bulk: bool = True, chunk: int = replay_bulk.CHUNK) -> dict[str, int]:
    """Rebuilds the named projections (all when None), one after another.

    The initial build uses the projection's bulk build when it has one (and `bulk`), in
    transactions of `chunk` events; else, and for the catch-up in the swap, its `apply`
    in transactions of `batch_size` events. Returns the events each one applied.
    """
    chosen = [PROJECTIONS[n] for n in (names or PROJECTIONS)]
    applied: dict[str, int] = {}
    # autocommit: every phase opens its own transactions (conn.transaction() is then never
    # a savepoint inside one left open by an earlier statement)
    with psycopg.connect(database_url, autocommit=True) as conn:
        # No server-side prepared statements: a generic plan made while the new tables were
        # nearly empty (a seq scan) would be kept while they grow to millions of rows.
        conn.prepare_threshold = None
        locked = conn.execute(TRY_REPLAY_LOCK, (_REPLAY_LOCK_KEY,)).fetchone()
        if not locked or not locked[0]:
            raise ReplayBusy("another replay is running")
        try:
            for projection in chosen:
                applied[projection.name] = _replay_one(conn, projection, out, batch_size,
                                                       chunk if bulk else 0)
        finally:
            conn.execute(REPLAY_UNLOCK, (_REPLAY_LOCK_KEY,))
    return applied


def _replay_one(conn: Conn, projection: Projection, out: TextIO | None,
                batch_size: int, chunk: int) -> int:
    """`chunk` > 0: the projection's bulk build, when it has one."""
    started = time.monotonic()
    log.info("replay_started", projection=projection.name)
    prepare(conn, projection)
    progress = Progress(f"replay {projection.name}", count_pending(conn, projection),
                        out=out or sys.stderr)
    total: int | None = None
    if chunk > 0 and projection.bulk_build is not None:
        try:
            total = projection.bulk_build(conn, projection, progress, chunk)
        except (replay_bulk.BulkBuildRefused, psycopg.Error) as exc:
            log.warning("replay_bulk_build_failed", projection=projection.name,
                        error=f"{type(exc).__name__}: {exc}")
            prepare(conn, projection)  # start over, event by event
            progress = Progress(f"replay {projection.name}", count_pending(conn, projection),
                                out=out or sys.stderr)
    if total is None:
        total = build(conn, projection, progress, batch_size)
    analyze(conn, projection)
    tail = swap(conn, projection, batch_size)
    progress.advance(tail)
    progress.finish()
    cleanup(conn)
    log.info("replay_finished", projection=projection.name, events=total + tail,
             seconds=round(time.monotonic() - started, 3))
    return total + tail
