"""HTTP routes: parse, call one service method, shape the answer."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from forge.api.streams import sse_stream
from forge.core.platform import Platform
from forge.core.schemas import (
    NAME_PATTERN,
    Agent,
    AgentCreate,
    AgentList,
    ErrorBody,
    EventPage,
    Health,
    InterruptAccepted,
    InterruptRequest,
    MessageAccepted,
    MessageCreate,
)

# The largest seq a database integer holds.
MAX_SEQ = 2**63 - 1
AGENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

AgentId = Annotated[str, Path(pattern=AGENT_ID_PATTERN, description="Agent id (ag_...).")]
UserId = Annotated[
    str | None,
    Query(pattern=NAME_PATTERN, description="Owner; another owner's agent answers 404."),
]

_errors: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    422: {"model": ErrorBody},
}

router = APIRouter(prefix="/api/v1", responses=_errors)
health_router = APIRouter()
log = logging.getLogger(__name__)


def platform_of(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


@router.post("/agents", status_code=201, response_model=Agent, tags=["agents"])
async def create_agent(
    request: Request,
    body: AgentCreate,
    wait: Annotated[bool, Query(description="Answer once the agent is ready.")] = False,
) -> Agent:
    return await platform_of(request).agents.create(body, wait=wait)


@router.get("/agents", response_model=AgentList, tags=["agents"])
async def list_agents(
    request: Request,
    user_id: UserId = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=AGENT_ID_PATTERN)] = None,
) -> AgentList:
    return await platform_of(request).agents.list_agents(user_id, limit=limit, cursor=cursor)


@router.get("/agents/{agent_id}", response_model=Agent, tags=["agents"])
async def get_agent(request: Request, agent_id: AgentId, user_id: UserId = None) -> Agent:
    return await platform_of(request).agents.get(agent_id, user_id)


@router.delete("/agents/{agent_id}", status_code=204, tags=["agents"])
async def delete_agent(
    request: Request,
    agent_id: AgentId,
    user_id: UserId = None,
    graceful: Annotated[bool, Query(description="Let the current run end cleanly.")] = True,
    purge: Annotated[bool, Query(description="Also remove the worktree and its branch.")] = False,
) -> Response:
    await platform_of(request).agents.delete(agent_id, user_id, graceful=graceful, purge=purge)
    return Response(status_code=204)


@router.post(
    "/agents/{agent_id}/messages", status_code=202, response_model=MessageAccepted, tags=["runs"]
)
async def send_message(
    request: Request, agent_id: AgentId, body: MessageCreate, user_id: UserId = None
) -> MessageAccepted:
    return await platform_of(request).agents.send_message(agent_id, user_id, body)


@router.post(
    "/agents/{agent_id}/interrupt",
    status_code=202,
    response_model=InterruptAccepted,
    tags=["runs"],
)
async def interrupt_agent(
    request: Request,
    agent_id: AgentId,
    body: Annotated[InterruptRequest | None, Body()] = None,
    user_id: UserId = None,
) -> InterruptAccepted:
    return await platform_of(request).agents.interrupt(
        agent_id, user_id, body or InterruptRequest()
    )


@router.get(
    "/agents/{agent_id}/events",
    response_model=EventPage,
    tags=["events"],
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def agent_events(
    request: Request,
    agent_id: AgentId,
    user_id: UserId = None,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="Only events with a greater seq.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    platform = platform_of(request)
    if accept and "text/event-stream" in accept:
        await platform.agents.check_access(agent_id, user_id)
        start = after
        if last_event_id and last_event_id.strip().isdigit():
            start = max(start, min(int(last_event_id.strip()), MAX_SEQ))
        return StreamingResponse(
            sse_stream(platform.eventlog, platform.bus, agent_id, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    page = await platform.agents.events(agent_id, user_id, after=after, limit=limit)
    return Response(content=page.to_json(), media_type="application/json")


@health_router.get("/health", response_model=Health, tags=["health"])
async def health(request: Request) -> Health | JSONResponse:
    platform = platform_of(request)
    database: dict[str, object] = {"backend": platform.db.backend}
    try:
        await platform.db.ping()
        database["status"] = "ok"
        agents = await platform.agents.status_counts()
    except Exception:
        log.exception("health check: the database did not answer")
        database.update(status="error", error="the database did not answer; see the server log")
        agents = {}
    status = "ok" if database["status"] == "ok" else "degraded"
    return Health(
        status=status,
        version=platform.version,
        uptime_s=round(platform.uptime_s, 3),
        database=database,
        agents=agents,
    )


@health_router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health_router.get("/readyz", tags=["health"])
async def readyz(request: Request) -> JSONResponse:
    try:
        await platform_of(request).db.ping()
    except Exception:
        log.exception("readiness check: the database did not answer")
        return JSONResponse(
            status_code=503,
            content={"status": "unavailable", "error": "the database did not answer"},
        )
    return JSONResponse(content={"status": "ready"})
