"""The domain events: frozen msgspec Structs, one tagged union, additive evolution.

The tag (stored in the `type` column and inside `data`) is the stable name; it never names a
Python module. New fields get defaults so old events still decode; unknown fields are ignored
so old code reads new events. A breaking change would be a new tag plus an upcaster here.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import msgspec

Role = Literal["user", "assistant", "system"]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    """Base of every event. Subclasses set an explicit tag."""


# stream user-<uuid>
class UserRegistered(Event, tag="UserRegistered", frozen=True):
    user_id: uuid.UUID
    email: str | None = None
    display_name: str | None = None
    avatar_url: str | None = None


class UserProfileUpdated(Event, tag="UserProfileUpdated", frozen=True):
    user_id: uuid.UUID
    email: str | None = None
    display_name: str | None = None
    avatar_url: str | None = None


class UserDeleted(Event, tag="UserDeleted", frozen=True):
    """The account is erased: its sessions were deleted just before (SessionDeleted each),
    and every earlier event of the user's streams lost its personal text."""

    user_id: uuid.UUID


class ProjectLinked(Event, tag="ProjectLinked", frozen=True):
    user_id: uuid.UUID
    project_id: uuid.UUID


# stream project-<uuid>
class ProjectCreated(Event, tag="ProjectCreated", frozen=True):
    project_id: uuid.UUID
    owner_id: uuid.UUID
    title: str = ""
    description: str | None = None  # issue 17


# stream session-<uuid>
class SessionStarted(Event, tag="SessionStarted", frozen=True):
    session_id: uuid.UUID
    user_id: uuid.UUID
    project_id: uuid.UUID
    title: str | None = None


class MessagePosted(Event, tag="MessagePosted", frozen=True):
    session_id: uuid.UUID
    message_id: uuid.UUID
    user_id: uuid.UUID
    role: Role
    content: str = ""  # "" once purged
    turn_id: uuid.UUID | None = None
    # for an assistant message: the user message it answers
    reply_to: uuid.UUID | None = None
    metadata: dict[str, Any] = {}
    redacted: bool = False


class SessionRenamed(Event, tag="SessionRenamed", frozen=True):
    session_id: uuid.UUID
    title: str = ""
    redacted: bool = False


class SessionArchived(Event, tag="SessionArchived", frozen=True):
    session_id: uuid.UUID


class SessionDeleted(Event, tag="SessionDeleted", frozen=True):
    session_id: uuid.UUID


# --- issue 17: archive and projects -------------------------------------------------------
class SessionUnarchived(Event, tag="SessionUnarchived", frozen=True):
    session_id: uuid.UUID


# stream project-<uuid>
class ProjectRenamed(Event, tag="ProjectRenamed", frozen=True):
    project_id: uuid.UUID
    title: str = ""
    description: str | None = None  # None: unchanged


# stream session-<uuid>: the session now belongs to another project of its owner
class SessionMoved(Event, tag="SessionMoved", frozen=True):
    session_id: uuid.UUID
    project_id: uuid.UUID
# --- end issue 17 --------------------------------------------------------------------------


class AssistantReplyFailed(Event, tag="AssistantReplyFailed", frozen=True):
    session_id: uuid.UUID
    turn_id: uuid.UUID | None = None
    reply_to: uuid.UUID | None = None
    error: str = ""
    metadata: dict[str, Any] = {}


AnyEvent = (
    UserRegistered
    | UserProfileUpdated
    | ProjectLinked
    | ProjectCreated
    | SessionStarted
    | MessagePosted
    | SessionRenamed
    | SessionArchived
    | SessionDeleted
    | AssistantReplyFailed
    | UserDeleted
    # issue 17
    | SessionUnarchived
    | ProjectRenamed
    | SessionMoved
)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in AnyEvent.__args__  # type: ignore[attr-defined]
}

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> AnyEvent:
    return _decoder.decode(data)


def event_type(event: Event) -> str:
    return str(event.__struct_config__.tag)


def user_stream(user_id: uuid.UUID) -> str:
    return f"user-{user_id}"


def project_stream(project_id: uuid.UUID) -> str:
    return f"project-{project_id}"


def session_stream(session_id: uuid.UUID) -> str:
    return f"session-{session_id}"
