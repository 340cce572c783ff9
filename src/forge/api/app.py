"""The FastAPI application: routes, error mapping, body limit, and the platform's lifetime."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI, HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from forge import __version__
from forge.api.auth import Authenticate, AuthLimits, HideTokens, SessionCookies
from forge.api.dashboard_routes import mount_dashboard
from forge.api.errors import error_response, install_error_handlers
from forge.api.keys import keys_router
from forge.api.multipart import ATTACHMENT_PATHS, MultipartMessages
from forge.api.neurons import neurons_router, neurons_ws_router
from forge.api.routes import health_router, router
from forge.api.sessions import sessions_router
from forge.api.worktrees import worktrees_router
from forge.api.ws import ws_router
from forge.config import Settings
from forge.core.platform import Platform
from forge.mcp.http import McpHttp, McpPortError

MAX_BODY_BYTES = 2 * 1024 * 1024


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, by header and while streaming.

    Plain ASGI rather than `BaseHTTPMiddleware`, which would pipe every response chunk (each
    SSE page) through an extra memory stream.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, message_max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Messages may carry attachments.
        self.message_max_bytes = message_max_bytes or max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.message_max_bytes if ATTACHMENT_PATHS.match(scope["path"]) else self.max_bytes
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._refuse(scope, receive, send, limit)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTPException passes through FastAPI's body parsing to the handlers.
                    raise HTTPException(413, detail=_too_large(limit))
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(413, "body_too_large", _too_large(limit))
        await response(scope, receive, send)


def _too_large(limit: int) -> str:
    return f"request bodies are limited to {limit} bytes here"


def create_app(settings: Settings, mcp: McpHttp | None = None) -> FastAPI:
    """An app that starts a `Platform` for `settings` on startup and stops it on shutdown.
    `mcp` serves `/mcp` (and `[server] mcp_port`); one of its own if not given."""
    mcp = mcp or McpHttp(settings)
    # One set of allowances for every port: a key's requests count once wherever they arrive.
    limits = AuthLimits(settings.auth)
    mcp_port_app = _mcp_port_app(settings, mcp, limits) if settings.server.mcp_port else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform = Platform(settings)
        await platform.start()
        app.state.platform = platform
        try:
            # MCP at /mcp (and on [server] mcp_port, if set): its transport runs as long as
            # the app.
            async with mcp.running(platform, mcp_port_app):
                yield
        finally:
            platform.begin_shutdown()
            await platform.stop()

    app = FastAPI(
        title="Forge",
        version=__version__,
        description="Run AI coding agents in isolated workspaces and stream what they do.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    app.add_middleware(MultipartMessages)
    # Base64 makes attachments a third larger.
    attachments = (
        settings.attachments.max_total_bytes * 4
    ) // 3 + 4 * settings.attachments.max_files
    app.add_middleware(
        BodySizeLimit, max_bytes=MAX_BODY_BYTES, message_max_bytes=MAX_BODY_BYTES + attachments
    )
    # Added last, so it runs first: nothing is read from an unauthenticated request.
    cookies = SessionCookies(settings.auth)
    app.add_middleware(Authenticate, settings=settings.auth, limits=limits, cookies=cookies)
    app.include_router(router)
    app.include_router(worktrees_router)
    app.include_router(sessions_router)
    app.include_router(ws_router)
    app.include_router(neurons_router)
    app.include_router(neurons_ws_router)
    app.include_router(keys_router)
    app.include_router(health_router)
    mount_dashboard(app, cookies, limits)
    app.router.routes.append(mcp.route())
    return app


def _mcp_port_app(settings: Settings, mcp: McpHttp, limits: AuthLimits) -> FastAPI:
    """`/mcp` alone, for `[server] mcp_port`: the same `Authenticate` (and `limits`), body limit
    and error answers as the main app."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(Authenticate, settings=settings.auth, limits=limits)
    app.router.routes.append(mcp.route())
    return app


# How long a connection may keep unsent data once it is over (its stream ended, or the server is
# shutting down) before it is aborted: a peer that stopped reading would otherwise hold the
# socket, and the shutdown, for as long as its TCP stays up.
STUCK_CONNECTION_GRACE_SECONDS = 2.0


def _abort_if_stuck(transport: asyncio.BaseTransport | None) -> None:
    # (Aborting a transport that is already gone does nothing.)
    if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size() > 0:
        transport.abort()


class _WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, but a connection whose stream has ended while the client
    still has unread data (it stopped reading: `WebSocketStream` gave up on it) is aborted
    after a grace period instead of waiting forever for the buffer to drain."""

    async def run_asgi(self) -> None:
        await super().run_asgi()
        self.loop.call_later(STUCK_CONNECTION_GRACE_SECONDS, _abort_if_stuck, self.transport)


class _Server(uvicorn.Server):
    """uvicorn's server, telling the platform of a stop signal before connections are drained:
    live streams end at once (clients resume on the next server) instead of holding the
    shutdown until uvicorn's graceful timeout."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Streams end at once on shutdown, but a connection whose client stopped reading keeps
        # its unsent data and would hold the shutdown up to uvicorn's graceful timeout.
        loop = asyncio.get_running_loop()
        loop.call_later(STUCK_CONNECTION_GRACE_SECONDS, self._abort_stuck_connections)
        await super().shutdown(sockets)

    def _abort_stuck_connections(self) -> None:
        for connection in list(self.server_state.connections):
            _abort_if_stuck(getattr(connection, "transport", None))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        platform: Platform | None = getattr(self._app.state, "platform", None)
        if platform is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(platform.begin_shutdown)
        super().handle_exit(sig, frame)


def run_server(settings: Settings, *, log_level: str = "info") -> None:
    """Serve the API until SIGINT or SIGTERM. On a stop signal Forge stops taking requests,
    ends live streams, records the webhook outcomes it knows and leaves the runners running
    (with the events it has not stored yet) for the next start to reattach to."""
    mcp = McpHttp(settings)
    try:
        # Before the platform starts (and migrates): a port that cannot be bound is one line.
        mcp.listen()
    except McpPortError as exc:
        logging.getLogger(__name__).error("%s", exc)
        raise SystemExit(1) from None
    app = create_app(settings, mcp)
    ws = settings.websocket
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=10,
        ws=_WebSocketProtocol,
        ws_ping_interval=ws.ping_interval_seconds or None,
        ws_ping_timeout=ws.ping_timeout_seconds,
        ws_max_size=ws.max_message_size,
        ws_per_message_deflate=ws.compression,
    )
    # After the config, which sets up uvicorn's logging: keys sent as `access_token` stay out
    # of the access log.
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(HideTokens())
    _Server(config, app).run()
