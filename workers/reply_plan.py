"""What answering a user message needs, read from its session's events: the question, the
conversation before it, who asked, and whether it is answered already (a reply is keyed by
the message it answers: the assistant writes at most one per message)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog

from services.core.events import AssistantReplyFailed, MessagePosted, session_stream
from services.core.eventstore import RecordedEvent, read_stream_sync, stream_info_sync
from workers.providers import ChatMessage
from workers.runtime import WorkerRuntime

log = structlog.get_logger("assistant")

SYSTEM_PROMPT = (
    "You are a creative writing assistant. Help the user plan and write their story: "
    "be concrete, encouraging and brief, and end with a question that moves the work on."
)


class Plan(msgspec.Struct, kw_only=True):
    """What answering needs, read from the session's events."""

    session_id: uuid.UUID
    reply_to: uuid.UUID
    turn_id: uuid.UUID | None
    owner_id: uuid.UUID
    version: int  # the stream version seen; the append expects it (or a re-read newer one)
    context: list[ChatMessage]
    event_metadata: dict[str, Any]


def read_plan(runtime: WorkerRuntime, sid: uuid.UUID, mid: uuid.UUID) -> Plan | None:
    stream_id = session_stream(sid)
    with runtime.pool.connection() as conn:
        info = stream_info_sync(conn, stream_id)
        events = read_stream_sync(conn, stream_id) if info and not info.deleted else []
    if info is None or info.deleted:
        log.info("reply_skipped", reason="session_missing_or_deleted")
        return None
    if answered(events, mid):
        log.info("reply_skipped", reason="already_answered")
        return None
    question = next(
        (r for r in events if isinstance(r.event, MessagePosted) and r.event.message_id == mid),
        None,
    )
    if question is None or not isinstance(question.event, MessagePosted):
        log.warning("reply_skipped", reason="message_not_found")
        return None
    if question.event.role != "user":
        log.warning("reply_skipped", reason="not_a_user_message")
        return None
    return Plan(
        session_id=sid,
        reply_to=mid,
        turn_id=question.event.turn_id,
        owner_id=info.owner_id or question.event.user_id,
        version=info.version,
        context=context(events, question.version, runtime.settings.llm_context_messages,
                        runtime.settings.llm_context_tokens),
        event_metadata=event_metadata(question, mid, info.owner_id or question.event.user_id),
    )


def answered(events: Sequence[RecordedEvent], mid: uuid.UUID) -> bool:
    for recorded in events:
        e = recorded.event
        if isinstance(e, MessagePosted) and e.role == "assistant" and e.reply_to == mid:
            return True
        if isinstance(e, AssistantReplyFailed) and e.reply_to == mid:
            return True
    return False


def estimated_tokens(message: ChatMessage) -> int:
    """An upper-leaning estimate without a tokenizer: English averages ~4 bytes a token
    (UTF-8 bytes, so other scripts count more), plus a few tokens of framing per message."""
    return len(message["content"].encode()) // 3 + 4


def context(events: Sequence[RecordedEvent], upto: int, limit: int,
            token_budget: int = 0) -> list[ChatMessage]:
    """The conversation up to the question (later messages are not its context), last
    `limit` messages, after a system prompt, then the oldest dropped until the estimate
    fits `token_budget` (0 = no budget; the question itself is always kept). Purged
    (redacted) messages are left out."""
    history: list[ChatMessage] = []
    for recorded in events:
        e = recorded.event
        if recorded.version > upto:
            break
        if isinstance(e, MessagePosted) and not e.redacted and e.content:
            history.append({"role": e.role, "content": e.content})
    recent = history[-limit:] if limit > 0 else history
    system: ChatMessage = {"role": "system", "content": SYSTEM_PROMPT}
    if token_budget > 0:
        spent = estimated_tokens(system) + sum(estimated_tokens(m) for m in recent)
        while len(recent) > 1 and spent > token_budget:
            spent -= estimated_tokens(recent.pop(0))
    return [system, *recent]


def event_metadata(question: RecordedEvent, mid: uuid.UUID, owner_id: uuid.UUID) -> dict[str, Any]:
    """The reply is caused by the question and shares its correlation (and request) id."""
    meta: dict[str, Any] = {"user_id": str(owner_id), "causation_id": str(question.position)}
    for key in ("correlation_id", "request_id"):
        if key in question.metadata:
            meta[key] = question.metadata[key]
    meta.setdefault("correlation_id", str(mid))
    return meta


def request_ids(plan: Plan) -> dict[str, Any]:
    return {k: plan.event_metadata[k] for k in ("request_id", "correlation_id")
            if plan.event_metadata.get(k) is not None}
