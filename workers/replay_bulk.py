"""The replay's bulk build of the read model: the fold of workers/fold.py, written with COPY.

The live projector writes a batch's rows with INSERT ... SELECT FROM unnest; for the
initial build of a replay, where the tables are new, empty and private until the swap, the
same fold's rounds are written with COPY instead (the updates and deletes of
workers/fold_sql.py as they are). The rules are the fold's alone, so the two cannot drift;
tests/integration/test_replay.py still compares both writers on random event sets.

Streaming, bounded memory. Events are read, folded and written in chunks of `chunk` events,
one transaction each (a long transaction would hold back every follower's read horizon).
The fold's state is looked up from the rebuild tables for each chunk (the rows its events
touch, by key), so nothing is kept from one chunk to the next: memory is O(chunk), whatever
the length of the history. Most of a chunk's message and turn ids are its own, new ones:
those it does not look up, and the keys catch a wrong guess (see `_fold_and_write`).

Loading mode. COPY FROM refuses a table whose row level security applies to the writer, and
the rebuild tables copy the live ones' FORCE ROW LEVEL SECURITY. While loading, as the
tables' owner, they are set NO FORCE (the owner then bypasses RLS), and their foreign keys
and the indexes that back no constraint are dropped: a foreign key checked row by row costs
more than the COPY itself, and an index built at the end is one sort instead of a million
random insertions. The keys stay (the look-ups, updates and deletes use them); the indexes
the deletes walk (DELETE_INDEXES) are built again when the first chunk with a SessionDeleted
comes, not before. The trigger update_session_last_message() stays on: it is the rule for
the sessions' counters, and fires once per COPY. The fold's delete statements do what the
foreign keys' ON DELETE actions would. At the end, in one transaction, everything is put
back under the same names and definitions, and each foreign key is validated by one join. A
build that is interrupted leaves tables in loading mode, but the rebuild schema is never
swapped in then: the next replay drops it.

Anything the fold did not foresee (a constraint the database refuses) raises: the caller
builds again with the projector's per-event path.
"""

from __future__ import annotations

import datetime as dt
import gc
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
import structlog
from psycopg import sql
from psycopg.types.json import set_json_dumps

from services.core import events as ev
from services.core.eventstore import Checkpoint
from workers.fold import ReadModelFold, needs
from workers.fold_sql import copy_rows, load_known, write_round

log = structlog.get_logger("replay")

Conn = psycopg.Connection[Any]
_encode_json = msgspec.json.Encoder().encode

CHUNK = 50_000  # events per read + write transaction
# parents before children
TABLES = ("users", "dossier", "user_projects", "sessions", "turns", "chat_messages")
# Plain indexes the fold's delete statements walk (workers/fold_sql.py): built again while
# loading once the first delete comes (without them, each delete would scan the tables).
DELETE_INDEXES = ("turns_session_idx", "chat_messages_turn_idx")

# The follower query of services/core/eventstore.py, with the read horizon taken once per
# chunk: as a filter (when the planner picks a sequential scan) event_read_horizon() would
# be called for every row.
READ_HORIZON = "SELECT event_read_horizon()::text"
READ_EVENTS = """
SELECT position, txid::text::bigint, data::text, recorded_at FROM events
 WHERE (txid, position) > (%(txid)s::text::xid8, %(position)s)
   AND txid < %(horizon)s::xid8
 ORDER BY events.txid, events.position  -- the column, not the output txid (a sort)
 LIMIT %(limit)s
"""


class BulkBuildRefused(RuntimeError):
    """The rebuild tables are not in the state the bulk build starts from."""


SELECT_NOT_EMPTY = "SELECT EXISTS (SELECT 1 FROM sessions) OR EXISTS (SELECT 1 FROM chat_messages)"


# Loading mode ------------------------------------------------------------------------------

SELECT_TABLE_STATE = """
SELECT pg_get_userbyid(c.relowner), c.relforcerowsecurity FROM pg_class c
 WHERE c.oid = %s::regclass
"""
# Indexes that back no constraint (the keys stay: the fold's look-ups, updates and deletes
# use them).
SELECT_PLAIN_INDEXES = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
 WHERE i.indrelid = %s::regclass
   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
 ORDER BY 1
