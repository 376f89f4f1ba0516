"""The assistant: answers one user message, streaming the reply live and storing it.

`answer` is the plain function behind the `assistant_reply` actor (tests call it directly).
It is idempotent: a message already answered (or whose reply already failed) is left alone,
and so is a session that is gone, so duplicated or retried messages never double a reply.

Order of effects: deltas go to the live stream as they arrive; the stored MessagePosted is
appended before the live `message` + `done`, so a client that saw `done` can rely on the
event store having the reply. Every failure ends the live stream with `error` and leaves an
AssistantReplyFailed, so no client waits on a reply that will never come.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
from typing import Any

import msgspec
import structlog

from services.core import reply_slots
from services.core.events import AssistantReplyFailed, Event, MessagePosted, session_stream
from services.core.eventstore import (
    ConcurrencyError,
    StreamAppend,
    append_sync,
    read_stream_sync,
    stream_info_sync,
)
from services.core.livewire import latest_key, live_key
from services.core.metrics import observe_reply
from services.core.wakeup import wake_followers_sync
from workers.live_writer import LiveWriter, clear_stop, stop_requested
from workers.providers import Provider, ProviderError, make_provider
from workers.reply_lease import reply_lease
from workers.reply_plan import Plan, answered, read_plan, request_ids
from workers.runtime import WorkerRuntime

log = structlog.get_logger("assistant")

APPEND_ATTEMPTS = 5  # the session stream moves on only when its owner writes: rarely
SELECT_RECORDED_AT = "SELECT recorded_at FROM events WHERE position = %s"
DELETED_RELAY_SECONDS = 30  # long enough for a listener to read the `error`
SELECT_OWNER = "SELECT owner_id FROM event_streams WHERE stream_id = %s"


class _Outcome(msgspec.Struct, kw_only=True):
    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int
    first_token_ms: int | None


def answer(
    runtime: WorkerRuntime,
    session_id: str,
    message_id: str,
    *,
    provider: Provider | None = None,
) -> None:
    """Writes the assistant's reply to user message `message_id` of session `session_id`.
    `provider` defaults to the one settings name (tests pass their own). The reply holds a
    lease while it runs (workers/reply_lease.py): a duplicate delivery meanwhile leaves, and a
    reply whose worker dies is recorded as failed by another worker's sweep."""
    with reply_lease(runtime, session_id, message_id) as mine:
        if mine:
            try:
                _answer(runtime, session_id, message_id, provider=provider)
            finally:
                give_back_slot(runtime, uuid.UUID(session_id), uuid.UUID(message_id))


def give_back_slot(runtime: WorkerRuntime, sid: uuid.UUID, mid: uuid.UUID) -> None:
    """The reply ended (or was not needed): the slot its post took is free
    (services/core/reply_slots.py). Never raises: an unreturned slot expires."""
    try:
        with runtime.pool.connection() as conn:
            row = conn.execute(SELECT_OWNER, (session_stream(sid),)).fetchone()
        if row is not None and row[0] is not None:
            reply_slots.give_back(runtime.redis, runtime.settings, row[0], sid, mid)
    except Exception:
        log.warning("reply_slot_not_given_back", exc_info=True)


def record_interrupted(
    runtime: WorkerRuntime, sid: uuid.UUID, mid: uuid.UUID, code: str, detail: str
) -> bool:
    """Ends a reply another worker started and could not finish: `error` on the live
    stream and AssistantReplyFailed. False when it was answered (or failed) after all."""
    with structlog.contextvars.bound_contextvars(session_id=str(sid), message_id=str(mid)):
        plan = read_plan(runtime, sid, mid)
        if plan is None:
            return False
        writer = LiveWriter(runtime.redis, runtime.settings, sid, reply_to=mid)
        s = runtime.settings
        _fail(runtime, writer, plan, (s.llm_provider, s.llm_model), code, detail,
              time.monotonic())
        give_back_slot(runtime, sid, mid)
        return True


