"""Authentication, the per-key rate limit, and the owner a request may act for.

`Authenticate` runs before every route (WebSocket included): it finds the key, in order, in
`Authorization: Bearer <key>`, in a WebSocket subprotocol `bearer.<key>` (browsers cannot set
headers on a WebSocket; offer `forge` alongside, which the server selects), or in the
`access_token` query parameter (for `EventSource`). Without any of them, the dashboard's session
cookie (`SessionCookies`) stands for the key it was signed in with; a request it authenticates
that changes something (or opens a WebSocket) must come from the server's own origin. The caller
is put on the request's state; routes read it through `OwnerScope`, `CallerOf` and `admin_only`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Query
from fastapi.security import HTTPBearer
from starlette.requests import HTTPConnection, cookie_parser
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from forge.api.errors import error_response
from forge.api.ratelimit import RateLimiter
from forge.api.streams import AgentGone
from forge.config import AuthSettings
from forge.core.auth import ADMIN, ApiKeyService, Caller
from forge.core.platform import Platform
from forge.core.schemas import NAME_PATTERN

# Reachable without a key: probes, the API's own description, and the dashboard's page (which
# holds no data: it asks the API, signed in).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", "/"})
UI_PREFIX = "/ui/"
# Signing in and out, and asking whether one is: reachable without a key.
SESSION_PATH = "/api/v1/dashboard/session"
SESSION_COOKIE = "forge_session"
SESSION_SECONDS = 12 * 3600
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
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


def _cookie_of(scope: Scope) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
    for name, value in headers:
        if name == b"cookie":
            found = cookie_parser(value.decode("latin-1")).get(SESSION_COOKIE)
            if found:
                return found
    return None


def _header(scope: Scope, wanted: bytes) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
    for name, value in headers:
        if name == wanted:
            return value.decode("latin-1")
    return None


def _origin_tuple(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def same_origin(scope: Scope, allowed: tuple[str, ...] = ()) -> bool:
    """Whether the request's `Origin`, if it has one, is the server's own origin (its scheme
    and the `Host` it was asked for) or one of `allowed` (`[auth] dashboard_origins`: the
    address users reach Forge at through a proxy that changes the scheme or the host)."""
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    host = _header(scope, b"host")
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme"))
    own = _origin_tuple(f"{scheme}://{host}") if host else None
    theirs = _origin_tuple(origin)
    if theirs is None:
        return False
    return theirs == own or any(theirs == _origin_tuple(other) for other in allowed)


def is_https(scope: Scope) -> bool:
    return scope.get("scheme") in ("https", "wss")


class SessionCookies:
    """The dashboard's sign-in: a stateless signed cookie, `v1.<key_id>.<expires_unix>.<hmac>`
    (HMAC-SHA256, hex), standing for the key it was signed in with (`admin` for the admin key).

    The secret is `[auth] session_secret`, else derived from the admin key (every replica agrees),
    else random for this process (sessions then end with a restart and do not span replicas). The
    key behind a cookie is checked on every request, so revoking it ends its sessions; an admin
    session is also bound to the admin key itself, so changing that key ends them.
    """

    def __init__(self, settings: AuthSettings) -> None:
        admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        if settings.session_secret is not None:
            self._secret = settings.session_secret.get_secret_value().encode()
        elif admin:
            self._secret = hashlib.sha256(b"forge-dashboard-session\0" + admin.encode()).digest()
        else:
            self._secret = secrets.token_bytes(32)
        self._admin_tag = hashlib.sha256(admin.encode()).hexdigest() if admin else None
        self.secure = settings.secure_cookies

    def _mac(self, key_id: str, expires: int) -> str:
        message = f"v1.{key_id}.{expires}"
        if key_id == ADMIN.key_id:
            message += f".{self._admin_tag}"
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def issue(self, caller: Caller, now: float | None = None) -> str:
        """A cookie value for `caller`, good for `SESSION_SECONDS`."""
        expires = int(now if now is not None else time.time()) + SESSION_SECONDS
        return f"v1.{caller.key_id}.{expires}.{self._mac(caller.key_id, expires)}"

    def key_id_of(self, value: str, now: float | None = None) -> str | None:
        """The key id a cookie value names, if it is signed here and not expired."""
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != "v1":
            return None
        if not (parts[2].isascii() and parts[2].isdigit()) or len(parts[2]) > 12:
            return None
        key_id, expires = parts[1], int(parts[2])
        if key_id == ADMIN.key_id and self._admin_tag is None:
            return None
        if not hmac.compare_digest(parts[3].encode(), self._mac(key_id, expires).encode()):
            return None
        if expires <= (now if now is not None else time.time()):
            return None
        return key_id

    async def caller_of(self, value: str, keys: ApiKeyService) -> Caller | None:
        """Who a cookie value stands for: None when it is not valid, expired, or its key was
        revoked since."""
        key_id = self.key_id_of(value)
        if key_id is None:
            return None
        if key_id == ADMIN.key_id:
            return ADMIN
        return await keys.caller_by_id(key_id)

    def set_on(self, response: Response, value: str, scope: Scope) -> None:
        response.headers.append("set-cookie", self._cookie(value, SESSION_SECONDS, scope))

    def clear_on(self, response: Response, scope: Scope) -> None:
        response.headers.append("set-cookie", self._cookie("", 0, scope))

    def _cookie(self, value: str, max_age: int, scope: Scope) -> str:
        cookie = f"{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}"
        secure = self.secure if self.secure is not None else is_https(scope)
        return cookie + "; Secure" if secure else cookie


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
        self,
        app: ASGIApp,
        settings: AuthSettings,
        limits: AuthLimits | None = None,
        cookies: SessionCookies | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        limits = limits or AuthLimits(settings)
        self.limiter = limits.requests
        self.failures = limits.failures
        # None: session cookies are not taken (the MCP port).
        self.cookies = cookies
        self.origins = tuple(settings.dashboard_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] not in ("http", "websocket")
            or path in PUBLIC_PATHS
            or path.startswith(UI_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        if path == SESSION_PATH and self.cookies is not None:
            # Signing in and out needs no key, but only from the dashboard's own pages.
            if _unsafe(scope) and not same_origin(scope, self.origins):
                await _refuse(scope, receive, send, _cross_site())
                return
            scope.setdefault("state", {})["caller"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        caller = ANONYMOUS
        if not self.settings.enabled and _unsafe(scope) and not same_origin(scope, self.origins):
            # Without keys, a browser's requests carry no credential at all: another site's
            # page must not be able to act (nor a DNS-rebinding one to stream) through it.
            await _refuse(scope, receive, send, _cross_site())
            return
        if self.settings.enabled:
            token = _token_of(scope)
            cookie = _cookie_of(scope) if token is None and self.cookies is not None else None
            if token is None and cookie is None:
                await _refuse(
                    scope,
                    receive,
                    send,
                    _unauthorized(
                        "missing_api_key",
                        "send your API key as `Authorization: Bearer <key>` (WebSocket: the "
                        "subprotocol `bearer.<key>`; EventSource: `?access_token=<key>`), or "
                        "sign in to the dashboard",
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
            if token is not None:
                found = await platform.keys.authenticate(token)
                refusal = _unauthorized(
                    "invalid_api_key", "the API key is not valid or was revoked"
                )
            else:
                assert cookie is not None and self.cookies is not None
                found = await self.cookies.caller_of(cookie, platform.keys)
                refusal = _unauthorized(
                    "invalid_session",
                    "the dashboard session is not valid, has expired, or its key was revoked; "
                    "sign in again",
                )
                self.cookies.clear_on(refusal, scope)
            if found is None:
                self.failures.wait_seconds(address)
                await _refuse(scope, receive, send, refusal)
                return
            if token is None and _unsafe(scope) and not same_origin(scope, self.origins):
                await _refuse(scope, receive, send, _cross_site())
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


def _unsafe(scope: Scope) -> bool:
    """A request a cross-site page must not make with the dashboard's cookie: one that changes
    something, or a WebSocket (which the same-origin policy does not cover)."""
    return scope["type"] == "websocket" or scope.get("method") in UNSAFE_METHODS


def _cross_site() -> JSONResponse:
    return error_response(
        403,
        "csrf_refused",
        "this request came from another site's page (its Origin is not this server's); the "
        "dashboard's session works only from the dashboard itself. Other clients send "
        "`Authorization: Bearer <key>`",
    )


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
