"""The built-in agent's conversations: one JSON file of chat messages per session.

A run appends to its session's file after every model turn and every batch of tool results
(written to a temporary file and renamed, so a crash leaves the previous version). A later run
with `resume_session_id` loads it and the model sees the earlier turns.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

from forge.executors.base import ExecutorStartFailed, RunContext

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_FORMAT_VERSION = 1
_NOT_RUN = "The tool call was not run: the run was stopped before it."


class SessionNotFound(ExecutorStartFailed):
    """Raised when a run asks to resume a session that has no stored conversation."""


def new_session_id() -> str:
    return "fs_" + secrets.token_hex(12)


class SessionStore:
    """Stored conversations in `directory` (`<state_dir>/forge-agent`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def for_context(cls, ctx: RunContext) -> SessionStore | None:
        """The store under the run's state_dir, else under its home; None if it has neither."""
        base = ctx.state_dir or ctx.home
        return cls(base / "forge-agent") if base is not None else None

    def path(self, session_id: str) -> Path:
        if not _SESSION_ID.match(session_id):
            raise SessionNotFound(f"invalid session id {session_id!r}")
        return self.directory / f"{session_id}.json"

    def load(self, session_id: str) -> list[dict[str, Any]]:
        """The session's messages (tool calls left without a result closed). Raises
        `SessionNotFound`."""
        path = self.path(session_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SessionNotFound(
                f"no stored conversation for session {session_id!r} in {self.directory}"
            ) from None
        except (OSError, ValueError) as exc:
            raise SessionNotFound(f"cannot read the conversation {path}: {exc}") from exc
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise SessionNotFound(f"the conversation {path} has no list of messages")
        return close_open_tool_calls(messages)

    def save(self, session_id: str, messages: list[dict[str, Any]], model: str) -> None:
        """Write the session's messages atomically."""
        path = self.path(session_id)
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {
            "version": _FORMAT_VERSION,
            "session_id": session_id,
            "model": model,
            "messages": messages,
        }
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{session_id}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(data, file, ensure_ascii=False)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def close_open_tool_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with a result for every tool call that has none (a stopped run), so the
    model server accepts the history."""
    closed: list[dict[str, Any]] = []
    open_ids: list[str] = []

    def close() -> None:
        closed.extend({"role": "tool", "tool_call_id": i, "content": _NOT_RUN} for i in open_ids)
        open_ids.clear()

    for message in messages:
        if message.get("role") == "tool":
            if message.get("tool_call_id") in open_ids:
                open_ids.remove(message["tool_call_id"])
            closed.append(message)
            continue
        close()
        closed.append(message)
        if message.get("role") == "assistant":
            calls = message.get("tool_calls")
            if isinstance(calls, list):
                open_ids.extend(
                    c["id"] for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)
                )
    close()
    return closed
