"""What a resumable event stream knows, whichever the transport and whether it is read with
asyncio or not: the last `seq` seen, whether the run it follows is over, and what to do when a
connection ends or cannot be made.

The server resends nothing a client says it has (`after=` / `Last-Event-ID`), and the stream
drops any `seq` it has already yielded besides, so across reconnections each event is yielded
exactly once and in order."""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

import httpx
from pydantic import ValidationError
from websockets.exceptions import InvalidStatus

from forge.client._base import connection_error
from forge.client._calls import describe, error_of
from forge.client._exceptions import (
    APIConnectionError,
    ForgeClientError,
    InvalidResponseError,
    NotFoundError,
    RateLimitError,
    ServerError,
    StreamLostError,
)
from forge.client.models import EventEnvelope

Transport = Literal["sse", "websocket"]
TRANSPORTS: tuple[Transport, ...] = ("sse", "websocket")

# The server sends an SSE comment after 15 s of silence (its default); a minute without a byte
# is a dead connection. WebSockets are pinged by the client library instead.
SSE_TIMEOUT = httpx.Timeout(10.0, read=60.0)
WS_OPEN_TIMEOUT_SECONDS = 10.0
# One envelope per WebSocket frame; tool output is bounded well below this.
MAX_FRAME_BYTES = 64 * 1024 * 1024
FIRST_BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 5.0
# The error code of an agent that is not there (for this key): a stream of it is over.
AGENT_NOT_FOUND = "agent_not_found"
_LINE_END = re.compile(r"\r\n|\r|\n")
DEFAULT_RECONNECT_FOR_SECONDS = 60.0


def check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")


class Resumption:
    """Where a stream of one agent's events is, and how long it has tried to reconnect."""

    def __init__(
        self,
        agent_id: str,
        after: int,
        request_id: str | None,
        reconnect_for: float | None,
    ) -> None:
        if after < 0:
            raise ValueError(f"after must be 0 or a seq the stream has passed, not {after}")
        self.agent_id = agent_id
        self.last_seq = after
        self.request_id = request_id
        # With `request_id`: that run's final event, once it came (yielded last, after its
        # connection is closed, so that a caller who stops there leaves nothing open).
        self.final: EventEnvelope | None = None
        # Once it has been served (a connection made), a 404 means the agent was deleted.
        self.connections = 0
        self._reconnection = Reconnection(reconnect_for)

    @property
    def finished(self) -> bool:
        return self.final is not None

    def connected(self) -> None:
        self.connections += 1
        self._reconnection.connected()

    def take(self, data: str | bytes) -> EventEnvelope | None:
        """The event in one SSE `data` or WebSocket frame, if it is new and one the caller asked
        for (a run's, with `request_id`); None otherwise, and for the run's final event, which
        is kept in `final` instead."""
        try:
            event = EventEnvelope.model_validate(json.loads(data))
        except (ValueError, ValidationError) as exc:
            detail = describe(exc) if isinstance(exc, ValidationError) else str(exc)
            raise InvalidResponseError(
                "bad_response", f"the stream of {self.agent_id} sent what is not an event: {detail}"
            ) from None
        if event.seq <= self.last_seq:
            return None
        self.last_seq = event.seq
        self._reconnection.progressed()
        if self.request_id is None:
            return event
        if event.request_id != self.request_id:
            return None
        if event.is_final:
            self.final = event
            return None
        return event

    def retry_in(self, cause: ForgeClientError) -> float | None:
        """Seconds to wait before connecting again after `cause`; None when the stream is over
        (its agent was deleted). Raises `cause` when trying again cannot help (the agent was
        never there, or is gone before the run it follows ended), and `StreamLostError` once
        `reconnect_for` seconds have passed without a connection."""
        what, where = f"the stream of {self.agent_id}", f"last seq {self.last_seq}"
        if isinstance(cause, NotFoundError):
            if cause.code != AGENT_NOT_FOUND:
                # Not Forge's answer (a proxy's 404 while a replica restarts): try again.
                return self._reconnection.delay(cause, what, where, retryable=True)
            if not self.connections or self.request_id is not None:
                raise cause
            return None
        return self._reconnection.delay(cause, what, where)


class Reconnection:
    """How long a stream has been without a connection, and how long it waits before the next
    attempt: the same rules for every stream the client follows."""

    def __init__(self, reconnect_for: float | None) -> None:
        self.reconnect_for = reconnect_for
        self._lost_since: float | None = None
        self._backoff = FIRST_BACKOFF_SECONDS

    def connected(self) -> None:
        self._lost_since = None

    def progressed(self) -> None:
        """Something new arrived: the next loss starts again from the first backoff."""
        self._backoff = FIRST_BACKOFF_SECONDS

    def delay(
        self, cause: ForgeClientError, what: str, where: str, *, retryable: bool = False
    ) -> float:
        """Seconds to wait before connecting `what` again after `cause`. Raises `cause` when
        trying again cannot help (unless `retryable`), and `StreamLostError` (naming `where` it
        was) once `reconnect_for` seconds have passed without a connection."""
        if not retryable and not isinstance(
            cause, APIConnectionError | ServerError | RateLimitError
        ):
            raise cause
        now = time.monotonic()
        if self._lost_since is None:
            self._lost_since = now
        if self.reconnect_for is not None and now - self._lost_since > self.reconnect_for:
            raise StreamLostError(
                "stream_lost",
                f"{what} could not reconnect for {self.reconnect_for:g} s ({where}): "
                f"{cause.message}",
            ) from cause
        delay = self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
        if isinstance(cause, RateLimitError):
            delay = max(delay, cause.retry_after)
        return delay


def stream_ended() -> APIConnectionError:
    """What a connection the server closed, with the agent still there, counts as: a drop (a
    server shutting down ends its streams this way)."""
    return APIConnectionError("stream_ended", "the server ended the stream")


class SseDecoder:
    """The `data` of each event in an SSE body, fed as text in chunks of any size. Lines end
    with CR, LF or CRLF, as the SSE format says (and nothing else: not U+2028)."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._partial = ""

    def feed(self, chunk: str) -> list[str]:
        """The data of each event `chunk` completes."""
        text = self._partial + chunk
        # A CR at the very end may be the first half of a CRLF split across chunks.
        cut = len(text) - 1 if text.endswith("\r") else len(text)
        lines = _LINE_END.split(text[:cut])
        self._partial = lines.pop() + text[cut:]
        return [data for line in lines if (data := self._line(line)) is not None]

    def _line(self, line: str) -> str | None:
        """The event's data when `line` ends one, else None. `id:`, `event:`, `retry:` and
        comment lines are skipped: the envelope holds everything."""
        if line == "":
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
        return None


def handshake_refusal(exc: InvalidStatus) -> ForgeClientError:
    """The error for a WebSocket handshake the server answered with an error status."""
    response = exc.response
    return refusal(response.status_code, dict(response.headers), bytes(response.body or b""))


def refusal(status_code: int, headers: Any, body: bytes) -> ForgeClientError:
    """The error for a stream the server refused (an HTTP answer to the SSE request or the
    WebSocket handshake)."""
    return error_of(httpx.Response(status_code, headers=headers, content=body))


def dropped(exc: Exception, base_url: str, agent_id: str) -> APIConnectionError:
    return connection_error(exc, base_url, f"the stream of {agent_id}")