"""
SELECT_FOREIGN_KEYS = """
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname
"""


@dataclass
class LoadingMode:
    """How the rebuild tables are loaded (see the module docstring): row level security not
    forced, foreign keys and the indexes that back no constraint dropped. Checked row by
    row, the foreign keys cost more than the whole COPY; added back at the end, each is
    validated by one join. An index built at the end is one sort instead of a million random
    insertions. `leave` restores everything exactly (same names and definitions), in the
    caller's transaction."""

    schema: str
    owner: str
    forced: list[str] = field(default_factory=list)
    foreign_keys: list[tuple[str, str, str]] = field(default_factory=list)
    indexes: list[tuple[str, str]] = field(default_factory=list)  # (qualified name, definition)

    @classmethod
    def of(cls, conn: Conn, schema: str, tables: Sequence[str]) -> LoadingMode:
        states = {t: conn.execute(SELECT_TABLE_STATE, (f"{schema}.{t}",)).fetchone()
                  for t in tables}
        owners = {str(s[0]) for s in states.values() if s}
        if len(owners) != 1:
            raise BulkBuildRefused(f"the read-model tables have several owners: {owners}")
        mode = cls(schema, owners.pop(), [t for t, s in states.items() if s and s[1]])
        for t in tables:
            mode.foreign_keys += [(t, name, definition) for name, definition in conn.execute(
                SELECT_FOREIGN_KEYS, (f"{schema}.{t}",))]
            mode.indexes += conn.execute(SELECT_PLAIN_INDEXES, (f"{schema}.{t}",)).fetchall()
        return mode

    def as_owner(self, conn: Conn) -> None:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(self.owner)))

    def enter(self, conn: Conn) -> None:
        """Leaves the caller's transaction as the tables' owner."""
        # as the caller, who made the schema: an index needs CREATE on it
        for name, _ in self.indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))
        self.as_owner(conn)
        for table, name, _ in self.foreign_keys:
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(self.schema, table), sql.Identifier(name)))
        for table in self.forced:
            conn.execute(sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(
                sql.Identifier(self.schema, table)))

    def restore_indexes(self, conn: Conn, names: Sequence[str]) -> None:
        """Builds these dropped indexes again now (as the caller: CREATE on the schema)."""
        wanted = {f"{self.schema}.{n}" for n in names}
        conn.execute("SET LOCAL ROLE NONE")
        for name, definition in [i for i in self.indexes if i[0] in wanted]:
            conn.execute(sql.SQL(definition))  # type: ignore[arg-type]
            self.indexes.remove((name, definition))
        self.as_owner(conn)

    def leave(self, conn: Conn) -> None:
        for _, definition in self.indexes:
            conn.execute(sql.SQL(definition))  # type: ignore[arg-type]
        self.as_owner(conn)
        for table in self.forced:
            conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(
                sql.Identifier(self.schema, table)))
        for table, name, definition in self.foreign_keys:
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(self.schema, table), sql.Identifier(name), sql.SQL(definition)))


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The fold allocates millions of small containers and frees few: the cyclic garbage
    collector would walk them all again and again (it made decoding 4x slower). The fold
    creates no reference cycles, so reference counting frees everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build(conn: Conn, schema: str, *,
          park: Callable[[Conn, int, str], None],
          save_checkpoint: Callable[[Conn, Checkpoint], None],
          start: Checkpoint | None = None,
          progress: Callable[[int], None] | None = None, chunk: int = CHUNK) -> int:
    """Builds the read model into `schema`'s empty tables from every event after `start`,
    chunk by chunk (one transaction each: the rows, parked events, `save_checkpoint`).
    The caller's connection is in autocommit mode. Returns the events read."""
    with _no_cycle_collection():
        return _build(conn, schema, park, save_checkpoint, start or Checkpoint(), progress,
                      chunk)


