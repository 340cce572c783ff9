"""What the `forge` command prints of a session's events: each event as a terminal line, and a
run's exit code. Reading the events (history, live streams that resume by themselves) is
`forge.client`'s."""

from __future__ import annotations

from typing import Any

import typer

from forge.client.models import EventEnvelope

__all__ = ["render_event", "run_exit_code"]


def run_exit_code(event: EventEnvelope) -> int:
    """The exit code for a run's final event: 0 if it succeeded."""
    return 0 if event.outcome == "succeeded" else 1


def render_event(event: EventEnvelope) -> str | None:
    """One event as terminal text (styled; click drops the styles off a terminal), or None for
    events not worth a line."""
    if event.event_type == "agent.event":
        return _render_entry(event.entry or {})
    if event.event_type == "agent.status":
        return typer.style(f"-- {event.status}", dim=True)
    if event.event_type == "agent.complete":
        outcome = event.outcome or "unknown"
        message = event.message or ""
        color = typer.colors.GREEN if outcome == "succeeded" else typer.colors.RED
        return typer.style(f"== {outcome}: {message}".rstrip(": "), fg=color, bold=True)
    if event.event_type == "agent.error":
        error = event.error
        text = f"== error: {error.code}: {error.message}" if error else "== error"
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
