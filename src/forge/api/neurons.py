"""Neurons: list, read, message, and `WS /ws/neurons/{name}` (the state document as JSON Patch).

Every neuron route acts for one owner: the owner of the caller's key, or, with the admin key
(or auth off), the `user_id` asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, WebSocket
from starlette.websockets import WebSocketDisconnect

from forge.api.auth import SUBPROTOCOL, CallerOf, bearer_scheme, caller_of, stream_over
from forge.api.errors import error_response
from forge.api.routes import AUTH_ERRORS, REQUEST_ERRORS, platform_of
from forge.api.streams import (
    KEEPALIVE_SECONDS,
    WS_CLOSE_NORMAL,
    WS_CLOSE_SERVICE_RESTART,
    WS_CLOSE_TIMEOUT_SECONDS,
    WS_CLOSE_TOO_SLOW,
    follow_log,
    serve_websocket,
)
from forge.core.errors import ForgeError, InvalidRequest
from forge.core.eventlog import StoredEvent
from forge.core.neurons import (
    FOLD,
    MAX_PROJECT_CHARS,
    NEURON_NAME_PATTERN,
    Neuron,
    NeuronAccepted,
    NeuronList,
    NeuronMessage,
    neuron_owner,
)
from forge.core.platform import Platform
from forge.core.schemas import NAME_PATTERN, ErrorBody

log = logging.getLogger(__name__)
WS_CLOSE_INTERNAL_ERROR = 1011

neurons_router = APIRouter(
    prefix="/api/v1",
    tags=["neurons"],
    responses={
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
        **REQUEST_ERRORS,
        **AUTH_ERRORS,
    },
    dependencies=[Depends(bearer_scheme)],
)
neurons_ws_router = APIRouter()

_NAME = re.compile(NEURON_NAME_PATTERN, re.IGNORECASE)
_USER_ID = re.compile(NAME_PATTERN)
# The largest version a client can have reached.
MAX_VERSION = 2**63 - 1

NeuronName = Annotated[
    str,
    Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="The neuron (wish, forge...)."),
]
UserId = Annotated[
    str | None,
    Query(
        pattern=NAME_PATTERN,
        description="Owner. With an owner's key it must be that owner or left out; with the "
        "admin key (or auth off) it says whose neuron this is.",
    ),
]
Project = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=MAX_PROJECT_CHARS,
        description="Absolute path of the repository the neuron works in (none if absent).",
    ),
]


async def _owner(caller: CallerOf, user_id: UserId = None) -> str:
    return neuron_owner(caller, user_id)


# Checked before the body, as `OwnerScope` is: naming another owner is a 403 whatever is sent.
Owner = Annotated[str, Depends(_owner)]


@neurons_router.get("/neurons", response_model=NeuronList)
async def list_neurons(request: Request, owner: Owner, project: Project = None) -> NeuronList:
    return await platform_of(request).neurons.list_neurons(owner, project)


@neurons_router.get("/neurons/{name}", response_model=Neuron)
async def get_neuron(
    request: Request, name: NeuronName, owner: Owner, project: Project = None
) -> Neuron:
    return await platform_of(request).neurons.get(name, owner, project)


@neurons_router.post("/neurons/{name}/messages", status_code=202, response_model=NeuronAccepted)
async def message_neuron(
    request: Request, name: NeuronName, body: NeuronMessage, owner: Owner
) -> NeuronAccepted:
    """Send the neuron a message: its agent for this owner and project is made on first use
    (and resumed when stopped). 202 at once; follow it on `WS /ws/neurons/{name}`."""
    return await platform_of(request).neurons.send(
        name, owner_id=owner, project=body.project, body=body.message()
    )


def _version(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_VERSION:
        raise InvalidRequest(
            f"version must be a whole number (the last version you applied), not {raw[:40]!r}"
        )
    return int(raw)


@neurons_ws_router.websocket("/ws/neurons/{name}")
async def neuron_stream(websocket: WebSocket, name: str) -> None:
    """The neuron's state document: a snapshot, then one frame per JSON Patch operation.

    Query: `user_id` and `project` as for the REST routes; `version` (with `agent_id`) to
    resume after the last operation applied. The neuron's agent is made if it has none.
    """
    platform: Platform = websocket.app.state.platform
    params = websocket.query_params
    caller = caller_of(websocket)
    try:
        if not _NAME.match(name):
            raise InvalidRequest(f"the neuron name must match {NEURON_NAME_PATTERN}")
        user_id = params.get("user_id")
        if user_id is not None and not _USER_ID.match(user_id):
            raise InvalidRequest(f"user_id must match {NAME_PATTERN}")
        project = params.get("project")
        if project is not None and not 0 < len(project) <= MAX_PROJECT_CHARS:
            raise InvalidRequest(f"project must be 1 to {MAX_PROJECT_CHARS} characters")
        version = _version(params.get("version"))
        owner = neuron_owner(caller, user_id)
        neuron = platform.neurons.definition(name).name
        agent_id = await platform.neurons.agent_for(neuron, owner, project)
    except ForgeError as exc:
        await websocket.send_denial_response(error_response(exc.status_code, exc.code, exc.message))
        return
    except Exception:
        log.exception("neuron stream of %s could not start", name)
        await websocket.send_denial_response(
            error_response(500, "internal_error", "the stream could not start; try again")
        )
        return
    if params.get("agent_id") != agent_id or params.get("fold", FOLD) != FOLD:
        # A document of another agent (the neuron has a new one), or folded another way: the
        # client starts again from a snapshot.
        version = None
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    key_or_agent_gone = stream_over(platform, agent_id, caller)

    async def gone() -> bool:
        # Also when the neuron moved on to a new agent (this one failed, or was deleted).
        if await key_or_agent_gone():
            return True
        return await platform.neurons.current_agent(neuron, owner, project) != agent_id

    def pages(after: int) -> AsyncIterator[Sequence[StoredEvent]]:
        return follow_log(
            platform.eventlog,
            platform.bus,
            agent_id,
            after,
            idle=KEEPALIVE_SECONDS,
            agent_gone=gone,
        )

    frames = platform.neurons.stream(neuron, agent_id, project, version=version, pages=pages)
    await serve_websocket(websocket, _send(websocket, frames, platform), f"neuron {neuron}")


async def _send(
    websocket: WebSocket, frames: AsyncGenerator[list[str]], platform: Platform
) -> None:
    timeout = platform.settings.websocket.send_timeout_seconds
    try:
        async with contextlib.aclosing(frames):
            async for step in frames:
                # Like the agent streams: a client that stops reading is let go.
                async with asyncio.timeout(timeout):
                    for frame in step:
                        await websocket.send_text(frame)
    except TimeoutError:
        code, reason = WS_CLOSE_TOO_SLOW, "consumer too slow; reconnect with your version"
    except (WebSocketDisconnect, OSError):
        raise
    except Exception:
        log.exception("neuron stream failed")
        code, reason = WS_CLOSE_INTERNAL_ERROR, "server error; reconnect with your version"
    else:
        if platform.bus.closed:
            code, reason = WS_CLOSE_SERVICE_RESTART, "server restarting; reconnect with version"
        else:
            code, reason = WS_CLOSE_NORMAL, "the neuron has another agent, or the key was revoked"
    with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError, TimeoutError):
        async with asyncio.timeout(WS_CLOSE_TIMEOUT_SECONDS):
            await websocket.close(code=code, reason=reason)
