"""The command service's composition root: `create_app(settings)`. Nothing runs at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from litestar import Controller, Litestar
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import HeaderParameter
from psycopg_pool import AsyncConnectionPool

from services.command.account_controller import AccountController, OidcController
from services.command.auth import Caller, authenticate
from services.command.controllers import (
    ChatController,
    LegacyChatController,
    ProjectController,
    SessionController,
    UserController,
)
from services.command.projects import MAX_DESCRIPTION_CHARS
from services.command.sessions import MAX_TITLE_CHARS
from services.command.stop import StopController
from services.command.throttle import SignInThrottle
from services.core.apidoc import STORABLE_TEXT_PATTERN, refine_components
from services.core.db import open_async_pool
from services.core.health import health_controller
from services.core.logging import configure_logging
from services.core.redisconn import async_plain_redis, async_redis
from services.core.settings import Settings
from services.core.wakeup import Wake
from services.http.auth import USER_HEADER, parse_user_id
from services.http.context import RequestIds, request_ids
from services.http.layer import api_description, http_layer
from services.http.metrics import metrics_handler
from services.http.oidc import oidc_provider

# Add a controller here to serve it.
CONTROLLERS: list[type[Controller]] = [
    health_controller("command"),
    UserController,
    ChatController,
    SessionController,
    ProjectController,  # issue 17
    StopController,
    LegacyChatController,
    AccountController,
    OidcController,
]


def provide_pool(state: State) -> AsyncConnectionPool[Any]:
    return state.pool  # type: ignore[no-any-return]


def provide_wake(state: State) -> Wake:
    return state.wake  # type: ignore[no-any-return]


def provide_settings(state: State) -> Settings:
    return state.settings  # type: ignore[no-any-return]


async def provide_caller(
    pool: NamedDependency[AsyncConnectionPool[Any]],
    request_ids: NamedDependency[RequestIds],
    x_user_id: Annotated[
        str | None,
        HeaderParameter(name=USER_HEADER, description="The calling user (set by the gateway)."),
    ] = None,
) -> Caller:
    # Optional here so that a missing header is our 401, not a generic validation 400.
    return Caller(await authenticate(pool, x_user_id), request_ids)


def provide_claimed_caller(
    request_ids: NamedDependency[RequestIds],
    x_user_id: Annotated[
        str | None,
        HeaderParameter(name=USER_HEADER, description="The calling user (set by the gateway)."),
    ] = None,
) -> Caller:
    """The header's user, parsed (401 missing, 400 not a UUID) but not yet looked up: for a
    handler that checks the user inside its own transaction (saves a pool checkout)."""
    return Caller(parse_user_id(x_user_id), request_ids, verified=False)


def create_app(settings: Settings) -> Litestar:
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # The owner user, no role: the command side writes the event store, nothing else.
        app.state.pool = await open_async_pool(settings.database_url)
        app.state.redis = async_redis(settings)  # live replies, stop (Redis Cluster if set)
        # the wake-up travels on REDIS_URL's Redis, where the workers subscribe
        wake_redis = async_plain_redis(settings, app.state.redis)
        app.state.wake = Wake(wake_redis, settings)  # after each commit: "news"
        app.state.sign_in_throttle = SignInThrottle(settings)
        app.state.oidc = oidc_provider(settings)  # None: OpenID Connect is off
        try:
            yield
        finally:
            await app.state.pool.close()
            await app.state.redis.aclose()
            if wake_redis is not app.state.redis:
                await wake_redis.aclose()

    def document_request_bodies(app: Litestar) -> None:
        title = {"min_length": 1, "max_length": MAX_TITLE_CHARS, "pattern": STORABLE_TEXT_PATTERN}
        text = {"min_length": 1, "max_length": settings.max_message_chars,
                "pattern": STORABLE_TEXT_PATTERN}
        refine_components(app, {
            "PostChat": {"additional_properties": False, "properties": {"text": text}},
            "LegacyChat": {"properties": {"text": text}},  # ignores unknown fields
            # a password needs an e-mail to sign in with: present, and not null
            "RegisterUser": {"additional_properties": False, "dependent_required": {
                "password": ["email"]}, "dependent_schemas": {"password": Schema(
                    properties={"email": Schema(type=OpenAPIType.STRING)})},
                "properties": {"password": {
                "min_length": 8, "max_length": 256}}},
            "UpdateProfile": {"additional_properties": False},
            "SignIn": {"additional_properties": False},
            "ChangePassword": {"additional_properties": False},
            "NewApiToken": {"additional_properties": False},
            "RenameSession": {"additional_properties": False, "properties": {"title": title}},
            # Issue 17: a project's title is a session title's; its description may be blank
            # (stored as given, trimmed) but holds no NUL.
            "NewProject": {"additional_properties": False, "properties": {
                "title": title,
                "description": {"one_of": [
                    Schema(type=OpenAPIType.STRING, max_length=MAX_DESCRIPTION_CHARS,
                           pattern=r"^[^\x00]*$"),
                    Schema(type=OpenAPIType.NULL),
                ]},
            }},
            "MoveSession": {"additional_properties": False},
        })

    return Litestar(
        route_handlers=[*CONTROLLERS, metrics_handler("command")],
        on_startup=[document_request_bodies],
        lifespan=[lifespan],
        state=State({"settings": settings}),
        dependencies={
            "pool": Provide(provide_pool, sync_to_thread=False),
            "wake": Provide(provide_wake, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
            "request_ids": Provide(request_ids, sync_to_thread=False),
            "caller": Provide(provide_caller),
            "claimed_caller": Provide(provide_claimed_caller, sync_to_thread=False),
        },
        openapi_config=OpenAPIConfig(
            title="Chat sessions: command API", version="1.0.0",
            description=api_description("Writes: users, chats, session renames, deletes and "
                                        "stops. Every endpoint but signup takes `X-User-ID`."),
        ),
        **http_layer("command", settings),
    )
