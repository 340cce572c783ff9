"""MCP over Streamable HTTP: at `/mcp` on Forge's own app, and also on a port of its own when
`[server] mcp_port` (or the environment variable `MCP_PORT`) is set: same host as `[server]
host`, same API keys.

The transport is stateless with JSON answers: every MCP request is one HTTP `POST` that
`Authenticate` has already checked, and the tools act for that request's caller. No MCP session
lives in one process, so any replica can answer any request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from forge.api.auth import caller_of
from forge.config import Settings
from forge.core.platform import Platform
from forge.mcp.backend import ForgeBackend, InProcessBackend
from forge.mcp.tools import build_server

MCP_PATH = "/mcp"
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


class McpPortError(RuntimeError):
    """Raised by `McpHttp.listen` when `[server] mcp_port` cannot be bound (taken, or not
    allowed); the message says which address and why, in one line."""


class McpHttp:
    """Forge's MCP server over Streamable HTTP for one app: `route` is mounted at `/mcp`;
    `listen()` binds `[server] mcp_port` early (before the platform starts); and
    `running(platform, port_app)` (in the app's lifespan) runs the transport and serves
    `port_app` (`/mcp` alone, wrapped as the main app is) on that port."""

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
        self._socket: socket.socket | None = None
        # Stateless, the SDK would log the end of every request at INFO.
        logging.getLogger("mcp.server.streamable_http").setLevel(logging.WARNING)

    def route(self) -> Route:
        # POST only: stateless, there is no session for a GET stream to follow (the SDK would
        # hold it open for nothing) nor for a DELETE to end. Others answer 405, `Allow: POST`.
        return Route(MCP_PATH, endpoint=self.endpoint, methods=["POST"], name="mcp")

    def listen(self) -> None:
        """Bind `[server] mcp_port`, if set and not bound yet (McpPortError if it cannot be)."""
        port = self.settings.server.mcp_port
        if port is None or self._socket is not None:
            return
        host = self.settings.server.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._socket = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise McpPortError(
                f"cannot listen for MCP on {host}:{port} ([server] mcp_port or MCP_PORT): "
                f"{exc.strerror or exc}"
            ) from exc

    @asynccontextmanager
    async def running(
        self, platform: Platform, port_app: Starlette | None = None
    ) -> AsyncIterator[None]:
        """Run the transport; with `port_app`, serve it on `[server] mcp_port` meanwhile."""
        if port_app is not None:
            # Bound before the session manager's task group: a failure is one clear error.
            self.listen()
        async with self.server.session_manager.run():
            if port_app is None or self._socket is None:
                yield
                return
            # `Authenticate` and the tools find the platform on the app, as on the main one.
            port_app.state.platform = platform
            async with self._serve(port_app, self._socket):
                yield

    @asynccontextmanager
    async def _serve(self, app: Starlette, sock: socket.socket) -> AsyncIterator[None]:
        host, port = self.settings.server.host, self.settings.server.mcp_port
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            timeout_graceful_shutdown=_GRACEFUL_SECONDS,
        )
        server = _SideServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))

        def report_end(task: asyncio.Task[None]) -> None:
            # Forge keeps serving on its main port; whoever runs it should know MCP here ended.
            if task.cancelled() or server.should_exit:
                return
            error = task.exception()
            log.error(
                "MCP on http://%s:%d%s stopped serving%s",
                host,
                port,
                MCP_PATH,
                f": {error!r}" if error else "",
                exc_info=error,
            )

        task.add_done_callback(report_end)
        log.info("MCP also listens on http://%s:%d%s", host, port, MCP_PATH)
        try:
            yield
        finally:
            server.should_exit = True
            try:
                if not task.done():
                    await task
            finally:
                sock.close()
                self._socket = None


class _SideServer(uvicorn.Server):
    """A uvicorn server that runs beside Forge's main one in the same event loop: the main
    server owns the signal handlers, and Forge's lifespan stops this one."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