def _build(conn: Conn, schema: str, park: Callable[[Conn, int, str], None],
           save_checkpoint: Callable[[Conn, Checkpoint], None], at: Checkpoint,
           progress: Callable[[int], None] | None, chunk: int) -> int:
    mode = LoadingMode.of(conn, schema, TABLES)
    set_json_dumps(_encode_json, context=conn)  # metadata → jsonb, as the projector encodes it
    search_path = sql.SQL("SET LOCAL search_path = {}, public").format(sql.Identifier(schema))
    with conn.transaction():
        mode.enter(conn)  # as the owner from here, RLS not forced
        conn.execute(search_path)
        if (conn.execute(SELECT_NOT_EMPTY).fetchone() or (True,))[0]:
            raise BulkBuildRefused(f"{schema} holds sessions or messages: it must be empty")
    total = 0
    spent = {"read": 0.0, "decode": 0.0, "lookup": 0.0, "fold": 0.0, "write": 0.0}
    fully_looked_up = 0  # chunks folded with every look-up (a delete, or a wrong guess)
    while True:
        with conn.transaction():
            clock = time.perf_counter()
            horizon = conn.execute(READ_HORIZON).fetchone()
            rows = conn.execute(READ_EVENTS, {"txid": str(at.txid), "position": at.position,
                                              "horizon": horizon[0] if horizon else "0",
                                              "limit": chunk}).fetchall()
            spent["read"] += time.perf_counter() - clock
            if not rows:
                break
            clock = time.perf_counter()
            conn.execute(search_path)
            mode.as_owner(conn)
            decode = ev.decode_event
            events = [(position, decode(data), recorded_at)
                      for position, _txid, data, recorded_at in rows]
            spent["decode"] += time.perf_counter() - clock
            optimistic = not any(isinstance(e, ev.SessionDeleted) for _, e, _ in events)
            if not optimistic:
                mode.restore_indexes(conn, DELETE_INDEXES)
            try:
                with conn.transaction():  # a savepoint: an optimistic guess may be wrong
                    failed = _fold_and_write(conn, events, optimistic, spent)
                fully_looked_up += not optimistic
            except (psycopg.errors.UniqueViolation, _GuessedWrong):
                failed = _fold_and_write(conn, events, False, spent)
                fully_looked_up += 1
            clock = time.perf_counter()
            conn.execute("SET LOCAL ROLE NONE")
            for position, why in failed:
                park(conn, position, why)
            at = Checkpoint(rows[-1][1], rows[-1][0])
            save_checkpoint(conn, at)
            n = len(rows)
            del events, rows  # before the next chunk is read
        spent["write"] += time.perf_counter() - clock  # with the commit
        total += n
        if progress:
            progress(n)
    clock = time.perf_counter()
    with conn.transaction():
        mode.leave(conn)
    spent["constraints"] = time.perf_counter() - clock
    log.info("replay_bulk_build", events=total, chunk=chunk, fully_looked_up=fully_looked_up,
             **{f"{k}_seconds": round(v, 3) for k, v in spent.items()})
    return total


class _GuessedWrong(Exception):
    """An optimistic chunk needed a row it did not look up."""


def _fold_and_write(conn: Conn, events: Sequence[tuple[int, ev.Event, dt.datetime]],
                    optimistic: bool, spent: dict[str, float]) -> list[tuple[int, str]]:
    """Folds a chunk from the rows its events touch and writes its rounds with COPY;
    returns the events the fold refused, with why.

    Optimistic: most of a chunk's message and turn ids are new, created by the chunk
    itself, and probing the keys for them costs more than the fold. So, in a chunk that
    deletes no session, message ids are not looked up, nor turns whose first mention is a
    user message. The keys still guard them: a message or turn that did exist makes its
    COPY fail (unique violation), and a guessed turn the fold did not insert means it may
    have been needed; either way the caller rolls the chunk back and folds it again with
    every look-up. A delete would hide a duplicate message (and the refusal the projector
    would log) by dropping it: such chunks look everything up."""
    clock = time.perf_counter()
    wanted = needs(e for _, e, _ in events)
    guessed: set[uuid.UUID] = set()
    if optimistic:
        wanted.messages.clear()
        guessed = _introduced_turns(e for _, e, _ in events)
        wanted.turns -= guessed
    fold = ReadModelFold(load_known(conn, wanted))
    spent["lookup"] += time.perf_counter() - clock
    clock = time.perf_counter()
    failed: list[tuple[int, str]] = []
    apply = fold.apply
    for position, event, recorded_at in events:
        why = apply(event, recorded_at)
        if why is not None:
            failed.append((position, why))
    rounds = fold.rounds()
    spent["fold"] += time.perf_counter() - clock
    if guessed and not guessed <= {t for r in rounds for t in r.turns_new}:
        raise _GuessedWrong
    clock = time.perf_counter()
    for changes in rounds:
        write_round(conn, changes, copy_rows)
    spent["write"] += time.perf_counter() - clock
    return failed


def _introduced_turns(events: Iterable[ev.Event]) -> set[uuid.UUID]:
    """Turns whose first mention is a user message (the message that creates them)."""
    seen: set[uuid.UUID] = set()
    introduced: set[uuid.UUID] = set()
    for e in events:
        if isinstance(e, ev.MessagePosted) and e.turn_id is not None and e.turn_id not in seen:
            seen.add(e.turn_id)
            if e.role == "user":
                introduced.add(e.turn_id)
    return introduced
