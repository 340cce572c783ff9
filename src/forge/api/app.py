"""The FastAPI application: routes, error mapping, body limit, and the platform's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from forge import __version__
from forge.api.errors import error_response, install_error_handlers
from forge.api.routes import health_router, router
from forge.config import Settings
from forge.core.platform import Platform

MAX_BODY_BYTES = 2 * 1024 * 1024


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

    @app.middleware("http")
    async def limit_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return error_response(
                413, "body_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes"
            )
        return await call_next(request)

    app.include_router(router)
    app.include_router(health_router)
    return app