def _answer(
    runtime: WorkerRuntime,
    session_id: str,
    message_id: str,
    *,
    provider: Provider | None = None,
) -> None:
    sid, mid = uuid.UUID(session_id), uuid.UUID(message_id)
    with (
        structlog.contextvars.bound_contextvars(session_id=session_id, message_id=message_id),
        contextlib.ExitStack() as bound,
    ):
        plan = read_plan(runtime, sid, mid)
        if plan is None:
            return
        # every line from here on carries the ids of the HTTP request that asked
        bound.enter_context(structlog.contextvars.bound_contextvars(**request_ids(plan)))
        writer = LiveWriter(runtime.redis, runtime.settings, sid)
        clear_stop(runtime.redis, runtime.settings, sid)  # a stale stop must not cut this one
        writer.reply_started(plan.turn_id, mid)
        started = time.monotonic()
        s = runtime.settings
        try:
            chosen = provider or make_provider(s)
        except Exception as exc:  # misconfigured: still end the stream and record why
            log.exception("provider_unavailable")
            _fail(
                runtime,
                writer,
                plan,
                (s.llm_provider, s.llm_model),
                "provider_unavailable",
                str(exc),
                started,
            )
            return
        try:
            _reply(runtime, chosen, plan, writer, started)
        finally:
            if provider is None:  # made here: release its connections
                close = getattr(chosen, "close", None)
                if close is not None:
                    close()


def _reply(
    runtime: WorkerRuntime, provider: Provider, plan: Plan, writer: LiveWriter, started: float
) -> None:
    names = (provider.name, provider.model)
    log.info("reply_started", provider=provider.name, model=provider.model)
    try:
        outcome = _generate(runtime, provider, plan, writer, started)
    except ProviderError as exc:
        log.warning("reply_failed", error=exc.code, detail=exc.detail)
        observe_reply(*names, "failed", _ms(started))
        _fail(runtime, writer, plan, names, exc.code, exc.detail, started)
        return
    except BaseException as exc:  # a bug, or Dramatiq's time limit: still end the stream
        log.exception("reply_crashed")
        observe_reply(*names, "failed", _ms(started))
        _fail(runtime, writer, plan, names, "internal_error", type(exc).__name__, started)
        raise
    observe_reply(*names, outcome.finish_reason, outcome.latency_ms, outcome.first_token_ms)
    _store(runtime, writer, plan, provider, outcome)


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


def _generate(
    runtime: WorkerRuntime, provider: Provider, plan: Plan, writer: LiveWriter, started: float
) -> _Outcome:
    parts: list[str] = []
    finish: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_ms: int | None = None
    chunks = provider.stream(plan.context)
    try:
        for chunk in chunks:
            if chunk.prompt_tokens is not None:
                prompt_tokens = chunk.prompt_tokens
            if chunk.completion_tokens is not None:
                completion_tokens = chunk.completion_tokens
            finish = chunk.finish_reason or finish
            if not chunk.text:
                continue
            if first_token_ms is None:
                first_token_ms = _ms(started)
            parts.append(chunk.text)
            writer.delta(chunk.text)
            # Checked between deltas: a stop lands within one delta of being asked for.
            if stop_requested(runtime.redis, runtime.settings, plan.session_id):
                log.info("reply_stopped", chars=sum(map(len, parts)))
                finish = "stopped"
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # ends the provider's HTTP response when we stop early
    return _Outcome(
        text="".join(parts),
        finish_reason=finish or "stop",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens if finish != "stopped" else None,
        latency_ms=_ms(started),
        first_token_ms=first_token_ms,
    )


class _Stored(msgspec.Struct, frozen=True):
    position: int
    recorded_at: dt.datetime


def _append(runtime: WorkerRuntime, plan: Plan, event: Event) -> _Stored | str:
    """Appends at the stream's current version, re-reading on a concurrent append. Returns
    where it was stored, or why nothing was appended ("deleted" / "answered")."""
    stream_id = session_stream(plan.session_id)
    for attempt in range(1, APPEND_ATTEMPTS + 1):
        try:
            with runtime.pool.connection() as conn:
                info = stream_info_sync(conn, stream_id)
                if info is None or info.deleted:
                    return "deleted"
                if info.version != plan.version:
                    if answered(read_stream_sync(conn, stream_id, plan.version), plan.reply_to):
                        return "answered"  # a duplicate delivery got there first
                    plan.version = info.version
                stream = StreamAppend(
                    stream_id=stream_id, expected_version=plan.version, events=[event]
                )
                (position,) = append_sync(conn, [stream], plan.event_metadata)
                row = conn.execute(SELECT_RECORDED_AT, (position,)).fetchone()
                assert row is not None  # inserted by this very transaction
                return _Stored(position, row[0])
        except ConcurrencyError:
            log.info("append_conflict", attempt=attempt)
    raise ConcurrencyError(stream_id, plan.version)


