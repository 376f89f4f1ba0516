"""The live read-model projector: events → users, sessions, chat_messages, user_projects,
dossier and the legacy turns, a batch at a time.

The rules are not here: workers/fold.py turns a batch into row changes (the same fold the
replay uses), and this module writes them with a few set-based statements per batch
(workers/fold_sql.py), so the statement-level trigger on chat_messages updates each
session once per batch, not once per row.

It is a follower of the event store (workers/follower.py): the checkpoint is written in the
same transaction as the rows (exactly-once effect), so wake-ups are only hints: lost or
duplicated ones never lose or double anything. One projector applies the projection at a
time (the checkpoint row is locked).

Poison events: when a batch fails (the fold refuses an event, or the database refuses a
row), it is re-applied one event at a time, each in a savepoint. The failing event's
attempts are counted in parked_events; the checkpoint stops just before it and the next run
retries. After projector_max_attempts it is parked (left in parked_events with parked =
true, logged with its position) and the projection goes on. Operators list parked events
with `SELECT * FROM parked_events WHERE parked`.

Logs: one INFO line per batch (`batch_projected`: how many, the positions, the request and
correlation ids it carried); one DEBUG line per event (`event_projected`).
"""

from __future__ import annotations

from typing import Any

import psycopg
import structlog

from services.core.eventstore import RecordedEvent
from workers.fold import EventRefused, ReadModelFold, needs
from workers.fold_sql import insert_rows, load_known, write_round
from workers.follower import Follower, Handler
from workers.follower import catch_up as follow

PROJECTION = "read_model"
REFUSED = (psycopg.Error, EventRefused)  # what makes a batch fall back to one event at a time

log = structlog.get_logger("projector")

COUNT_FAILURE = """
INSERT INTO parked_events AS p (projection, position, error, parked)
VALUES (%(projection)s, %(position)s, %(error)s, %(max_attempts)s <= 1)
ON CONFLICT (projection, position) DO UPDATE
   SET attempts = p.attempts + 1, error = EXCLUDED.error,
       parked = p.attempts + 1 >= %(max_attempts)s, updated_at = clock_timestamp()
RETURNING parked
"""


def apply_events(conn: psycopg.Connection[Any], batch: list[RecordedEvent]) -> None:
    """Writes the read-model rows for these events in the caller's transaction, through
    unqualified table names (replay points search_path at the tables it builds): the fold's
    look-ups, then its rounds, each a few set-based statements, pipelined. Raises
    EventRefused or psycopg.Error when an event cannot be applied (nothing is written)."""
    known = load_known(conn, needs(r.event for r in batch))
    fold = ReadModelFold(known)
    for recorded in batch:
        why = fold.apply(recorded.event, recorded.recorded_at)
        if why is not None:
            raise EventRefused(f"event {recorded.position}: {why}")
    with conn.pipeline():
        for changes in fold.rounds():
            write_round(conn, changes, insert_rows)


def _handle(max_attempts: int) -> Handler:
    def handle(conn: psycopg.Connection[Any], batch: list[RecordedEvent]) -> list[RecordedEvent]:
        try:
            # the fast path, the whole batch in one savepoint; pipeline mode sends the
            # statements without waiting for each answer
            with conn.pipeline(), conn.transaction():
                apply_events(conn, batch)
            return batch
        except REFUSED:
            return _apply_carefully(conn, batch, max_attempts)

    return handle


def _projected(done: list[RecordedEvent]) -> None:
    """After commit: a summary at INFO carrying the ids of the requests that caused the
    batch, and a line per event at DEBUG."""
    if not done:
        return
    for recorded in done:
        log.debug("event_projected", position=recorded.position, type=recorded.type,
                  stream_id=recorded.stream_id,
                  request_id=recorded.metadata.get("request_id"),
                  correlation_id=recorded.metadata.get("correlation_id"))
    positions = [r.position for r in done]
    log.info("batch_projected", events=len(done), first_position=min(positions),
             last_position=max(positions),
             request_ids=sorted({r.metadata["request_id"] for r in done
                                 if r.metadata.get("request_id")}),
             correlation_ids=sorted({r.metadata["correlation_id"] for r in done
                                     if r.metadata.get("correlation_id")}))


def read_model_follower(*, batch_size: int = 500, max_attempts: int = 3) -> Follower:
    """The projector as a follower of the event store (workers/follower.py)."""
    return Follower(PROJECTION, _handle(max_attempts), batch_size, committed=_projected)


def _apply_carefully(
    conn: psycopg.Connection[Any], batch: list[RecordedEvent], max_attempts: int
) -> list[RecordedEvent]:
    """One event per savepoint; returns the events the checkpoint may move past."""
    for i, recorded in enumerate(batch):
        try:
            with conn.transaction():
                apply_events(conn, [recorded])
        except REFUSED as exc:
            parked = conn.execute(COUNT_FAILURE, {
                "projection": PROJECTION, "position": recorded.position,
                "error": f"{type(exc).__name__}: {exc}", "max_attempts": max_attempts,
            }).fetchone()
            if parked and parked[0]:
                log.error("event_parked", projection=PROJECTION, position=recorded.position,
                          type=recorded.type, error=str(exc))
                continue
            log.warning("event_failed", projection=PROJECTION, position=recorded.position,
                        type=recorded.type, error=str(exc))
            return batch[:i]
    return batch


def catch_up(conn: psycopg.Connection[Any], *, batch_size: int = 500,
             max_attempts: int = 3) -> int:
    """Projects until there is nothing more to read (or another projector has the lock).

    Returns how many events were applied.
    """
    return follow(conn, read_model_follower(batch_size=batch_size, max_attempts=max_attempts))
