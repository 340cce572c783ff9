"""Server-sent events over an agent's log: replay after a `seq`, then live."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from forge.core.eventlog import EventBus, EventLog

KEEPALIVE_SECONDS = 15.0
_PAGE = 500


def _frame(event: dict[str, object]) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    return f"id: {event['seq']}\nevent: {event['event_type']}\ndata: {data}\n\n".encode()


async def sse_stream(
    eventlog: EventLog,
    bus: EventBus,
    agent_id: str,
    after: int,
    *,
    keepalive: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[bytes]:
    """Yield SSE frames for every event with `seq` > `after`, forever (until the client goes).

    Each frame's `id` is the event's `seq`, so a browser's automatic reconnect (or any client
    sending `Last-Event-ID`) resumes exactly after the last event it saw.
    """
    last = after
    yield b"retry: 2000\n: stream of agent events\n\n"
    while True:
        events = await eventlog.read(agent_id, after=last, limit=_PAGE)
        for event in events:
            yield _frame(event)
            last = int(str(event["seq"]))
        if len(events) == _PAGE:
            continue
        if not await bus.wait(agent_id, last, timeout=keepalive):
            yield b": keep-alive\n\n"
