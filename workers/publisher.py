"""The analytics stream: every committed event, in global order, on a Redis Stream.

The publisher is a follower of the event store like the projector (workers/follower.py:
(txid, position) order, only below the oldest running transaction) with its own checkpoint
row, `publisher` in projection_checkpoints, so one publisher runs at a time. Per batch: XADD
every event, then move the checkpoint and commit.
A crash between the two sends the batch again (at-least-once)...

...but the stream still holds each event once, because the entry ID is the event's place
in the global order: `<txid>-<position>`. Redis refuses an XADD whose ID is not above the
stream's last one, so a resent event is refused and counted as already published. Entry IDs
therefore grow with the global order and say nothing about time (read recorded_at for
that; never trim by MINID). Consumers reading from a consumer group still get at-least-once
delivery (an entry is redelivered when a consumer dies before XACK), so they deduplicate
by the entry ID, which is (txid, position): one reader can keep "the last ID I applied" and
skip anything not above it; parallel readers keep the set of positions applied within
their window. `position` alone is unique too, but not monotonic (a transaction that
commits late has a lower position).

The envelope (docs/events.schema.json): position, txid, stream_id, type, version, data (the
event as JSON), metadata (JSON), recorded_at (ISO 8601). Redis stores strings: integers are
decimal, data and metadata JSON text.

Deleted sessions. The store purges a session's content in the transaction that appends
SessionDeleted. Events published before that went out with their text: when the publisher
publishes SessionDeleted it XDELs the session's earlier entries (their IDs are known from
the store), so the stream no longer holds the text; events published after the purge carry
none. A consumer that already read the text keeps its copy: SessionDeleted is the contract
telling it to erase that copy. (XDEL leaves IDs in consumer groups' pending lists; reading
them back gives an entry without fields, which consumers acknowledge and skip.) A deleted
account likewise: publishing UserDeleted XDELs every other entry of the user's streams.

Retention: XADD MAXLEN ~ STREAM_MAXLEN. A consumer that falls further behind catches up
from the event store (read_all from a checkpoint) and then switches to the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
import redis
import structlog

from services.core.events import AnyEvent, SessionDeleted, UserDeleted, encode_event
from services.core.eventstore import RecordedEvent
from services.core.settings import Settings
from workers.follower import Follower, catch_up, follow_batch

log = structlog.get_logger("publisher")

CHECKPOINT_NAME = "publisher"
# Defaults of the functions below; the worker passes the settings' values.
STREAM_MAXLEN = 1_000_000  # = Settings().events_stream_maxlen
BATCH_SIZE = 1_000
_DUPLICATE = "equal or smaller than the target stream top item"

# The entries a SessionDeleted takes back: the stream's events before it.
SELECT_EARLIER_IDS = """
SELECT txid::text || '-' || position FROM events
 WHERE stream_id = %s AND version < %s ORDER BY version
"""
# The entries a UserDeleted takes back: every other event of the streams the user owned.
SELECT_OWNED_IDS = """
SELECT e.txid::text || '-' || e.position
  FROM event_streams s JOIN events e ON e.stream_id = s.stream_id
 WHERE s.owner_id = %s AND e.position <> %s
