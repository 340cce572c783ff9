"""Following an agent's event log from the `forge` command: the SSE client (which resumes with
`Last-Event-ID` after a dropped connection) and how each event is printed in a terminal."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import typer

__all__ = [
    "EventStream",
    "StreamError",
    "auth_headers",
    "history",
    "render_event",
    "run_exit_code",
]

# How long a lost stream is retried without getting a single event before giving up.
RECONNECT_FOR_SECONDS = 30.0
# The server sends a keep-alive comment every 15 s (default); a longer silence is a dead link.
READ_TIMEOUT_SECONDS = 60.0


def auth_headers() -> dict[str, str]:
    """`Authorization` with the key in `FORGE_API_KEY`, if one is set."""
    key = os.environ.get("FORGE_API_KEY", "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


class StreamError(Exception):
    """Raised when the server refuses the stream (`code`, `message` from its error body) or
    cannot be reached again for `RECONNECT_FOR_SECONDS`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def parse_sse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The envelopes of an SSE body: the `data:` lines of each frame, joined, as JSON."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        # `id:`, `event:`, `retry:` and `: keep-alive` comments: the envelope has it all.


class EventStream:
    """The events of one agent after `after`, live, across reconnections: iterate over it.
    Ends when the server ends the stream with nothing new and the agent is gone (deleted)."""

    def __init__(self, base_url: str, agent_id: str, after: int = 0) -> None:
        self.agent_url = f"{base_url}/api/v1/agents/{agent_id}"
        self.url = f"{self.agent_url}/events"
        self.last_seq = after

    def _agent_gone(self) -> bool:
        try:
            response = httpx.get(self.agent_url, headers=auth_headers(), timeout=10)
            return response.status_code == 404
        except httpx.HTTPError:
            return False  # not reachable (restarting): keep trying

    def __iter__(self) -> Iterator[dict[str, Any]]:
        backoff = 0.2
        lost_since: float | None = None
        while True:
            got_any = False
            try:
                for envelope in self._connect():
                    got_any = True
                    lost_since, backoff = None, 0.2
                    yield envelope
                if got_any:
                    continue
                # The server ended a stream with nothing new: the agent was deleted (its log
                # will not grow), or the server is stopping (a restart): ask which.
                if self._agent_gone():
                    return
            except (httpx.TransportError, httpx.StreamError) as exc:
                now = time.monotonic()
                lost_since = now if lost_since is None else lost_since
                if now - lost_since > RECONNECT_FOR_SECONDS:
                    raise StreamError("stream_lost", f"cannot reach {self.url}: {exc}") from exc
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _connect(self) -> Iterator[dict[str, Any]]:
        headers = {
            "Accept": "text/event-stream",
            "Last-Event-ID": str(self.last_seq),
            **auth_headers(),
        }
        timeout = httpx.Timeout(10.0, read=READ_TIMEOUT_SECONDS)
        params = {"after": self.last_seq}
        with httpx.stream("GET", self.url, params=params, headers=headers, timeout=timeout) as r:
            if r.status_code >= 400:
                raise _error_of(r)
            for envelope in parse_sse(r.iter_lines()):
                if envelope["seq"] <= self.last_seq:
                    continue
                self.last_seq = envelope["seq"]
                yield envelope


def history(base_url: str, agent_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
    """The events already in the log after `after`, page by page."""
    url = f"{base_url}/api/v1/agents/{agent_id}/events"
    while True:
        try:
            response = httpx.get(
                url, params={"after": after, "limit": 1000}, headers=auth_headers(), timeout=30
            )
        except httpx.HTTPError as exc:
            raise StreamError("unreachable", f"cannot reach Forge at {url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_of(response)
        page = response.json()
        yield from page["events"]
        if not page["has_more"]:
            return
        after = page["next_after"]


def _error_of(response: httpx.Response) -> StreamError:
    try:
        body = json.loads(response.read())
        return StreamError(str(body.get("error")), str(body.get("message")))
    except ValueError:
        return StreamError(f"http_{response.status_code}", response.reason_phrase)


def run_exit_code(envelope: dict[str, Any]) -> int:
    """The exit code for a run's final event: 0 if it succeeded."""
    return 0 if envelope.get("outcome") == "succeeded" else 1


def render_event(envelope: dict[str, Any]) -> str | None:
    """One event as terminal text (styled; click drops the styles off a terminal), or None for
    events not worth a line."""
    event_type = envelope.get("event_type")
    if event_type == "agent.event":
        return _render_entry(envelope.get("entry") or {})
    if event_type == "agent.status":
        return typer.style(f"-- {envelope.get('status')}", dim=True)
    if event_type == "agent.complete":
        outcome = envelope.get("outcome") or "unknown"
        message = envelope.get("message") or ""
        color = typer.colors.GREEN if outcome == "succeeded" else typer.colors.RED
        return typer.style(f"== {outcome}: {message}".rstrip(": "), fg=color, bold=True)
    if event_type == "agent.error":
        error = envelope.get("error") or {}
        text = f"== error: {error.get('code')}: {error.get('message')}"
        return typer.style(text, fg=typer.colors.RED, bold=True)
    return None


def _render_entry(entry: dict[str, Any]) -> str | None:
    kind = entry.get("kind")
    text = str(entry.get("text") or "").rstrip("\n")
    if kind == "assistant_message":
        return text
    if kind == "thinking":
        return typer.style(f"[thinking] {text}", dim=True, italic=True)
    if kind == "user_message":
        return typer.style(f"> {text}", bold=True)
    if kind == "tool_call":
        return _render_tool_call(entry)
    if kind == "permission_request":
        detail = f"{entry.get('tool')} {entry.get('detail') or ''}".strip()
        return typer.style(f"[permission?] {detail} ({entry.get('permission_id')})", fg="yellow")
    if kind == "error":
        return typer.style(f"[error] {text or entry.get('message')}", fg=typer.colors.RED)
    return None


def _render_tool_call(entry: dict[str, Any]) -> str | None:
    status = entry.get("status") or "running"
    if status == "success":
        return None  # Already shown when it started.
    tool = entry.get("tool") or entry.get("name") or entry.get("action") or "tool"
    detail = str(entry.get("detail") or "").splitlines()[0:1]
    line = f"[{tool}] {detail[0] if detail else ''}".rstrip()
    if status == "running":
        return typer.style(line, fg=typer.colors.CYAN)
    return typer.style(f"{line} ({status})", fg=typer.colors.RED)
