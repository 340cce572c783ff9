"""Sessions: `GET /sessions`, `GET /sessions/{id}`, `GET /sessions/{id}/transcript`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse

from forge.api.routes import AGENT_ID_PATTERN, AgentId, UserId, platform_of
from forge.core.schemas import ErrorBody
from forge.core.sessions import (
    Session,
    SessionPage,
    SessionStatus,
    Transcript,
    transcript_markdown,
)

sessions_router = APIRouter(
    prefix="/api/v1",
    tags=["sessions"],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)


@sessions_router.get("/sessions", response_model=SessionPage)
async def list_sessions(
    request: Request,
    user_id: UserId = None,
    profile: Annotated[str | None, Query(max_length=128, description="Only this profile.")] = None,
    status: Annotated[SessionStatus | None, Query(description="Only this status.")] = None,
    created_after: Annotated[
        datetime | None, Query(description="Created at or after (ISO 8601).")
    ] = None,
    created_before: Annotated[
        datetime | None, Query(description="Created before (ISO 8601).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=AGENT_ID_PATTERN)] = None,
) -> SessionPage:
    """Newest first; `next_cursor` pages on."""
    return await platform_of(request).sessions.list(
        user_id,
        profile=profile,
        status=status,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
    )


@sessions_router.get("/sessions/{agent_id}", response_model=Session)
async def get_session(request: Request, agent_id: AgentId, user_id: UserId = None) -> Session:
    return await platform_of(request).sessions.get(agent_id, user_id)


@sessions_router.get(
    "/sessions/{agent_id}/transcript",
    response_model=Transcript,
    responses={200: {"content": {"text/markdown": {}}}},
)
async def get_transcript(
    request: Request,
    agent_id: AgentId,
    user_id: UserId = None,
    format: Annotated[Literal["json", "markdown"], Query(description="json or markdown")] = "json",
) -> Transcript | PlainTextResponse:
    """The session's messages and the normalized entries of every run, in order."""
    transcript = await platform_of(request).sessions.transcript(agent_id, user_id)
    if format == "markdown":
        return PlainTextResponse(transcript_markdown(transcript), media_type="text/markdown")
    return transcript
