"""Server-sent events over an agent's log: replay after a `seq`, then live."""

from __future__ import annotations

from collections.abc import AsyncIterator

from forge.core.eventlog import EventBus, EventLog, StoredEvent

KEEPALIVE_SECONDS = 15.0
_PAGE = 500


def _frames(events: list[StoredEvent]) -> bytes:
    # The stored text is the envelope exactly as webhooks carry it: no decode and re-encode.
    return "".join(
        f"id: {e.seq}\nevent: {e.event_type}\ndata: {e.body}\n\n" for e in events
    ).encode()


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
    sending `Last-Event-ID`) resumes exactly after the last event it saw. One chunk carries a
    whole page of the log, so a fast agent costs one write per page, not one per event.
    """
    last = after
    yield b"retry: 2000\n: stream of agent events\n\n"
    while True:
        events = await eventlog.read_stored(agent_id, after=last, limit=_PAGE)
        if events:
            yield _frames(events)
            last = events[-1].seq
            if len(events) == _PAGE:
                continue
        if not await bus.wait(agent_id, last, timeout=keepalive):
            yield b": keep-alive\n\n"
