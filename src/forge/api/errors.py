"""Errors as HTTP answers, mapped in one place.

Every error body is `{"error": "<code>", "message": "<what to fix>"}`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from forge.core.errors import ForgeError

log = logging.getLogger(__name__)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": code, "message": message}, headers=headers
    )


def _describe(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "")
        return 400, "invalid_json", f"the request body is not valid JSON: {reason}".rstrip(": ")
    parts = []
    for error in errors[:5]:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        msg = error.get("msg", "invalid")
        if error.get("type") == "missing":
            msg = "is required"
        elif error.get("type") == "extra_forbidden":
            msg = "is not a known field"
        parts.append(f"{where}: {msg}")
    return 422, "invalid_request", "; ".join(parts)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route takes at the request's path."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ForgeError)
    async def _forge_error(_request: Request, exc: ForgeError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("%s: %s", exc.code, exc.message)
        return error_response(exc.status_code, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = _describe(exc)
        return error_response(status, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        code = codes.get(exc.status_code, "http_error")
        message = str(exc.detail) if exc.detail else code
        headers = dict(exc.headers or {})
        if exc.status_code == 400 and message == "There was an error parsing the body":
            # FastAPI's answer when the JSON parser itself gives up (e.g. nesting too deep).
            code, message = "invalid_json", "the request body could not be parsed as JSON"
        if exc.status_code == 404 and message == "Not Found":
            message = "no such route; see /docs for the API"
        if exc.status_code == 405:
            # HTTP requires `Allow` on a 405. The router's names the methods of the first
            # route with this path only, and a path has a route per method here.
            allowed = _allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            if message == "Method Not Allowed":
                message = f"{request.url.path} does not take {request.method}; it takes " + (
                    ", ".join(allowed)
                )
        return error_response(exc.status_code, code, message, headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(
            500, "internal_error", "an unexpected error occurred; see the server log"
        )
