"""MCP over Streamable HTTP: at `/mcp` on Forge's own app, and also on a port of its own when
the environment variable `MCP_PORT` is set (same host as `[server] host`, same API keys).

The transport is stateless with JSON answers: every MCP request is one HTTP request that
`Authenticate` has already checked, and the tools act for that request's caller. No MCP session
lives in one process, so any replica can answer any request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route

from forge.api.auth import Authenticate, caller_of
from forge.config import Settings
from forge.core.platform import Platform
from forge.mcp.backend import ForgeBackend, InProcessBackend
from forge.mcp.tools import build_server

MCP_PATH = "/mcp"
MCP_PORT_VARIABLE = "MCP_PORT"
# Requests still in flight on the MCP port get this long once Forge stops.
_GRACEFUL_SECONDS = 5

log = logging.getLogger(__name__)


def in_process_backend(ctx: Context) -> ForgeBackend:
    """The platform's services, acting for the caller of the HTTP request that carried `ctx`'s
    MCP message."""
    request = ctx.request_context.request
    if not isinstance(request, Request):
        raise RuntimeError("the in-process MCP backend serves HTTP requests only")
    platform: Platform = request.app.state.platform
    return InProcessBackend(platform, caller_of(request))


def mcp_port() -> int | None:
    """The port in `MCP_PORT`, if set (ValueError if it is not a port number)."""
    value = os.environ.get(MCP_PORT_VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{MCP_PORT_VARIABLE}={value!r} is not a port number (1-65535)")
    return int(value)


class McpHttp:
    """Forge's MCP server over Streamable HTTP for one app: `route` is mounted at `/mcp`, and
    `running(platform)` (in the app's lifespan) runs the transport and, with `MCP_PORT`, the
    second listener."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: MCPServer = build_server(in_process_backend)
        # Makes the session manager (the Starlette app it answers is not used: Forge's app
        # routes to the manager itself, behind Forge's middleware). On a loopback host it
        # checks Host and Origin against DNS rebinding, as the SDK does by default.
        self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            json_response=True,
            host=settings.server.host,
        )
        self.endpoint = StreamableHTTPASGIApp(self.server.session_manager)
        # Stateless, the SDK would log the end of every request at INFO.
        logging.getLogger("mcp.server.streamable_http").setLevel(logging.WARNING)

    def route(self) -> Route:
        return Route(
            MCP_PATH, endpoint=self.endpoint, methods=["GET", "POST", "DELETE"], name="mcp"
        )

    @asynccontextmanager
    async def running(self, platform: Platform) -> AsyncIterator[None]:
        async with self.server.session_manager.run():
            port = mcp_port()
            if port is None:
                yield
                return
            async with self._own_port(platform, port):
                yield

    @asynccontextmanager
    async def _own_port(self, platform: Platform, port: int) -> AsyncIterator[None]:
        """`/mcp` alone on `port`, behind the same `Authenticate` as the main app."""
        host = self.settings.server.host
        app = Starlette(
            routes=[self.route()],
            middleware=[Middleware(Authenticate, settings=self.settings.auth)],
        )
        # `Authenticate` and the tools find the platform on the app, as on the main one.
        app.state.platform = platform
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise RuntimeError(f"cannot listen for MCP on {host}:{port}: {exc}") from exc
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            timeout_graceful_shutdown=_GRACEFUL_SECONDS,
        )
        server = _SideServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        log.info("MCP also listens on http://%s:%d%s", host, port, MCP_PATH)
        try:
            yield
        finally:
            server.should_exit = True
            try:
                await task
            finally:
                sock.close()


class _SideServer(uvicorn.Server):
    """A uvicorn server that runs beside Forge's main one in the same event loop: the main
    server owns the signal handlers, and Forge's lifespan stops this one."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