"""
SELECT_ENTRY_ID = "SELECT txid::text || '-' || position FROM events WHERE position = %s"


def stream_key(settings: Settings) -> str:
    return f"{settings.redis_prefix}{settings.events_stream}"


def entry_id(txid: int, position: int) -> str:
    return f"{txid}-{position}"


def envelope(recorded: RecordedEvent) -> dict[str, str]:
    return {
        "position": str(recorded.position),
        "txid": str(recorded.txid),
        "stream_id": recorded.stream_id,
        "type": recorded.type,
        "version": str(recorded.version),
        "data": encode_event(recorded.event).decode(),
        "metadata": msgspec.json.encode(recorded.metadata).decode(),
        "recorded_at": recorded.recorded_at.isoformat(),
    }


def decode_envelope(fields: dict[bytes, bytes] | dict[str, str]) -> dict[str, Any]:
    """A stream entry as the JSON document docs/events.schema.json describes."""
    raw = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v) for k, v in fields.items()}
    return {
        **raw,
        "position": int(raw["position"]),
        "txid": int(raw["txid"]),
        "version": int(raw["version"]),
        "data": msgspec.json.decode(raw["data"]),
        "metadata": msgspec.json.decode(raw["metadata"]),
    }


def envelope_schema() -> dict[str, Any]:
    """The envelope's JSON Schema, `data` generated from the event types themselves."""
    data_schema = msgspec.json.schema(AnyEvent)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://chat-sessions.invalid/events.schema.json",
        "title": "Analytics event envelope",
        "description": (
            "One entry of the Redis Stream `{redis_prefix}events`, as a JSON document. In "
            "Redis every field is a string: integers in decimal, data and metadata as JSON "
            "text. The entry ID is `<txid>-<position>`: it orders entries by the global "
            "order and is the idempotency key (see workers/publisher.py)."
        ),
        "type": "object",
        "required": ["position", "txid", "stream_id", "type", "version", "data", "metadata",
                     "recorded_at"],
        "additionalProperties": False,
        "properties": {
            "position": {"type": "integer", "minimum": 1,
                         "description": "The event's global position (unique)."},
            "txid": {"type": "integer", "minimum": 1,
                     "description": "The writing transaction; (txid, position) is the order."},
            "stream_id": {"type": "string",
                          "pattern": "^(user|project|session)-[0-9a-f-]{36}$"},
            "type": {"enum": sorted(t.__struct_config__.tag  # type: ignore[attr-defined]
                                    for t in AnyEvent.__args__)},  # type: ignore[attr-defined]
            "version": {"type": "integer", "minimum": 1,
                        "description": "The event's version within its stream."},
            "data": {"anyOf": data_schema["anyOf"],
                     "description": "The event; `type` repeats the envelope's type. Fields "
                                    "are added over time (with defaults): ignore unknown ones."},
            "metadata": {
                "type": "object",
                "description": "Who and why: user_id, correlation_id, causation_id, "
                               "request_id (each optional, more may be added).",
                "properties": {k: {"type": "string"} for k in
                               ("user_id", "correlation_id", "causation_id", "request_id")},
            },
            "recorded_at": {"type": "string", "format": "date-time"},
        },
        "$defs": data_schema["$defs"],
    }


def _is_duplicate(result: object) -> bool:
    return isinstance(result, redis.ResponseError) and _DUPLICATE in str(result)


def publisher_follower(client: redis.Redis, key: str, *, batch_size: int = BATCH_SIZE,
                       maxlen: int = STREAM_MAXLEN,
                       before_checkpoint: Callable[[], None] | None = None) -> Follower:
    """The publisher as a follower of the event store (workers/follower.py): per batch, XADD
    every event, then the checkpoint moves. `before_checkpoint` lets tests crash at the
    worst time."""

    def handle(conn: psycopg.Connection[Any], batch: list[RecordedEvent]) -> list[RecordedEvent]:
        pipe = client.pipeline(transaction=False)
        for recorded in batch:
            pipe.xadd(key, envelope(recorded),  # type: ignore[arg-type]
                      id=entry_id(recorded.txid, recorded.position),
                      maxlen=maxlen, approximate=True)
            if isinstance(recorded.event, SessionDeleted):
                earlier = [r[0] for r in conn.execute(
                    SELECT_EARLIER_IDS, (recorded.stream_id, recorded.version))]
                if earlier:
                    pipe.xdel(key, *earlier)
            elif isinstance(recorded.event, UserDeleted):
                owned = [r[0] for r in conn.execute(
                    SELECT_OWNED_IDS, (recorded.event.user_id, recorded.position))]
                if owned:
                    pipe.xdel(key, *owned)
        duplicates = 0
        for result in pipe.execute(raise_on_error=False):
            if _is_duplicate(result):
                duplicates += 1
            elif isinstance(result, Exception):
                raise result
        if before_checkpoint:
            before_checkpoint()
        if duplicates:
            log.info("publisher_skipped_duplicates", count=duplicates)
        return batch

    return Follower(CHECKPOINT_NAME, handle, batch_size)


