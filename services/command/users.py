"""Registering users: a `user-<uuid>` stream and the e-mail address reserved with it."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from services.command.auth import Caller
from services.command.passwords import check_policy, hash_password
from services.command.store import LOCK_STREAM, append, in_transaction
from services.core.events import UserProfileUpdated, UserRegistered, user_stream
from services.core.eventstore import StreamAppend
from services.core.wakeup import Wake
from services.http.auth import unknown_user
from services.http.context import RequestIds
from services.http.errors import ApiError

log = structlog.get_logger("command.users")

# Events cannot enforce uniqueness across streams; this row can, in the same transaction.
RESERVE_EMAIL = """
INSERT INTO user_emails (email, user_id) VALUES (%s, %s)
    ON CONFLICT (email) DO NOTHING
RETURNING user_id
"""

INSERT_PASSWORD = "INSERT INTO user_passwords (user_id, password_hash) VALUES (%s, %s)"

Email = Annotated[
    str,
    msgspec.Meta(
        max_length=254,
        pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s.\x00]+$",
        description="an e-mail address, unique whatever its case",
    ),
]
HttpUrl = Annotated[
    str,
    msgspec.Meta(max_length=2048, pattern=r"^(?i:https?)://[^\s/?#\x00]+[^\s\x00]*$"),
]
# No U+0000 anywhere: PostgreSQL jsonb cannot store it.
DisplayName = Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[^\x00]*$")]


class RegisterUser(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    email: Email | None = None
    display_name: DisplayName | None = None
    avatar_url: HttpUrl | None = None
    # With a password (and an e-mail) the user can sign in (POST /api/v1/auth/signin).
    # It is stored as an argon2id hash in user_passwords, never in the event.
    password: Annotated[str, msgspec.Meta(max_length=1024)] | None = None


class UserCreated(msgspec.Struct, frozen=True, kw_only=True):
    user_id: uuid.UUID
    email: str | None
    display_name: str | None
    avatar_url: str | None


async def register_user(
    pool: AsyncConnectionPool[Any], wake: Wake, ids: RequestIds, body: RegisterUser
) -> UserCreated:
    # The server picks the id; clients never choose one.
    caller = Caller(uuid.uuid4(), ids)
    event = UserRegistered(
        user_id=caller.user_id,
        email=body.email,
        display_name=body.display_name,
        avatar_url=body.avatar_url,
    )

    password_hash = None
    if body.password is not None:
        if body.email is None:
            raise ApiError("invalid_request", "a password needs an e-mail to sign in with")
        check_policy(body.password)
        password_hash = await hash_password(body.password)

    async def work(conn: psycopg.AsyncConnection[Any]) -> None:
        if password_hash is not None:
            await conn.execute(INSERT_PASSWORD, (caller.user_id, password_hash))
        if body.email is not None:
            cur = await conn.execute(RESERVE_EMAIL, (body.email.lower(), caller.user_id))
            if await cur.fetchone() is None:
                raise ApiError("email_taken", "that e-mail address is already registered")
        create = StreamAppend(
            stream_id=user_stream(caller.user_id),
            expected_version=0,
            events=[event],
            stream_type="user",
            owner_id=caller.user_id,
        )
        await append(conn, [create], caller.event_metadata())

    await in_transaction(pool, work)
    log.info("user_registered", new_user_id=str(caller.user_id))
    await wake()
    return UserCreated(
        user_id=caller.user_id,
        email=body.email,
        display_name=body.display_name,
        avatar_url=body.avatar_url,
    )


class UpdateProfile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """PATCH /api/v1/users/me: the fields given change, the others stay."""

    display_name: DisplayName | None = None
    avatar_url: HttpUrl | None = None


class ProfileUpdated(msgspec.Struct, frozen=True, kw_only=True):
    user_id: uuid.UUID
    position: int  # X-Min-Position for a read that must see the change


async def update_profile(
    pool: AsyncConnectionPool[Any], wake: Wake, caller: Caller, body: UpdateProfile
) -> ProfileUpdated:
    stream_id = user_stream(caller.user_id)
    event = UserProfileUpdated(user_id=caller.user_id, display_name=body.display_name,
                               avatar_url=body.avatar_url)

    async def work(conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute(LOCK_STREAM, (stream_id,))
        row = await cur.fetchone()
        if row is None or row[0] != "user" or row[3]:
            raise unknown_user()
        positions = await append(
            conn, [StreamAppend(stream_id=stream_id, expected_version=int(row[2]),
                                events=[event])], caller.event_metadata())
        return int(positions[-1])

    position = await in_transaction(pool, work)
    log.info("user_profile_updated")
    await wake()
    return ProfileUpdated(user_id=caller.user_id, position=position)
