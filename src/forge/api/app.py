"""The FastAPI application: routes, error mapping, body limit, and the platform's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forge import __version__
from forge.api.errors import error_response, install_error_handlers
from forge.api.routes import health_router, router
from forge.config import Settings
from forge.core.platform import Platform

MAX_BODY_BYTES = 2 * 1024 * 1024


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, by header and while streaming.

    Plain ASGI rather than `BaseHTTPMiddleware`, which would pipe every response chunk (each
    SSE page) through an extra memory stream.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException passes through FastAPI's body parsing to the handlers.
                    raise HTTPException(413, detail=self._message)
            return message

        await self.app(scope, limited_receive, send)

    @property
    def _message(self) -> str:
        return f"request bodies are limited to {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "body_too_large", self._message)
        await response(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    """An app that starts a `Platform` for `settings` on startup and stops it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform = Platform(settings)
        await platform.start()
        app.state.platform = platform
        try:
            yield
        finally:
            await platform.stop()

    app = FastAPI(
        title="Forge",
        version=__version__,
        description="Run AI coding agents in isolated workspaces and stream what they do.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.include_router(router)
    app.include_router(health_router)
    return app