def publish_batch(conn: psycopg.Connection[Any], client: redis.Redis, key: str, *,
                  batch_size: int = BATCH_SIZE, maxlen: int = STREAM_MAXLEN,
                  before_checkpoint: Callable[[], None] | None = None) -> int | None:
    """Publishes up to batch_size events; returns how many, or None when another
    publisher holds the checkpoint."""
    return follow_batch(conn, publisher_follower(
        client, key, batch_size=batch_size, maxlen=maxlen, before_checkpoint=before_checkpoint))


def publish_pending(conn: psycopg.Connection[Any], client: redis.Redis, key: str, *,
                    batch_size: int = BATCH_SIZE, maxlen: int = STREAM_MAXLEN) -> int:
    """Publishes until caught up (or another publisher has the lock); returns the count."""
    return catch_up(conn, publisher_follower(client, key, batch_size=batch_size,
                                             maxlen=maxlen))


# `chatctl events tail` ----------------------------------------------------------------------

TAIL_PAGE = 100


def format_entry(entry_id: str, fields: dict[bytes, bytes]) -> str:
    """One line per event for humans: position, time, type, stream, version, data."""
    if not fields:  # XDEL'd after a SessionDeleted, still pending in a group
        return f"{entry_id:>24}  (deleted)"
    e = decode_envelope(fields)
    data = {k: v for k, v in e["data"].items() if k != "type"}
    summary = msgspec.json.encode(data).decode()
    summary = summary if len(summary) <= 100 else summary[:97] + "..."
    return (f"{e['position']:>10}  {e['recorded_at']}  {e['type']:<20} "
            f"{e['stream_id']} v{e['version']}  {summary}")


def start_id(conn: psycopg.Connection[Any], from_position: int | None) -> str:
    """The entry ID of the event at `from_position` ("-": the oldest entry kept)."""
    if from_position is None:
        return "-"
    row = conn.execute(SELECT_ENTRY_ID, (from_position,)).fetchone()
    if row is None:
        raise LookupError(f"no event at position {from_position}")
    return str(row[0])


def tail(client: redis.Redis, key: str, start: str, *, group: str | None = None,
         consumer: str = "chatctl", follow: bool = False, limit: int | None = None,
         echo: Callable[[str], None] = print) -> int:
    """Prints the stream from `start`; returns the number of entries printed.

    Without a group it reads with XRANGE (and XREAD BLOCK when following). With one it
    reads as a consumer group member: XGROUP CREATE (at `start` when the group is new),
    XREADGROUP ... '>' for entries never delivered to the group, XACK after each is handled.
    """
    printed = 0

    def show(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        nonlocal printed
        for raw_id, fields in entries:
            echo(format_entry(raw_id.decode(), fields))
            printed += 1
            if group:
                client.xack(key, group, raw_id)

    def room() -> int:
        return TAIL_PAGE if limit is None else min(TAIL_PAGE, limit - printed)

    if group:
        try:
            client.xgroup_create(key, group, id="0" if start == "-" else _before(start),
                                 mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        while room() > 0:
            reply: Any = client.xreadgroup(group, consumer, {key: ">"}, count=room(),
                                           block=1000 if follow else None)
            delivered = reply[0][1] if reply else []
            if not delivered and not follow:
                break
            show(delivered)
        return printed

    last = start
    while room() > 0:
        entries: Any = client.xrange(key, min=last, count=room())
        if not entries:
            if not follow:
                break
            more: Any = client.xread({key: _after(last)}, count=room(), block=1000)
            entries = more[0][1] if more else []
        show(entries)
        if entries:
            last = "(" + entries[-1][0].decode()  # exclusive: after the last one shown
    return printed


def _after(entry: str) -> str:
    """XREAD takes the ID to read after; XRANGE's "(id" and "-" mean the same there."""
    return "0-0" if entry == "-" else entry.lstrip("(")


def _before(entry: str) -> str:
    """A group created at ID x delivers entries after x: step back one so x is included."""
    ms, seq = (int(p) for p in entry.split("-"))
    return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{2**64 - 1}"
