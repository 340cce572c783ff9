"""The dashboard's routes: the server's status, analytics, signing in with a session cookie, and
the page itself (`/` and `/ui/*`, public: the page holds no data, it asks the API)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from forge.api.auth import (
    SESSION_COOKIE,
    SESSION_PATH,
    AuthLimits,
    OwnerScope,
    SessionCookies,
    bearer_scheme,
)
from forge.api.errors import error_response
from forge.api.routes import AUTH_ERRORS, REQUEST_ERRORS, platform_of
from forge.api.sessions import Timestamp
from forge.core.analytics import Analytics, Bucket, DashboardStatus
from forge.core.schemas import ErrorBody

DASHBOARD_DIR = Path(__file__).with_name("dashboard")

dashboard_router = APIRouter(
    prefix="/api/v1",
    tags=["dashboard"],
    responses={**REQUEST_ERRORS, **AUTH_ERRORS},
    dependencies=[Depends(bearer_scheme)],
)
# No key needed (see `Authenticate`): signing in, out, and asking whether one is.
session_router = APIRouter(
    tags=["dashboard"],
    responses={
        401: {"model": ErrorBody, "description": "Signing in: not a valid key (invalid_api_key)."},
        403: {"model": ErrorBody, "description": "Sent from another site's page (csrf_refused)."},
        429: {"model": ErrorBody, "description": "Too many wrong keys from this address."},
    },
)


@dashboard_router.get("/status", response_model=DashboardStatus)
async def status(request: Request, user_id: OwnerScope) -> DashboardStatus:
    """The server now: version, uptime, runtime, database, and the sessions, queue and
    worktrees of the caller's owner (every owner's with the admin key, or `user_id`'s).
    Worktree disk use is measured at most every 30 seconds."""
    return await platform_of(request).analytics.status(user_id)


@dashboard_router.get("/analytics", response_model=Analytics)
async def analytics(
    request: Request,
    user_id: OwnerScope,
    since: Annotated[
        Timestamp | None,
        Query(description="Start (ISO 8601, with an offset). Default: 7 days before `until`."),
    ] = None,
    until: Annotated[
        Timestamp | None, Query(description="End (ISO 8601, with an offset). Default: now.")
    ] = None,
    bucket: Annotated[
        Bucket | None,
        Query(description="hour or day. Default: hour for ranges up to 48 h, else day."),
    ] = None,
) -> Analytics:
    """Runs, errors, tokens, cost and utilization over a range, in buckets (at most 400) and
    per profile. Definitions: docs/dashboard.md."""
    return await platform_of(request).analytics.analytics(
        user_id, since=since, until=until, bucket=bucket
    )


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(
        min_length=1, max_length=512, description="An owner's API key or the admin key."
    )


class SignedIn(BaseModel):
    owner_id: str | None = Field(description="The key's owner; null for the admin key.")
    admin: bool


class DashboardSession(BaseModel):
    auth_enabled: bool
    signed_in: bool
    owner_id: str | None
    admin: bool


def _cookies(request: Request) -> SessionCookies:
    cookies: SessionCookies = request.app.state.session_cookies
    return cookies


@session_router.post(
    SESSION_PATH,
    response_model=SignedIn,
    responses={
        **REQUEST_ERRORS,
        409: {"model": ErrorBody, "description": "Authentication is off: no sign-in needed."},
    },
)
async def sign_in(request: Request, body: SignIn) -> Response:
    """Sign in to the dashboard with an API key: sets the `forge_session` cookie (HttpOnly,
    SameSite=Strict, 12 hours; Secure over https), which then stands for the key on the API
    and its WebSocket streams. Wrong keys count against the address's failed-authentication
    allowance."""
    platform = platform_of(request)
    if not platform.settings.auth.enabled:
        return error_response(
            409, "auth_disabled", "authentication is off here: the dashboard needs no sign-in"
        )
    limits: AuthLimits = request.app.state.auth_limits
    address = f"ip:{request.client.host}" if request.client else "ip:?"
    wait = limits.failures.peek_seconds(address)
    if wait:
        return error_response(
            429,
            "rate_limited",
            f"failed authentications; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    caller = await platform.keys.authenticate(body.key.strip())
    if caller is None:
        limits.failures.wait_seconds(address)
        return error_response(
            401,
            "invalid_api_key",
            "the API key is not valid or was revoked",
            headers={"WWW-Authenticate": 'Bearer realm="forge"'},
        )
    response = JSONResponse(SignedIn(owner_id=caller.owner_id, admin=caller.is_admin).model_dump())
    cookies = _cookies(request)
    cookies.set_on(response, cookies.issue(caller), request.scope)
    return response


@session_router.get(SESSION_PATH, response_model=DashboardSession)
async def session_state(request: Request) -> DashboardSession:
    """Whether authentication is on and this browser is signed in (as whom)."""
    platform = platform_of(request)
    if not platform.settings.auth.enabled:
        return DashboardSession(auth_enabled=False, signed_in=False, owner_id=None, admin=True)
    value = request.cookies.get(SESSION_COOKIE)
    caller = await _cookies(request).caller_of(value, platform.keys) if value else None
    return DashboardSession(
        auth_enabled=True,
        signed_in=caller is not None,
        owner_id=caller.owner_id if caller else None,
        admin=caller.is_admin if caller else False,
    )


@session_router.delete(SESSION_PATH, status_code=204)
async def sign_out(request: Request) -> Response:
    """Sign out: the cookie is cleared. (It stays valid until it expires if someone kept a
    copy; revoke the key to end every session made with it.)"""
    response = Response(status_code=204)
    _cookies(request).clear_on(response, request.scope)
    return response


# The page and its files: revalidated on every load (an upgrade shows at once), never framed by
# another page (a frame would click its buttons with the user's cookie), scripts and connections
# only from Forge itself.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _UiFiles(StaticFiles):
    """The dashboard's files, with `PAGE_HEADERS`."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Forge</title></head>
<body><h1>Forge</h1><p>The dashboard is not built yet; the API is at <a href="/docs">/docs</a>.</p>
</body></html>
"""


def mount_dashboard(app: FastAPI, cookies: SessionCookies, limits: AuthLimits) -> None:
    """Add the dashboard's API routes, its sign-in and its page to `app`."""
    app.state.session_cookies = cookies
    app.state.auth_limits = limits
    app.include_router(dashboard_router)
    app.include_router(session_router)
    index = DASHBOARD_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    async def dashboard_page() -> Response:
        if not index.exists():
            # A checkout without the dashboard's files still answers `/`.
            return HTMLResponse(_PLACEHOLDER, headers=PAGE_HEADERS)
        return FileResponse(index, media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/ui", _UiFiles(directory=DASHBOARD_DIR, check_dir=False), name="ui")
