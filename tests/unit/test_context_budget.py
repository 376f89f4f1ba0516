"""The assistant's context: the last messages up to the question, trimmed oldest first to a
token budget, never dropping the question."""

import datetime as dt
import uuid

from services.core.events import MessagePosted
from services.core.eventstore import RecordedEvent
from workers.reply_plan import SYSTEM_PROMPT, context, estimated_tokens

SID, UID = uuid.uuid4(), uuid.uuid4()


def _message(version: int, role: str, content: str) -> RecordedEvent:
    event = MessagePosted(session_id=SID, message_id=uuid.uuid4(), user_id=UID,
                          role=role, content=content)  # type: ignore[arg-type]
    return RecordedEvent(position=version, stream_id=f"session-{SID}", version=version,
                         type="MessagePosted", event=event, metadata={},
                         recorded_at=dt.datetime.now(dt.UTC), txid=1)


EVENTS = [_message(v, "user" if v % 2 else "assistant", f"{v}:" + "x" * 3000)
          for v in range(1, 41)]


def _cost(messages: list) -> int:
    return sum(estimated_tokens(m) for m in messages)


def test_without_a_budget_the_last_messages_are_sent() -> None:
    sent = context(EVENTS, upto=39, limit=40)
    assert sent[0]["content"] == SYSTEM_PROMPT
    assert [m["content"][:3] for m in sent[1:]][-1] == "39:"
    assert len(sent) == 40


def test_the_oldest_are_dropped_until_the_budget_fits() -> None:
    sent = context(EVENTS, upto=39, limit=40, token_budget=5_000)
    assert _cost(sent) <= 5_000
    assert sent[0]["content"] == SYSTEM_PROMPT
    assert sent[-1]["content"].startswith("39:")  # the question
    assert 1 < len(sent) < 40
    kept = [int(m["content"].split(":")[0]) for m in sent[1:]]
    assert kept == list(range(40 - len(kept), 40))  # a contiguous, most recent run


def test_the_question_is_kept_even_when_it_alone_is_over_the_budget() -> None:
    sent = context(EVENTS, upto=39, limit=40, token_budget=10)
    assert [m["content"][:3] for m in sent[1:]] == ["39:"]
