"""The FastAPI application: routes, error mapping, body limit, and the platform's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forge import __version__
from forge.api.errors import error_response, install_error_handlers
from forge.api.multipart import MESSAGES_PATH, MultipartMessages
from forge.api.routes import health_router, router
from forge.config import Settings
from forge.core.platform import Platform

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
        limit = self.message_max_bytes if MESSAGES_PATH.match(scope["path"]) else self.max_bytes
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

    app.add_middleware(MultipartMessages)
    # Base64 makes attachments a third larger.
    attachments = (
        settings.attachments.max_total_bytes * 4
    ) // 3 + 4 * settings.attachments.max_files
    app.add_middleware(
        BodySizeLimit, max_bytes=MAX_BODY_BYTES, message_max_bytes=MAX_BODY_BYTES + attachments
    )
    app.include_router(router)
    app.include_router(health_router)
    return app
