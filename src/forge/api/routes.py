"""HTTP routes: parse, call one service method, shape the answer."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from forge.api.auth import CallerOf, OwnerScope, bearer_scheme, caller_of, stream_over
from forge.api.streams import sse_stream
from forge.core.platform import Platform
from forge.core.schemas import (
    MAX_ATTACHMENTS,
    MAX_MESSAGE_CHARS,
    NAME_PATTERN,
    Agent,
    AgentCreate,
    AgentList,
    AgentUpdate,
    Delivery,
    DeliveryPage,
    DeliveryStatus,
    ErrorBody,
    EventPage,
    Health,
    InterruptAccepted,
    InterruptRequest,
    MessageAccepted,
    MessageCreate,
    Permission,
    PermissionAnswer,
    PermissionList,
    ProfileInfo,
    ProfileList,
)

# The largest seq a database integer holds.
MAX_SEQ = 2**63 - 1
AGENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

AgentId = Annotated[str, Path(pattern=AGENT_ID_PATTERN, description="Agent id (ag_...).")]

# What every authenticated route may answer besides its own errors.
AUTH_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "No API key, or not a valid one."},
    403: {"model": ErrorBody, "description": "The key may not do this."},
    429: {"model": ErrorBody, "description": "Over the key's rate limit; see Retry-After."},
}
# What any request may be answered for what it sent, on every route that takes one.
REQUEST_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "The body is not valid JSON."},
    413: {"model": ErrorBody, "description": "The body is over the size limit."},
    422: {"model": ErrorBody, "description": "A value is missing or not what the route takes."},
}
_errors: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    **REQUEST_ERRORS,
    **AUTH_ERRORS,
}

router = APIRouter(prefix="/api/v1", responses=_errors, dependencies=[Depends(bearer_scheme)])
health_router = APIRouter()
log = logging.getLogger(__name__)


def platform_of(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


@router.post("/agents", status_code=201, response_model=Agent, tags=["agents"])
async def create_agent(
    request: Request,
    body: AgentCreate,
    caller: CallerOf,
    wait: Annotated[bool, Query(description="Answer once the agent is ready.")] = False,
) -> Agent:
    owner = caller.owner_for_new(body.owner_id)
    return await platform_of(request).agents.create(body, owner_id=owner, wait=wait)


@router.get("/agents", response_model=AgentList, tags=["agents"])
async def list_agents(
    request: Request,
    user_id: OwnerScope,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=AGENT_ID_PATTERN)] = None,
) -> AgentList:
    return await platform_of(request).agents.list_agents(user_id, limit=limit, cursor=cursor)


@router.get("/agents/{agent_id}", response_model=Agent, tags=["agents"])
async def get_agent(request: Request, agent_id: AgentId, user_id: OwnerScope) -> Agent:
    return await platform_of(request).agents.get(agent_id, user_id)


@router.patch("/agents/{agent_id}", response_model=Agent, tags=["agents"])
async def update_agent(
    request: Request, agent_id: AgentId, body: AgentUpdate, user_id: OwnerScope
) -> Agent:
    return await platform_of(request).agents.update(agent_id, user_id, body)


@router.delete("/agents/{agent_id}", status_code=204, tags=["agents"])
async def delete_agent(
    request: Request,
    agent_id: AgentId,
    user_id: OwnerScope,
    graceful: Annotated[bool, Query(description="Let the current run end cleanly.")] = True,
    purge: Annotated[bool, Query(description="Also remove the worktree and its branch.")] = False,
) -> Response:
    await platform_of(request).agents.delete(agent_id, user_id, graceful=graceful, purge=purge)
    return Response(status_code=204)


@router.post(
    "/agents/{agent_id}/messages",
    status_code=202,
    response_model=MessageAccepted,
    tags=["runs"],
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    # The rules of `MessageCreate`, which the form becomes.
                    "schema": {
                        "type": "object",
                        "required": ["content"],
                        "additionalProperties": False,
                        "properties": {
                            "content": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_MESSAGE_CHARS,
                            },
                            "request_id": {"type": "string", "pattern": NAME_PATTERN},
                            "webhook_url": {"type": "string", "minLength": 1, "maxLength": 2048},
                            "webhook_secret": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 512,
                            },
                            "priority": {"type": "integer", "minimum": -1000, "maximum": 1000},
                            "files": {
                                "type": "array",
                                "maxItems": MAX_ATTACHMENTS,
                                "items": {"type": "string", "format": "binary"},
                            },
                        },
                    }
                }
            }
        }
    },
)
async def send_message(
    request: Request, agent_id: AgentId, body: MessageCreate, user_id: OwnerScope
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
    user_id: OwnerScope,
    body: Annotated[InterruptRequest | None, Body()] = None,
) -> InterruptAccepted:
    return await platform_of(request).agents.interrupt(
        agent_id, user_id, body or InterruptRequest()
    )


PermissionId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="From the permission_request entry.")
]


@router.get("/agents/{agent_id}/permissions", response_model=PermissionList, tags=["runs"])
async def list_permissions(
    request: Request,
    agent_id: AgentId,
    user_id: OwnerScope,
    pending: Annotated[bool, Query(description="Only requests still waiting.")] = False,
) -> PermissionList:
    return await platform_of(request).agents.permissions(agent_id, user_id, pending_only=pending)


@router.post(
    "/agents/{agent_id}/permissions/{permission_id}", response_model=Permission, tags=["runs"]
)
async def answer_permission(
    request: Request,
    agent_id: AgentId,
    permission_id: PermissionId,
    body: PermissionAnswer,
    user_id: OwnerScope,
) -> Permission:
    """Answer a `permission_request` entry: the waiting tool call runs or is refused."""
    return await platform_of(request).agents.answer_permission(
        agent_id, user_id, permission_id, body
    )


@router.get("/profiles", response_model=ProfileList, tags=["agents"])
async def list_profiles(request: Request) -> ProfileList:
    """The profiles agents can be created with, and the executor kinds with their variants."""
    catalog = platform_of(request).agents.profiles
    return ProfileList(
        profiles=[
            ProfileInfo(
                name=p.name,
                executor=p.executor,
                variant=p.variant,
                model=p.model or None,
                permission_mode=p.permission_mode,
                description=p.description,
                source=p.source,
            )
            for p in catalog.all()
        ],
        executors={kind: catalog.variants(kind) for kind in catalog.kinds()},
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
    user_id: OwnerScope,
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
        if last_event_id and last_event_id.strip().isascii() and last_event_id.strip().isdigit():
            start = max(start, min(int(last_event_id.strip()), MAX_SEQ))
        return StreamingResponse(
            sse_stream(
                platform.eventlog,
                platform.bus,
                agent_id,
                start,
                keepalive=platform.settings.sse.keepalive_seconds,
                agent_gone=stream_over(platform, agent_id, caller_of(request)),
            ),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    page = await platform.agents.events(agent_id, user_id, after=after, limit=limit)
    return Response(content=page.to_json(), media_type="application/json")


DeliveryId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Delivery id (dlv_...).")
]


@router.get("/agents/{agent_id}/deliveries", response_model=DeliveryPage, tags=["webhooks"])
async def list_deliveries(
    request: Request,
    agent_id: AgentId,
    user_id: OwnerScope,
    status: Annotated[DeliveryStatus | None, Query(description="Only deliveries in it.")] = None,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="Only deliveries of events with a greater seq.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveryPage:
    """The agent's webhook deliveries in seq order: what was sent where, and what is held."""
    return await platform_of(request).deliveries.list_deliveries(
        agent_id, user_id, status=status, after=after, limit=limit
    )


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=Delivery,
    tags=["webhooks"],
)
async def redeliver(request: Request, delivery_id: DeliveryId, user_id: OwnerScope) -> Delivery:
    """Send the delivery again (pending, due now, attempts from 0) and enable its endpoint
    again, so deliveries held for it follow in order."""
    return await platform_of(request).deliveries.redeliver(delivery_id, user_id)


@health_router.get(
    "/health",
    response_model=Health,
    tags=["health"],
    dependencies=[Depends(bearer_scheme)],
    responses=AUTH_ERRORS,
)
async def health(request: Request, caller: CallerOf) -> Health | JSONResponse:
    """Status, version, database and sandbox runtime; the agent counts are the caller's own
    (every owner's with the admin key)."""
    platform = platform_of(request)
    database: dict[str, object] = {"backend": platform.db.backend}
    try:
        await platform.db.ping()
        database["status"] = "ok"
        agents = await platform.agents.status_counts(caller.owner_id)
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
        sandbox={
            "runtime": platform.agents.runtime.name,
            "warm_pool": platform.agents.pool.counts(),
        },
    )


@health_router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health_router.get(
    "/readyz",
    tags=["health"],
    responses={
        503: {
            "description": "The database did not answer.",
            "content": {"application/json": {"example": {"status": "unavailable"}}},
        }
    },
)
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
