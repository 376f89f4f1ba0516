"""Actor declarations. Thin: the body calls one plain function with the worker's runtime.

The assistant's job never retries: a failed reply is recorded (AssistantReplyFailed) and the
user posts again; Dramatiq's back-off (15 s and up) is no way to answer a person.
"""

from __future__ import annotations

import dramatiq

from workers.assistant import answer
from workers.broker import ASSISTANT_ACTOR, ASSISTANT_QUEUE
from workers.runtime import WorkerRuntime


def declare_actors(runtime: WorkerRuntime) -> None:
    def assistant_reply(session_id: str, message_id: str) -> None:
        answer(runtime, session_id, message_id)

    dramatiq.Actor(assistant_reply, broker=runtime.broker, actor_name=ASSISTANT_ACTOR,
                   queue_name=ASSISTANT_QUEUE, priority=0,
                   options={"max_retries": 0,
                            "time_limit": int(runtime.settings.llm_timeout_seconds * 2000)})
