"""Events as stored: a stable tag, additive evolution, no Python module paths."""

from __future__ import annotations

import json
import uuid

import msgspec
import pytest

from services.core import events as ev
from services.core.events import (
    EVENT_TYPES,
    AnyEvent,
    Event,
    decode_event,
    encode_event,
    event_type,
)

U1, U2, U3, U4 = (uuid.UUID(int=i) for i in range(1, 5))

# One instance of every event type with every field given a non-default value, so a field
# that does not survive the round trip shows up.
EXAMPLES: list[Event] = [
    ev.UserRegistered(user_id=U1, email="a@example.com", display_name="A", avatar_url="http://a"),
    ev.UserProfileUpdated(user_id=U1, email="b@example.com", display_name="B", avatar_url="x"),
    ev.ProjectLinked(user_id=U1, project_id=U2),
    ev.ProjectCreated(project_id=U2, owner_id=U1, title="Horror story"),
    ev.SessionStarted(session_id=U3, user_id=U1, project_id=U2, title="First chat"),
    ev.MessagePosted(
        session_id=U3,
        message_id=U4,
        user_id=U1,
        role="assistant",
        content="Once upon a midnight dreary ✍️",
        turn_id=U2,
        reply_to=U1,
        metadata={"provider": "offline", "tokens": {"in": 3, "out": 7}, "latency_ms": 1.5},
        redacted=True,
    ),
    ev.SessionRenamed(session_id=U3, title="Renamed", redacted=True),
    ev.SessionArchived(session_id=U3),
    ev.SessionDeleted(session_id=U3),
    ev.UserDeleted(user_id=U1),
    ev.AssistantReplyFailed(
        session_id=U3, turn_id=U2, reply_to=U4, error="timeout", metadata={"provider": "x"}
    ),
    # issue 17
    ev.SessionUnarchived(session_id=U3),
    ev.ProjectRenamed(project_id=U2, title="Stories", description="ghosts"),
    ev.SessionMoved(session_id=U3, project_id=U2),
]


def _name(event: Event) -> str:
    return type(event).__name__


def test_the_examples_cover_every_event_type_in_the_union() -> None:
    assert {event_type(e) for e in EXAMPLES} == set(EVENT_TYPES)
    assert set(EVENT_TYPES.values()) == set(AnyEvent.__args__)  # type: ignore[attr-defined]


def test_every_event_subclass_is_part_of_the_decodable_union() -> None:
    # An event class left out of AnyEvent could be appended but never read back.
    assert set(Event.__subclasses__()) == set(EVENT_TYPES.values())


@pytest.mark.parametrize("event", EXAMPLES, ids=_name)
def test_every_event_round_trips_through_encode_and_decode(event: Event) -> None:
    decoded = decode_event(encode_event(event))
    assert type(decoded) is type(event)
    assert decoded == event


@pytest.mark.parametrize("event", EXAMPLES, ids=_name)
def test_stored_json_carries_the_stable_type_tag_and_no_module_path(event: Event) -> None:
    raw = encode_event(event).decode()
    data = json.loads(raw)
    assert data["type"] == event_type(event) == type(event).__name__
    assert type(event).__module__ not in raw
    assert "services" not in raw
    assert "__" not in raw  # no __module__/__class__ style markers either


@pytest.mark.parametrize("event", EXAMPLES, ids=_name)
def test_unknown_fields_in_stored_json_are_ignored(event: Event) -> None:
    # Old code reading an event written by newer code that added fields.
    data = json.loads(encode_event(event))
    data["added_in_a_later_release"] = {"nested": [1, 2, 3]}
    data["another_new_field"] = "x"
    assert decode_event(json.dumps(data)) == event


def test_a_payload_missing_a_field_that_has_a_default_decodes_with_the_default() -> None:
    # New code reading an event stored before the defaulted fields existed.
    old = json.dumps(
        {
            "type": "MessagePosted",
            "session_id": str(U3),
            "message_id": str(U4),
            "user_id": str(U1),
            "role": "user",
        }
    )
    decoded = decode_event(old)
    assert decoded == ev.MessagePosted(session_id=U3, message_id=U4, user_id=U1, role="user")
    assert isinstance(decoded, ev.MessagePosted)
    assert decoded.content == ""
    assert decoded.turn_id is None
    assert decoded.reply_to is None
    assert decoded.metadata == {}
    assert decoded.redacted is False


@pytest.mark.parametrize("event", EXAMPLES, ids=_name)
def test_an_event_whose_content_was_purged_still_decodes(event: Event) -> None:
    # purge_stream_content() (0006_purge.sql) drops these keys and adds "redacted".
    data = json.loads(encode_event(event))
    for key in ("content", "title", "error"):
        data.pop(key, None)
    data["redacted"] = True
    decoded = decode_event(json.dumps(data))
    assert type(decoded) is type(event)
    for key in ("content", "title", "error"):
        if hasattr(decoded, key):
            assert getattr(decoded, key) in ("", None)


def test_a_payload_missing_a_required_field_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_event(json.dumps({"type": "SessionStarted", "session_id": str(U3)}))


def test_an_unknown_type_tag_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_event(json.dumps({"type": "SessionExploded", "session_id": str(U3)}))


def test_events_are_frozen() -> None:
    event = ev.SessionArchived(session_id=U3)
    with pytest.raises(AttributeError):
        event.session_id = U1  # type: ignore[misc]
