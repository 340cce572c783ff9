"""WebSocket routes: `WS /api/v1/agents/{id}/stream?after=SEQ`, replay from the log, then live.

A request that cannot be served (unknown agent, bad parameter) is refused before the upgrade
with the same JSON error body and status as the REST routes, so clients see a 404 or 422
rather than an unexplained close.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, WebSocket

from forge.api.auth import SUBPROTOCOL, caller_of, stream_over
from forge.api.errors import error_response
from forge.api.streams import WebSocketStream
from forge.core.errors import ForgeError, InvalidRequest
from forge.core.platform import Platform
from forge.core.schemas import NAME_PATTERN

# The largest seq a database integer holds.
MAX_SEQ = 2**63 - 1
_AGENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_USER_ID = re.compile(NAME_PATTERN)

ws_router = APIRouter()


def _after(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_SEQ:
        raise InvalidRequest(
            f"after must be a whole number from 0 to {MAX_SEQ} (the last seq you received), "
            f"not {raw[:40]!r}"
        )
    return int(raw)


@ws_router.websocket("/api/v1/agents/{agent_id}/stream")
async def agent_stream(websocket: WebSocket, agent_id: str) -> None:
    """Every event of the agent with `seq` > `after`, one JSON envelope per text frame."""
    platform: Platform = websocket.app.state.platform
    try:
        if not _AGENT_ID.match(agent_id):
            raise InvalidRequest("agent_id must be 1-64 letters, digits, '_' or '-'")
        after = _after(websocket.query_params.get("after"))
        user_id = websocket.query_params.get("user_id")
        if user_id is not None and not _USER_ID.match(user_id):
            raise InvalidRequest(f"user_id must match {NAME_PATTERN}")
        await platform.agents.check_access(agent_id, caller_of(websocket).scope(user_id))
    except ForgeError as exc:
        await websocket.send_denial_response(error_response(exc.status_code, exc.code, exc.message))
        return
    # A browser that sent its key as a subprotocol offers `forge` too, and must get one back.
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    stream = WebSocketStream(
        websocket,
        platform.eventlog,
        platform.bus,
        agent_id,
        after=after,
        send_timeout=platform.settings.websocket.send_timeout_seconds,
        agent_gone=stream_over(platform, agent_id, caller_of(websocket)),
    )
    await stream.run()
