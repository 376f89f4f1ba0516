"""The live reply relay's wire format, shared by its writer (workers/live_writer.py, the
assistant) and its readers (services/http/sse.py, the SSE responses of both services).

Assistant deltas travel to SSE clients through one Redis Stream per session. Why a Redis
Stream: every entry has an id that is also the SSE event id, so a client that reconnects
with Last-Event-ID gets exactly what it missed, any number of clients (and service
instances) read the same reply, and the writer never waits for readers. Length is bounded
(XADD MAXLEN ~) and the key expires (EXPIRE refreshed on each write).

Entries: `type` (started | delta | message | done | error), `reply` (the user message id the
reply answers, so readers can tell concurrent replies in one session apart) and `data` (the
SSE data, JSON). `started` is an internal marker, never sent to clients; its id is also kept
in `{prefix}live:{session}:latest` so a reader without Last-Event-ID starts at the beginning
of the latest reply. A stop request is the key `{prefix}stop:{session}`. Every key here
starts with settings.redis_prefix.
"""

from __future__ import annotations

import uuid

from services.core.settings import Settings

STARTED, DELTA, MESSAGE, DONE, ERROR = "started", "delta", "message", "done", "error"
FINAL = frozenset({DONE, ERROR})
STOP_TTL_SECONDS = 30  # a stop is for the reply being written now, not one hours later


# Key names carry a Redis Cluster hash tag (the part in braces picks the slot): a session's
# keys share one slot, so the writer's script over live + latest stays on one node.


def live_key(settings: Settings, session_id: uuid.UUID | str) -> str:
    return f"{settings.redis_prefix}live:{{{session_id}}}"


def latest_key(settings: Settings, session_id: uuid.UUID | str) -> str:
    return f"{settings.redis_prefix}live:{{{session_id}}}:latest"


def stop_key(settings: Settings, session_id: uuid.UUID | str) -> str:
    return f"{settings.redis_prefix}stop:{{{session_id}}}"


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
