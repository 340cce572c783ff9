"""Sessions and tasks: list, read, transcribe, stop and resume sessions; create and follow
tasks."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastPath
from fastapi.responses import PlainTextResponse
from pydantic import AwareDatetime, BeforeValidator

from forge.api.auth import CallerOf, OwnerScope, bearer_scheme
from forge.api.routes import (
    AGENT_ID_PATTERN,
    AUTH_ERRORS,
    REQUEST_ERRORS,
    AgentId,
    platform_of,
)
from forge.core.schemas import ErrorBody, MessageAccepted, MessageCreate, ResumeRequest
from forge.core.sessions import (
    Session,
    SessionPage,
    SessionStatus,
    Transcript,
    transcript_markdown,
)
from forge.core.tasks import Task, TaskCreate, TaskList

_ISO_8601 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:?\d{2})$"
)


def _iso_8601(value: object) -> object:
    # pydantic alone would read a number as Unix time, and take a date or a time without an
    # offset, which cannot be compared with the stored (UTC) times.
    if isinstance(value, str) and not _ISO_8601.match(value):
        raise ValueError(
            "must be an ISO 8601 date and time with an offset, e.g. 2026-11-21T10:00:00Z"
        )
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_8601)]

sessions_router = APIRouter(
    prefix="/api/v1",
    tags=["sessions"],
    responses={
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
        **REQUEST_ERRORS,
        **AUTH_ERRORS,
    },
    dependencies=[Depends(bearer_scheme)],
)


@sessions_router.get("/sessions", response_model=SessionPage)
async def list_sessions(
    request: Request,
    user_id: OwnerScope,
    profile: Annotated[str | None, Query(max_length=128, description="Only this profile.")] = None,
    status: Annotated[SessionStatus | None, Query(description="Only this status.")] = None,
    created_after: Annotated[
        Timestamp | None, Query(description="Created at or after (ISO 8601, with an offset).")
    ] = None,
    created_before: Annotated[
        Timestamp | None, Query(description="Created before (ISO 8601, with an offset).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=AGENT_ID_PATTERN)] = None,
) -> SessionPage:
    """Newest first; `next_cursor` pages on."""
    return await platform_of(request).sessions.list_sessions(
        user_id,
        profile=profile,
        status=status,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
    )


@sessions_router.get("/sessions/{agent_id}", response_model=Session)
async def get_session(request: Request, agent_id: AgentId, user_id: OwnerScope) -> Session:
    return await platform_of(request).sessions.get(agent_id, user_id)


@sessions_router.get(
    "/sessions/{agent_id}/transcript",
    response_model=Transcript,
    responses={200: {"content": {"text/markdown": {}}}},
)
async def get_transcript(
    request: Request,
    agent_id: AgentId,
    user_id: OwnerScope,
    format: Annotated[Literal["json", "markdown"], Query(description="json or markdown")] = "json",
) -> Transcript | PlainTextResponse:
    """The session's messages and the normalized entries of every run, in order."""
    transcript = await platform_of(request).sessions.transcript(agent_id, user_id)
    if format == "markdown":
        return PlainTextResponse(transcript_markdown(transcript), media_type="text/markdown")
    return transcript


@sessions_router.post(
    "/sessions/{agent_id}/resume", status_code=202, response_model=MessageAccepted
)
async def resume_session(
    request: Request, agent_id: AgentId, body: ResumeRequest, user_id: OwnerScope
) -> MessageAccepted:
    """Send the next message; a stopped session gets a new sandbox on the same worktree and its
    executor continues the same conversation."""
    return await platform_of(request).agents.send_message(
        agent_id, user_id, MessageCreate(content=body.prompt, priority=body.priority)
    )


@sessions_router.post("/sessions/{agent_id}/stop", response_model=Session)
async def stop_session(request: Request, agent_id: AgentId, user_id: OwnerScope) -> Session:
    """Interrupt the running run (and wait for it), end queued ones, remove the sandbox; the
    workspace and the conversation stay for `resume`."""
    platform = platform_of(request)
    await platform.agents.stop_session(agent_id, user_id)
    return await platform.sessions.get(agent_id, user_id)


TASK_ID_PATTERN = r"^tk_[0-9a-z]{26}$"
TaskId = Annotated[str, FastPath(pattern=TASK_ID_PATTERN, description="Task id (tk_...).")]


@sessions_router.post("/tasks", status_code=201, response_model=Task, tags=["tasks"])
async def create_task(request: Request, body: TaskCreate, caller: CallerOf) -> Task:
    """Make a session for the work and queue its first run (with `priority`)."""
    owner = caller.owner_for_new(body.owner_id)
    return await platform_of(request).tasks.create(body, owner_id=owner)


@sessions_router.get("/tasks", response_model=TaskList, tags=["tasks"])
async def list_tasks(
    request: Request,
    user_id: OwnerScope,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=TASK_ID_PATTERN)] = None,
) -> TaskList:
    return await platform_of(request).tasks.list_tasks(user_id, limit=limit, cursor=cursor)


@sessions_router.get("/tasks/{task_id}", response_model=Task, tags=["tasks"])
async def get_task(request: Request, task_id: TaskId, user_id: OwnerScope) -> Task:
    return await platform_of(request).tasks.get(task_id, user_id)
