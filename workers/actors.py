"""Actor declarations. Thin: each body calls one plain function with the worker's runtime.

Projector messages never retry: the message is only a nudge and the sweep re-runs the
projector every projector_sweep_seconds anyway (Dramatiq's back-off starts at 15 s).
"""

from __future__ import annotations

import dramatiq

from workers.broker import ASSISTANT_ACTOR, ASSISTANT_QUEUE, PROJECT_ACTOR, PROJECTOR_QUEUE
from workers.projector import catch_up
from workers.runtime import WorkerRuntime


def project_pending(runtime: WorkerRuntime) -> int:
    s = runtime.settings
    with runtime.pool.connection() as conn:
        return catch_up(conn, batch_size=s.projector_batch_size,
                        max_attempts=s.projector_max_attempts)


def declare_actors(runtime: WorkerRuntime) -> None:
    def project_events() -> None:
        project_pending(runtime)

    def assistant_reply(session_id: str, message_id: str) -> None:
        from workers.assistant import answer

        answer(runtime, session_id, message_id)

    dramatiq.Actor(project_events, broker=runtime.broker, actor_name=PROJECT_ACTOR,
                   queue_name=PROJECTOR_QUEUE, priority=0,
                   options={"max_retries": 0, "time_limit": 60_000})
    dramatiq.Actor(assistant_reply, broker=runtime.broker, actor_name=ASSISTANT_ACTOR,
                   queue_name=ASSISTANT_QUEUE, priority=0,
                   options={"max_retries": 0,
                            "time_limit": int(runtime.settings.llm_timeout_seconds * 2000)})