def _store(
    runtime: WorkerRuntime, writer: LiveWriter, plan: Plan, provider: Provider, out: _Outcome
) -> None:
    metadata: dict[str, Any] = {
        "provider": provider.name,
        "model": provider.model,
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "latency_ms": out.latency_ms,
        "first_token_ms": out.first_token_ms,
        "finish_reason": out.finish_reason,
        **provider.extra_metadata,
    }
    event = MessagePosted(
        session_id=plan.session_id,
        message_id=uuid.uuid4(),
        user_id=plan.owner_id,
        role="assistant",
        content=out.text,
        turn_id=plan.turn_id,
        reply_to=plan.reply_to,
        metadata=metadata,
    )
    try:
        result = _append(runtime, plan, event)
    except BaseException as exc:
        log.exception("reply_store_failed")
        _live(writer.error, "store_failed", f"the reply could not be stored ({type(exc).__name__})")
        raise
    if isinstance(result, str):
        log.info("reply_not_stored", reason=result)
        if result == "deleted":
            _live(writer.error, "session_deleted", "the session was deleted")
            # deleted while being written: what reached the relay goes soon, not in an hour
            with contextlib.suppress(Exception):
                for key in (live_key(runtime.settings, plan.session_id),
                            latest_key(runtime.settings, plan.session_id)):
                    runtime.redis.expire(key, DELETED_RELAY_SECONDS)
        return
    wake_followers_sync(runtime.wake_redis, runtime.settings)
    _count_tokens(runtime, plan, out)
    writer.message(
        {
            "message_id": str(event.message_id),
            "session_id": str(plan.session_id),
            "role": "assistant",
            "content": out.text,
            "metadata": metadata,
            "created_at": result.recorded_at.isoformat(),
            "turn_id": plan.turn_id and str(plan.turn_id),
            "reply_to": str(plan.reply_to),
        }
    )
    writer.done(message_id=str(event.message_id), finish_reason=out.finish_reason)
    log.info(
        "reply_stored",
        position=result.position,
        finish_reason=out.finish_reason,
        latency_ms=out.latency_ms,
        chars=len(out.text),
    )


def _count_tokens(runtime: WorkerRuntime, plan: Plan, out: _Outcome) -> None:
    """The provider's reported usage, against the owner's daily budget."""
    tokens = (out.prompt_tokens or 0) + (out.completion_tokens or 0)
    try:
        reply_slots.count_tokens(runtime.redis, runtime.settings, plan.owner_id, tokens)
    except Exception:
        log.warning("tokens_not_counted", tokens=tokens, exc_info=True)


def _live(write: Any, code: str, detail: str) -> None:
    """A live write on a failure path: Redis being down must not hide the first failure."""
    try:
        write(code, detail)
    except Exception:
        log.warning("live_write_failed", code=code, exc_info=True)


def _fail(
    runtime: WorkerRuntime,
    writer: LiveWriter,
    plan: Plan,
    names: tuple[str, str],
    code: str,
    detail: str,
    started: float,
) -> None:
    provider_name, model = names
    event = AssistantReplyFailed(
        session_id=plan.session_id,
        turn_id=plan.turn_id,
        reply_to=plan.reply_to,
        error=f"{code}: {detail}",
        metadata={
            "provider": provider_name,
            "model": model,
            "error_code": code,
            "latency_ms": _ms(started),
        },
    )
    try:
        result = _append(runtime, plan, event)
    except Exception:
        log.exception("reply_failure_not_stored")
        return
    finally:
        # After the store, like `message` + `done`: a client that saw `error` finds the
        # failure recorded. Sent even when storing failed, so nobody waits forever. Clients
        # get the code and a plain message, never the provider's detail (it can name
        # internal hosts or echo upstream bodies); the event and the logs keep the detail.
        _live(writer.error, code, f"the assistant could not reply ({code})")
    if not isinstance(result, str):
        wake_followers_sync(runtime.wake_redis, runtime.settings)
