"""POST /api/v1/sessions/{id}/stop: stop the reply being written in a session.

The stop is a short-lived Redis key the assistant checks between deltas; it then stores what
it has written so far with finish_reason "stopped". Nothing running is not an error (204):
a client racing a reply's end cannot know which came first.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from litestar import Controller, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from psycopg_pool import AsyncConnectionPool

from services.command.auth import Caller
from services.command.store import owned_stream_version
from services.core.events import session_stream
from services.core.settings import Settings
from services.http.errors import error_responses
from services.http.sse import live_redis, request_stop

log = structlog.get_logger("command.stop")


class StopController(Controller):
    path = "/api/v1/sessions/{session_id:str}"
    tags = ("sessions",)

    @post("/stop", operation_id="stopReply", status_code=204,
          responses=error_responses(400, 401, 404))
    async def stop_reply(
        self,
        session_id: FromPath[uuid.UUID],
        state: State,
        pool: NamedDependency[AsyncConnectionPool[Any]],
        settings: NamedDependency[Settings],
        caller: NamedDependency[Caller],
    ) -> None:
        """Stops the assistant's reply in progress; what it wrote so far is kept."""
        async with pool.connection() as conn:
            # 404 for a missing, deleted or someone else's session, alike.
            await owned_stream_version(
                conn, session_stream(session_id), "session", caller.user_id, lock=False
            )
        await request_stop(live_redis(state, settings), settings, session_id)
        log.info("reply_stop_requested", session_id=str(session_id))
