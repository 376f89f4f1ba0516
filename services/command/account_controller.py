"""HTTP handlers of /api/v1/auth: sign in and out (password or OpenID Connect), password,
API tokens."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import Cookie, State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from services.command import accounts, oidc_signin
from services.command.auth import Caller
from services.http.context import RequestIds
from services.http.credentials import CSRF_COOKIE, SESSION_COOKIE
from services.http.errors import ApiError, error_responses
from services.http.oidc import OidcProvider


class AccountController(Controller):
    path = "/api/v1/auth"
    tags = ("auth",)

    @post("/signin", operation_id="signIn", status_code=200,
          responses=error_responses(400, 401, 429))
    async def sign_in(self, request: Request[Any, Any, Any], data: JSONBody[accounts.SignIn],
                      state: State) -> Response[accounts.SignedIn]:
        """Starts a browser session: sets the httpOnly `chat_session` cookie and the
        `chat_csrf` cookie, whose value every cookie-authenticated write sends back as
        `X-CSRF-Token`. Unknown e-mail and wrong password answer the same 401."""
        user_id, session = await accounts.sign_in(state.pool, state.sign_in_throttle,
                                                  state.settings, data, _address(request))
        secure = _is_https(request)
        max_age = int(state.settings.auth_session_hours * 3600)
        return Response(
            accounts.SignedIn(user_id=user_id, csrf_token=session.csrf_token,
                              expires_at=session.expires_at),
            cookies=_session_cookies(session, secure, max_age))

    @post("/signout", operation_id="signOut", status_code=204, responses=error_responses(401))
    async def sign_out(self, request: Request[Any, Any, Any], caller: NamedDependency[Caller],
                       state: State) -> None:
        """Ends this browser session at once (the cookie no longer signs anyone in)."""
        await accounts.sign_out(state.pool, request.cookies.get(SESSION_COOKIE))
        return _signed_out()  # type: ignore[return-value]

    @post("/signout-everywhere", operation_id="signOutEverywhere", status_code=204,
          responses=error_responses(401))
    async def sign_out_everywhere(self, caller: NamedDependency[Caller],
                                  state: State) -> None:
        """Ends every browser session of the caller at once."""
        await accounts.sign_out_everywhere(state.pool, caller.user_id)
        return _signed_out()  # type: ignore[return-value]

    @post("/password", operation_id="changePassword", status_code=204,
          responses=error_responses(400, 401, 422))
    async def change_password(self, request: Request[Any, Any, Any],
                              data: JSONBody[accounts.ChangePassword],
                              caller: NamedDependency[Caller], state: State) -> None:
        """Needs the current password; ends every other browser session."""
        await accounts.change_password(state.pool, caller.user_id, data,
                                       request.cookies.get(SESSION_COOKIE))

    @post("/tokens", operation_id="createApiToken", status_code=201,
          responses=error_responses(400, 401))
    async def create_token(self, data: JSONBody[accounts.NewApiToken],
                           caller: NamedDependency[Caller],
                           state: State) -> accounts.ApiTokenCreated:
        """An API token for `Authorization: Bearer`; its value is shown this once."""
        return await accounts.create_api_token(state.pool, caller.user_id, data)

    @delete("/tokens/{token_id:uuid}", operation_id="revokeApiToken",
            responses=error_responses(401, 404))
    async def revoke_token(self, token_id: FromPath[uuid.UUID],
                           caller: NamedDependency[Caller], state: State) -> None:
        """Revokes one of the caller's API tokens at once."""
        await accounts.revoke_api_token(state.pool, caller.user_id, token_id)


def _signed_out() -> Response[None]:
    """204 that clears the cookies. (The handlers say `-> None`: a `Response[None]` would be
    documented as a JSON `null` body, which a 204 never has.)"""
    return Response(None, status_code=204, cookies=[
        Cookie(key=SESSION_COOKIE, value="", path="/", httponly=True, samesite="lax",
               max_age=0),
        Cookie(key=CSRF_COOKIE, value="", path="/", samesite="lax", max_age=0)])


def _address(request: Request[Any, Any, Any]) -> str:
    """The client's address: the last X-Forwarded-For hop is the one our gateway (or nginx)
    saw; earlier hops are the client's own claims."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()
    return request.client.host if request.client else "unknown"


def _is_https(request: Request[Any, Any, Any]) -> bool:
    proto = request.headers.get("x-forwarded-proto")
    return (proto or request.url.scheme) == "https"


class OidcInfo(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool
    name: str | None = None  # for "Sign in with <name>"


class OidcController(Controller):
    """Sign in with OpenID Connect: browser redirects, so GETs (routed to this service by
    path, in the gateway and in nginx)."""

    path = "/api/v1/auth/oidc"
    tags = ("auth",)

    @get("", operation_id="oidcInfo")
    async def info(self, state: State) -> OidcInfo:
        """Whether "Sign in with …" is offered, and the provider's name."""
        if state.oidc is None:
            return OidcInfo(enabled=False)
        return OidcInfo(enabled=True, name=state.settings.auth_oidc_name)

    @get("/start", operation_id="oidcStart", status_code=303,
         responses=error_responses(404, 503))
    async def start(self, state: State) -> Response[None]:
        """Redirects the browser to the provider (PKCE and nonce)."""
        provider = _provider(state)
        url, login_state = await oidc_signin.start(provider, state.redis, state.settings)
        return Response(None, status_code=303, headers={"Location": url}, cookies=[
            Cookie(key=oidc_signin.STATE_COOKIE, value=login_state, path="/api/v1/auth/oidc",
                   httponly=True, samesite="lax", max_age=oidc_signin.LOGIN_WINDOW_SECONDS)])

    @get("/callback", operation_id="oidcCallback", status_code=303,
         responses=error_responses(401, 404, 503))
    async def callback(self, request: Request[Any, Any, Any], state: State,
                       request_ids: NamedDependency[RequestIds],
                       code: Annotated[str | None, QueryParameter(name="code")] = None,
                       state_param: Annotated[str | None, QueryParameter(name="state")] = None,
                       ) -> Response[None]:
        """Where the provider sends the browser back: the session cookie, then the UI."""
        provider = _provider(state)
        _, session = await oidc_signin.callback(
            provider, state.pool, state.redis, state.wake, state.settings, request_ids,
            code=code, state=state_param,
            cookie_state=request.cookies.get(oidc_signin.STATE_COOKIE))
        secure = _is_https(request)
        max_age = int(state.settings.auth_session_hours * 3600)
        return Response(None, status_code=303, headers={"Location": "/"}, cookies=[
            *_session_cookies(session, secure, max_age),
            Cookie(key=oidc_signin.STATE_COOKIE, value="", path="/api/v1/auth/oidc",
                   max_age=0)])


def _provider(state: State) -> OidcProvider:
    if state.oidc is None:
        raise ApiError("not_found", "OpenID Connect is not configured")
    return state.oidc  # type: ignore[no-any-return]


def _session_cookies(session: accounts.Session, secure: bool, max_age: int) -> list[Cookie]:
    return [
        Cookie(key=SESSION_COOKIE, value=session.token, path="/", httponly=True,
               samesite="lax", secure=secure, max_age=max_age),
        Cookie(key=CSRF_COOKIE, value=session.csrf_token, path="/", httponly=False,
               samesite="lax", secure=secure, max_age=max_age),
    ]
