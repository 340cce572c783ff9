"""What a stream of a neuron's state document knows, whether it is read with asyncio or not:
the version last received, with the agent and fold it means something for (what a reconnection
resumes from), how its connections began, and when it was told to start over (`resync`).

`WS /ws/neurons/{name}` sends a snapshot of the document, then one RFC 6902 operation a frame
(docs/neurons.md). Reconnecting with `version=&agent_id=&fold=` continues with the next
operation, or with a snapshot when the server cannot (another agent, another fold)."""

from __future__ import annotations

import json
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from forge.client._calls import segment
from forge.client._exceptions import APIConnectionError, ForgeClientError, InvalidResponseError
from forge.client._stream import Reconnection


def neuron_stream_path(name: str) -> str:
    return f"/ws/neurons/{segment(name)}"


class NeuronFrame(BaseModel):
    """One frame of a neuron's state stream, as the server sent it: a snapshot (`source`
    `snapshot`, `data` the whole document) or one operation (`source` `diff`, `data`
    `{"op", "path", "value"}`). `version` is the document's version once it is applied.
    `generation` is the client's: how many times the stream had been `resync()`ed when the
    frame's connection was opened."""

    model_config = ConfigDict(frozen=True)

    timestamp: str | None = None
    neuron: str = ""
    source: str
    version: int
    fold: str
    seq: int | None = None
    data: Any = None
    generation: int = 0

    @property
    def is_snapshot(self) -> bool:
        return self.source == "snapshot"

    def to_wire(self) -> dict[str, Any]:
        """The frame as the server sent it (without `generation`)."""
        return self.model_dump(exclude={"generation"})


class NeuronPosition:
    """Where a stream of neuron `name`'s document is. `resync()` may be called from another
    thread than the one reading: a lock keeps it and the reader's bookkeeping apart."""

    def __init__(self, name: str, reconnect_for: float | None) -> None:
        self.name = name
        self.version: int | None = None
        self.agent_id: str | None = None
        self.fold: str | None = None
        self.generation = 0
        self.snapshots = 0
        self.resumes = 0
        self.connections = 0
        self._first = False
        self._lock = threading.Lock()
        self._reconnection = Reconnection(reconnect_for)

    def resume_params(self) -> tuple[dict[str, object | None], int]:
        """The query that resumes after the last version received (none before a snapshot, or
        after `resync`), and the generation the connection belongs to."""
        with self._lock:
            if self.version is None:
                return {}, self.generation
            params: dict[str, object | None] = {
                "version": self.version,
                "agent_id": self.agent_id,
                "fold": self.fold,
            }
            return params, self.generation

    def resync(self) -> None:
        """Forget the position: the next connection starts with a snapshot, and the frames
        still coming on the current one are dropped."""
        with self._lock:
            self.generation += 1
            self.version = self.agent_id = self.fold = None

    def stale(self, generation: int) -> bool:
        """Whether a connection of `generation` has been given up by `resync`."""
        with self._lock:
            return generation != self.generation

    def connected(self) -> None:
        self.connections += 1
        self._first = True
        self._reconnection.connected()

    def take(self, text: str | bytes, generation: int) -> NeuronFrame | None:
        """The frame in `text`, received on a connection of `generation`; None when that
        connection was given up by `resync`, or for an operation already received."""
        try:
            body = json.loads(text)
            frame = NeuronFrame.model_validate({**body, "generation": generation})
        except (ValueError, TypeError, ValidationError) as exc:
            raise InvalidResponseError(
                "bad_response",
                f"the state stream of neuron {self.name} sent what is not a frame: {exc}",
            ) from None
        if frame.is_snapshot and not isinstance(frame.data, dict):
            raise InvalidResponseError(
                "bad_response",
                f"the state stream of neuron {self.name} sent a snapshot of no document",
            )
        with self._lock:
            if generation != self.generation:
                return None
            first, self._first = self._first, False
            if first:
                if frame.is_snapshot:
                    self.snapshots += 1
                else:
                    self.resumes += 1
            if not frame.is_snapshot and self.version is not None and frame.version <= self.version:
                return None
            if frame.is_snapshot:
                agent_id = frame.data.get("agent_id")
                self.agent_id = agent_id if isinstance(agent_id, str) else None
            self.version, self.fold = frame.version, frame.fold
        self._reconnection.progressed()
        return frame

    def retry_in(self, cause: ForgeClientError) -> float:
        """Seconds to wait before connecting again after `cause`, as for an agent's events.
        Raises `cause` when trying again cannot help (an unknown neuron, a refused key), and
        `StreamLostError` once `reconnect_for` seconds have passed without a connection."""
        where = f"version {self.version}" if self.version is not None else "no snapshot yet"
        return self._reconnection.delay(cause, f"the state stream of neuron {self.name}", where)


def neuron_stream_ended() -> APIConnectionError:
    """A connection the server closed normally: the neuron moved to another agent (or the
    server let the stream go); the next connection gets the new agent's snapshot."""
    return APIConnectionError("stream_ended", "the server ended the neuron's stream")
