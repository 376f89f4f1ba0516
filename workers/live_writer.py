"""The live reply relay's writer: the assistant's side (sync: it runs in worker threads).
The format is services/core/livewire.py's."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import redis

from services.core.livewire import (
    DELTA,
    DONE,
    ERROR,
    MESSAGE,
    STARTED,
    latest_key,
    live_key,
    stop_key,
    text,
)
from services.core.settings import Settings

# XADD + EXPIRE + (SET latest | EXPIRE latest) in one step: a reader never sees a reply's
# `started` entry without `latest` pointing at it, and the two keys expire together.
_APPEND_LUA = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                      'type', ARGV[3], 'reply', ARGV[4], 'data', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[6] == '1' then
    redis.call('SET', KEYS[2], id, 'EX', ARGV[2])
else
    redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return id
"""


class LiveWriter:
    """Writes one reply's entries. Call reply_started first; every later entry carries the
    same `reply` so readers can follow this reply alone."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        session_id: uuid.UUID,
        reply_to: uuid.UUID | None = None,  # to end a reply another writer started
    ) -> None:
        self._settings = settings
        self._keys = [live_key(settings, session_id), latest_key(settings, session_id)]
        self._append = client.register_script(_APPEND_LUA)
        self._reply = str(reply_to) if reply_to is not None else ""

    def _write(self, kind: str, data: Mapping[str, Any], *, start: bool = False) -> str:
        s = self._settings
        entry_id = self._append(
            keys=self._keys,
            args=[
                s.live_stream_maxlen,
                s.live_stream_ttl_seconds,
                kind,
                self._reply,
                json.dumps(data, default=str),
                "1" if start else "0",
            ],
        )
        return text(entry_id)

    def reply_started(self, turn_id: uuid.UUID | None, reply_to: uuid.UUID) -> str:
        self._reply = str(reply_to)
        data = {"turn_id": turn_id and str(turn_id), "reply_to": self._reply}
        return self._write(STARTED, data, start=True)

    def delta(self, text: str) -> str:
        return self._write(DELTA, {"text": text})

    def message(self, message: Mapping[str, Any]) -> str:
        return self._write(MESSAGE, message)

    def done(self, **info: Any) -> str:
        return self._write(DONE, {"reply_to": self._reply, **info})

    def error(self, code: str, detail: str) -> str:
        return self._write(ERROR, {"error": code, "detail": detail, "reply_to": self._reply})


def stop_requested(client: redis.Redis, settings: Settings, session_id: uuid.UUID) -> bool:
    return bool(client.exists(stop_key(settings, session_id)))


def clear_stop(client: redis.Redis, settings: Settings, session_id: uuid.UUID) -> None:
    client.delete(stop_key(settings, session_id))
