"""What the command side tells the workers after a commit, off the event loop.

The broker calls are blocking Redis round trips, so they run in a worker thread, bounded by
a timeout: a Redis that hangs must not hang the request (the thread is abandoned).
"""

from __future__ import annotations

import uuid

import anyio
import dramatiq
import structlog

from workers import broker as messages

log = structlog.get_logger("command.notify")

ENQUEUE_TIMEOUT_SECONDS = 5.0


async def nudge_projector(broker: dramatiq.Broker) -> None:
    """Best effort: a lost nudge only delays projection until the projector's sweep."""
    try:
        with anyio.fail_after(ENQUEUE_TIMEOUT_SECONDS):
            await anyio.to_thread.run_sync(
                messages.nudge_projector, broker, abandon_on_cancel=True
            )
    except Exception as exc:  # any broker failure: the sweep catches up
        log.warning("projector_nudge_failed", error=repr(exc))


async def nudge_and_request_reply(
    broker: dramatiq.Broker, session_id: uuid.UUID, message_id: uuid.UUID
) -> None:
    """nudge_projector then request_reply, in one worker thread instead of two: a failed
    nudge is logged, a failed reply request raises (the caller answers 503). The time-out
    is the two calls' together."""
    with anyio.fail_after(2 * ENQUEUE_TIMEOUT_SECONDS):
        nudge_error, reply_error = await anyio.to_thread.run_sync(
            messages.nudge_and_request_reply, broker, session_id, message_id,
            abandon_on_cancel=True,
        )
    if nudge_error is not None:  # the sweep catches up
        log.warning("projector_nudge_failed", error=repr(nudge_error))
    if reply_error is not None:
        raise reply_error
