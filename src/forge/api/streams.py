"""Live streams over an agent's log (SSE and WebSocket): replay after a `seq`, then live.

Both read the log at the client's pace, a page at a time, and keep nothing else per client: a
client that falls behind costs one page of memory and a position in the log, however far
behind it is. When the server shuts down (`EventBus.close`) both end after sending what is
stored, and the client resumes from its last `seq` on the next server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from forge.core.eventlog import EventBus, EventLog, StoredEvent

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0

# Whether the agent was deleted meanwhile (asked when a stream is idle, to end it).
AgentGone = Callable[[], Awaitable[bool]]
PAGE = 500
# How often a busy stream checks it may go on (agent not deleted, key not revoked).
RECHECK_SECONDS = 10.0

# WebSocket close codes (4000-4999 are the application's own).
WS_CLOSE_NORMAL = 1000
WS_CLOSE_SERVICE_RESTART = 1012
WS_CLOSE_TOO_SLOW = 4008
# How long the close frame of a slow consumer may wait for room in its socket buffer.
WS_CLOSE_TIMEOUT_SECONDS = 10.0


def _frames(events: Sequence[StoredEvent]) -> bytes:
    # The stored text is the envelope exactly as webhooks carry it: no decode and re-encode.
    return "".join(
        f"id: {e.seq}\nevent: {e.event_type}\ndata: {e.body}\n\n" for e in events
    ).encode()


async def follow_log(
    eventlog: EventLog,
    bus: EventBus,
    agent_id: str,
    after: int,
    *,
    idle: float,
    agent_gone: AgentGone | None = None,
) -> AsyncGenerator[Sequence[StoredEvent]]:
    """The events after `after`, page by page: the log first, then what the bus hands over.

    An empty page means `idle` seconds went by without an event. The pages end when the server
    shuts down (after the current page) or once `agent_gone()` is true (the agent was deleted,
    or the caller's key revoked): checked when idle, and at least every `RECHECK_SECONDS`
    while busy.
    """
    last = after
    fresh: Sequence[StoredEvent] = ()  # handed over by the bus: no need to read the log
    loop = asyncio.get_running_loop()
    recheck_at = loop.time() + RECHECK_SECONDS
    while True:
        events = fresh or await eventlog.read_stored(agent_id, after=last, limit=PAGE)
        more = not fresh and len(events) == PAGE
        if events:
            yield events
            last = events[-1].seq
        if bus.closed:
            return
        if agent_gone is not None and loop.time() >= recheck_at:
            recheck_at = loop.time() + RECHECK_SECONDS
            if await agent_gone():
                return
        if more:
            continue
        woken, fresh = await bus.wait_for_events(agent_id, last, timeout=idle)
        if not woken:
            if agent_gone is not None and await agent_gone():
                return
            yield ()


async def sse_stream(
    eventlog: EventLog,
    bus: EventBus,
    agent_id: str,
    after: int,
    *,
    keepalive: float = KEEPALIVE_SECONDS,
    agent_gone: AgentGone | None = None,
) -> AsyncIterator[bytes]:
    """Yield SSE frames for every event with `seq` > `after` until the client goes, the server
    shuts down (the client reconnects with Last-Event-ID), or the agent is deleted.

    Each frame's `id` is the event's `seq`, so a browser's automatic reconnect (or any client
    sending `Last-Event-ID`) resumes exactly after the last event it saw. One chunk carries a
    whole page of the log, so a fast agent costs one write per page, not one per event. A
    comment line is sent after `keepalive` seconds of silence.
    """
    yield b"retry: 2000\n: stream of agent events\n\n"
    pages = follow_log(eventlog, bus, agent_id, after, idle=keepalive, agent_gone=agent_gone)
    async with contextlib.aclosing(pages):
        async for page in pages:
            yield _frames(page) if page else b": keep-alive\n\n"


async def serve_websocket(
    websocket: WebSocket, send: Coroutine[Any, Any, None], label: str
) -> None:
    """Run `send` (which writes to the accepted `websocket`) until it ends or the client goes.
    What the client sends is read and ignored, so that a close from its side is noticed at
    once. A failure other than the connection's is logged with `label`."""
    sender = asyncio.create_task(send, name=f"ws-send:{label}")
    receiver = asyncio.create_task(_drain(websocket), name=f"ws-recv:{label}")
    try:
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, receiver):
            task.cancel()
        results = await asyncio.gather(sender, receiver, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, WebSocketDisconnect | OSError):
            log.error("websocket stream of %s failed", label, exc_info=result)


async def _drain(websocket: WebSocket) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


class WebSocketStream:
    """Sends an agent's events over an accepted WebSocket, one text frame per envelope.

    A frame the client does not take within `send_timeout` seconds (its buffers are full: it
    stopped reading) ends the stream with close code 4008; the client resumes with
    `after=<last seq it received>`. Messages from the client are read and ignored, so that a
    close from its side is noticed at once.
    """

    def __init__(
        self,
        websocket: WebSocket,
        eventlog: EventLog,
        bus: EventBus,
        agent_id: str,
        *,
        after: int,
        send_timeout: float,
        agent_gone: AgentGone | None = None,
    ) -> None:
        self._ws = websocket
        self._agent_gone = agent_gone
        self._eventlog = eventlog
        self._bus = bus
        self._agent_id = agent_id
        self._last = after
        self._send_timeout = send_timeout

    async def run(self) -> None:
        await serve_websocket(self._ws, self._send_events(), f"agent {self._agent_id}")

    async def _send_events(self) -> None:
        loop = asyncio.get_running_loop()
        pages = follow_log(
            self._eventlog,
            self._bus,
            self._agent_id,
            self._last,
            idle=KEEPALIVE_SECONDS,
            agent_gone=self._agent_gone,
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                try:
                    # One timer for the page, pushed forward after every frame taken.
                    async with asyncio.timeout(self._send_timeout) as deadline:
                        for event in page:
                            await self._ws.send_text(event.body)
                            self._last = event.seq
                            deadline.reschedule(loop.time() + self._send_timeout)
                except TimeoutError:
                    await self._close_slow_consumer()
                    return
        if self._bus.closed:
            # Right after the current page: a client far behind resumes on the next server.
            await self._close(
                WS_CLOSE_SERVICE_RESTART, f"server restarting; reconnect with after={self._last}"
            )
        else:
            await self._close(WS_CLOSE_NORMAL, "the agent was deleted, or the key revoked")

    async def _close_slow_consumer(self) -> None:
        log.warning(
            "websocket consumer of %s took over %gs to accept a frame; closing it (code %d) "
            "after seq %d",
            self._agent_id,
            self._send_timeout,
            WS_CLOSE_TOO_SLOW,
            self._last,
        )
        # The close frame waits behind what the client has not read; if it never reads
        # again, the server's WebSocket protocol aborts the connection after this returns.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WS_CLOSE_TIMEOUT_SECONDS):
                await self._close(
                    WS_CLOSE_TOO_SLOW,
                    f"consumer too slow; reconnect with after={self._last}",
                )

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await self._ws.close(code=code, reason=reason)
