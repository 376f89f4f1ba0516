"""One way to follow the event store: the loop behind the projector, the analytics publisher
and the reply dispatcher.

A follower has a name (its row in projection_checkpoints) and a handler. One step, in one
transaction: claim the checkpoint row (FOR UPDATE SKIP LOCKED: one follower of a name runs at
a time), read the next events below the read horizon in (txid, position) order
(services/core/eventstore.py), hand them to the handler, and save the checkpoint after the
last event it handled. The handler's database writes commit with the checkpoint (exactly
once); its effects elsewhere (Redis, the broker) happen before the commit, so a crash repeats
them (at least once) and the handler makes them idempotent.

When it runs: on a wake-up (services/core/wakeup.py, a Redis message sent after every append's
commit), and on a slow sweep that covers a lost wake-up. An event whose transaction committed
while an older one was still running sits above the horizon for a moment: the loop then looks
again shortly (every 250 ms at most) until it is through, instead of waiting for the sweep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
import structlog
from psycopg_pool import ConnectionPool

from services.core.db import PROJECTOR_ROLE, SET_LOCAL_ROLE
from services.core.eventstore import (
    RecordedEvent,
    claim_checkpoint_sync,
    read_all_sync,
    save_checkpoint_sync,
)
from services.core.settings import Settings
from services.core.wakeup import channel

log = structlog.get_logger("follower")

# Before a step takes its locks: is there anything to read, and is anything committed but
# still held back by an older running transaction? Read-only, so asking costs no commit (a
# step that locks the checkpoint writes, and its commit waits for the WAL). The transaction
# holding an event back may send no wake-up when it ends (another follower's), so while one
# is, the loop looks again on HELD_BACK_RETRY_SECONDS, the last pause repeating.
PENDING = """
SELECT EXISTS (SELECT 1 FROM events e
                WHERE (e.txid, e.position) > (coalesce(c.last_txid, '0'::xid8),
                                              coalesce(c.last_position, 0))
                  AND e.txid < h.horizon),
       EXISTS (SELECT 1 FROM events e WHERE e.txid >= h.horizon)
  FROM (SELECT event_read_horizon() AS horizon) h
  LEFT JOIN projection_checkpoints c ON c.name = %s
"""
HELD_BACK_RETRY_SECONDS = (0.005, 0.02, 0.05, 0.1, 0.25)

Handler = Callable[[psycopg.Connection[Any], list[RecordedEvent]], list[RecordedEvent]]


@dataclass(frozen=True)
class Follower:
    name: str  # its checkpoint row
    # Handles a batch in the step's transaction; returns the events the checkpoint may move
    # past (a prefix of the batch: a failing event stops it short). Raising rolls back.
    handle: Handler
    batch_size: int = 500
    # After the commit, with what was handled (logging).
    committed: Callable[[list[RecordedEvent]], None] | None = None


def follow_batch(
    conn: psycopg.Connection[Any], follower: Follower, *, wait: bool = False
) -> int | None:
    """One step; returns how many events the checkpoint moved past, or None when another
    follower of this name holds the checkpoint (unless `wait`: then it queues for it)."""
    with conn.transaction():
        conn.execute(SET_LOCAL_ROLE.format(PROJECTOR_ROLE))
        checkpoint = claim_checkpoint_sync(conn, follower.name, wait=wait)
        if checkpoint is None:
            return None
        batch = read_all_sync(conn, checkpoint, follower.batch_size)
        if not batch:
            return 0
        done = follower.handle(conn, batch)
        if done:
            save_checkpoint_sync(conn, follower.name, done[-1].checkpoint)
    if done and follower.committed:
        follower.committed(done)
    return len(done)


def catch_up(conn: psycopg.Connection[Any], follower: Follower, *, wait: bool = False) -> int:
    """Steps until there is nothing more to read, a batch stops short (a failing event: the
    next run retries it) or another follower holds the checkpoint. Returns the count."""
    total = 0
    while True:
        n = follow_batch(conn, follower, wait=wait)
        if not n:
            return total
        total += n
        if n < follower.batch_size:
            return total


def pending(conn: psycopg.Connection[Any], name: str) -> tuple[bool, bool]:
    """(something to read, something held back) for the follower `name`."""
    row = conn.execute(PENDING, (name,)).fetchone()
    conn.rollback()  # read only; the pool wants the connection idle
    return (bool(row[0]), bool(row[1])) if row else (False, False)


class FollowerThread(threading.Thread):
    """Runs one follower: on each wake-up, after a held-back event, and every sweep."""

    def __init__(self, pool: ConnectionPool, follower: Follower, sweep_seconds: float,
                 stop: threading.Event) -> None:
        super().__init__(name=f"follow-{follower.name}", daemon=True)
        self.pool, self.follower, self.sweep_seconds, self.stop = (
            pool, follower, sweep_seconds, stop)
        self.news = threading.Event()

    def run(self) -> None:
        retry = 0
        while not self.stop.is_set():
            self.news.clear()
            pause = self.sweep_seconds
            try:
                with self.pool.connection() as conn:
                    readable, held = pending(conn, self.follower.name)
                    # wait for the checkpoint: a holder in another process may have read
                    # before the event this wake-up is about was committed
                    if readable and catch_up(conn, self.follower, wait=True):
                        pause, retry = 0.0, 0  # moved: look again at once
                    elif readable or held:  # held back, or an event failing for now
                        pause = HELD_BACK_RETRY_SECONDS[
                            min(retry, len(HELD_BACK_RETRY_SECONDS) - 1)]
                        retry += 1
                    else:
                        retry = 0
            except Exception:  # keep following: the database may be back next time
                log.exception("follow_failed", follower=self.follower.name)
            if pause and self.news.wait(pause):
                retry = 0


def listen_for_wakeups(client: redis.Redis, settings: Settings,
                       followers: list[FollowerThread], stop: threading.Event) -> None:
    """The worker's subscriber thread: every wake-up nudges every follower."""
    while not stop.is_set():
        try:
            with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                pubsub.subscribe(channel(settings))
                for f in followers:  # anything sent while unsubscribed
                    f.news.set()
                while not stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        for f in followers:
                            f.news.set()
        except Exception as exc:  # Redis down: the sweeps carry on; subscribe again
            log.warning("wakeup_listener_failed", error=repr(exc))
            stop.wait(1.0)
