"""Authentication, the per-key rate limit, and the owner a request may act for.

`Authenticate` runs before every route (WebSocket included): it finds the key, in order, in
`Authorization: Bearer <key>`, in a WebSocket subprotocol `bearer.<key>` (browsers cannot set
headers on a WebSocket; offer `forge` alongside, which the server selects), or in the
`access_token` query parameter (for `EventSource`). The caller it stands for is put on the
request's state; routes read it through `OwnerScope`, `CallerOf` and `admin_only`.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, Query
from fastapi.security import HTTPBearer
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from forge.api.errors import error_response
from forge.api.ratelimit import RateLimiter
from forge.api.streams import AgentGone
from forge.config import AuthSettings
from forge.core.auth import Caller
from forge.core.platform import Platform
from forge.core.schemas import NAME_PATTERN

# Reachable without a key: probes and the API's own description.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"})
ANONYMOUS = Caller(key_id="anonymous", owner_id=None)
SUBPROTOCOL = "forge"
_BEARER_PROTOCOL = "bearer."

# Declares the scheme in the OpenAPI document; `Authenticate` does the checking.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An owner's API key (`forge keys create`) or the admin key (FORGE_API_KEY).",
)


def _may_carry_token(scope: Scope, headers: list[tuple[bytes, bytes]]) -> bool:
    if scope["type"] == "websocket":
        return True
    accept = b"".join(value for name, value in headers if name == b"accept")
    return scope.get("method") == "GET" and b"text/event-stream" in accept


def _token_of(scope: Scope) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"sec-websocket-protocol":
            for offered in value.decode("latin-1").split(","):
                offered = offered.strip()
                if offered.startswith(_BEARER_PROTOCOL) and len(offered) > len(_BEARER_PROTOCOL):
                    return offered[len(_BEARER_PROTOCOL) :]
    query: bytes = scope.get("query_string") or b""
    # Only where a browser cannot send a header: a WebSocket, or an EventSource's GET. A key in
    # any other URL would end up in proxies' logs for nothing.
    if b"access_token=" in query and _may_carry_token(scope, headers):
        for name_, token_ in parse_qsl(query.decode("latin-1")):
            if name_ == "access_token" and token_:
                return token_
    return None


class AuthLimits:
    """The allowances `Authenticate` spends: requests per key, and wrong keys per client
    address. One per server, shared by every app it serves (the API's port and `MCP_PORT`), so
    a key's requests count once wherever they arrive."""

    def __init__(self, settings: AuthSettings) -> None:
        self.requests = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        # Wrong keys, per client address: guessing costs a database read each.
        self.failures = RateLimiter(settings.failed_auth_per_minute, settings.failed_auth_burst)


class Authenticate:
    """Refuse requests without a valid key (401) or over their key's rate (429); tell the
    routes who the caller is. `limits` are the allowances it spends (its own if not given)."""

    def __init__(
        self, app: ASGIApp, settings: AuthSettings, limits: AuthLimits | None = None
    ) -> None:
        self.app = app
        self.settings = settings
        limits = limits or AuthLimits(settings)
        self.limiter = limits.requests
        self.failures = limits.failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        caller = ANONYMOUS
        if self.settings.enabled:
            token = _token_of(scope)
            if token is None:
                await _refuse(
                    scope,
                    receive,
                    send,
                    _unauthorized(
                        "missing_api_key",
                        "send your API key as `Authorization: Bearer <key>` (WebSocket: the "
                        "subprotocol `bearer.<key>`; EventSource: `?access_token=<key>`)",
                    ),
                )
                return
            client = scope.get("client")
            address = f"ip:{client[0]}" if client else "ip:?"
            wait = self.failures.peek_seconds(address)
            if wait:
                await _refuse(scope, receive, send, _too_many(wait, "failed authentications"))
                return
            platform: Platform = scope["app"].state.platform
            found = await platform.keys.authenticate(token)
            if found is None:
                self.failures.wait_seconds(address)
                await _refuse(
                    scope,
                    receive,
                    send,
                    _unauthorized("invalid_api_key", "the API key is not valid or was revoked"),
                )
                return
            caller = found
            wait = self.limiter.wait_seconds(caller.key_id)
            if wait:
                limit = (
                    f"this key is limited to {self.settings.rate_limit_per_minute} requests a "
                    f"minute (bursts of {self.settings.rate_limit_burst})"
                )
                await _refuse(scope, receive, send, _too_many(wait, limit))
                return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def _too_many(wait: int, what: str) -> JSONResponse:
    response = error_response(429, "rate_limited", f"{what}; retry in {wait} s")
    response.headers["Retry-After"] = str(wait)
    return response


def _unauthorized(code: str, message: str) -> JSONResponse:
    response = error_response(401, code, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="forge"'
    return response


async def _refuse(scope: Scope, receive: Receive, send: Send, response: JSONResponse) -> None:
    if scope["type"] == "websocket":
        # Refused before the upgrade, so the client sees the status and the JSON body.
        await WebSocket(scope, receive, send).send_denial_response(response)
        return
    await response(scope, receive, send)


def caller_of(connection: HTTPConnection) -> Caller:
    """The caller `Authenticate` found for this request."""
    caller: Caller | None = getattr(connection.state, "caller", None)
    if caller is None:
        raise RuntimeError("the Authenticate middleware is not installed")
    return caller


async def _owner_scope(
    connection: HTTPConnection,
    user_id: Annotated[
        str | None,
        Query(
            pattern=NAME_PATTERN,
            description="Owner. With an owner's key it must be that owner or left out; "
            "another owner's objects answer 404.",
        ),
    ] = None,
) -> str | None:
    return caller_of(connection).scope(user_id)


async def admin_only(connection: HTTPConnection) -> None:
    caller_of(connection).require_admin()


CallerOf = Annotated[Caller, Depends(caller_of)]
# The owner whose objects the request may reach; None: every owner's (admin, or auth off).
OwnerScope = Annotated[str | None, Depends(_owner_scope)]


def stream_over(platform: Platform, agent_id: str, caller: Caller) -> AgentGone:
    """For a live stream: whether it should end, because the agent was deleted or the key it
    was opened with was revoked since."""

    async def over() -> bool:
        return not await platform.keys.still_valid(caller) or await platform.agents.is_deleted(
            agent_id
        )

    return over


class HideTokens(logging.Filter):
    """Blanks `access_token=...` (however it is escaped) in the log lines uvicorn writes."""

    _TOKEN = re.compile(r"(access(?:_|%5f)token=)[^&\s\"]+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._TOKEN.sub(r"\1[hidden]", a) if isinstance(a, str) else a for a in record.args
            )
        return True
