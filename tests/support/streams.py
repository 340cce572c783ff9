"""A WebSocket client that follows an agent's stream across server restarts, like an application
would: on any drop it reconnects with `after=<last seq received>`."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect


class StreamFollower:
    """Follows `WS /api/v1/agents/{id}/stream` in a thread, recording every envelope received
    (duplicates included, so a test can see them) and every close code."""

    def __init__(self, base_url: str, agent_id: str, *, after: int = 0) -> None:
        self.url = base_url.replace("http://", "ws://") + f"/api/v1/agents/{agent_id}/stream"
        self.events: list[dict[str, Any]] = []
        self.close_codes: list[int | None] = []
        self.connects = 0
        self._after = after
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> StreamFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def seqs(self) -> list[int]:
        with self._lock:
            return [e["seq"] for e in self.events]

    def wait_for_final(self, request_id: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(e["is_final"] and e["request_id"] == request_id for e in self.events):
                    return
            time.sleep(0.05)
        raise AssertionError(f"no final event for {request_id}; got seqs {self.seqs[-5:]}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with connect(f"{self.url}?after={self._after}", open_timeout=5) as ws:
                    self.connects += 1
                    while not self._stop.is_set():
                        try:
                            frame = ws.recv(timeout=0.2)
                        except TimeoutError:
                            continue
                        event = json.loads(frame)
                        with self._lock:
                            self.events.append(event)
                        self._after = event["seq"]
            except ConnectionClosed as exc:
                self.close_codes.append(exc.rcvd.code if exc.rcvd else None)
            except (OSError, InvalidHandshake, TimeoutError):
                pass  # the server is down or starting: try again
            self._stop.wait(0.1)
