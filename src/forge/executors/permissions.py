"""Asking the user before a tool runs (`permission_mode = "ask"`).

An executor that meets a tool call needing approval calls `Permissions.ask`, yields the event it
returns (a `permission_request` entry with a fresh `permission_id`), then awaits
`Permissions.decision`. The runner answers with `Permissions.answer` when the platform forwards
`POST /api/v1/agents/{id}/permissions/{permission_id}`; an unanswered request is denied after
`timeout_seconds`. One `Permissions` lives as long as the runner, so an `always` answer holds
for the rest of the agent's session.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from forge.executors import entries
from forge.executors.base import ExecutorEvent

Decision = Literal["once", "always", "reject"]
DECISIONS: tuple[Decision, ...] = ("once", "always", "reject")
DEFAULT_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class PermissionAnswer:
    """The user's answer to one permission request."""

    decision: Decision
    message: str = ""
    # True when nobody answered in time (decision is then "reject").
    timed_out: bool = False

    @property
    def allowed(self) -> bool:
        return self.decision != "reject"

    def denial_reason(self) -> str:
        """What to tell the agent when it was refused."""
        if self.timed_out:
            return "The user did not answer the permission request in time; the tool was not run."
        if self.message:
            return f"The user denied this tool call: {self.message}"
        return "The user denied this tool call."


class UnknownPermission(LookupError):
    """`answer` for a permission id that is not waiting (never asked, answered or timed out)."""


class Permissions:
    """The open permission requests of one runner and the tools allowed `always`."""

    def __init__(self, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.timeout_seconds = timeout_seconds
        self._waiting: dict[str, asyncio.Future[PermissionAnswer]] = {}
        self._always: set[str] = set()

    def always_allowed(self, tool: str) -> bool:
        """Whether an earlier `always` answer covers this tool."""
        return tool in self._always

    def ask(
        self,
        tool: str,
        *,
        detail: str | None = None,
        input: Any = None,
        tool_call_id: str | None = None,
        executor_event_type: str = "permission_request",
        raw: Any = None,
        permission_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> tuple[str, ExecutorEvent]:
        """Open a request; returns its id and the event the executor yields for it."""
        permission_id = permission_id or "perm_" + secrets.token_hex(8)
        timeout = self.timeout_seconds if timeout_seconds is None else timeout_seconds
        self._waiting[permission_id] = asyncio.get_running_loop().create_future()
        entry = entries.permission_request(
            permission_id,
            tool,
            detail=detail,
            input=input,
            tool_call_id=tool_call_id,
            timeout_seconds=timeout,
        )
        event = ExecutorEvent(executor_event_type=executor_event_type, raw=raw, entry=entry)
        return permission_id, event

    async def decision(
        self, permission_id: str, tool: str | None = None, timeout_seconds: float | None = None
    ) -> PermissionAnswer:
        """Wait for the answer to a request opened with `ask` (a rejection after the timeout).

        With `tool`, an `always` answer also allows that tool from now on.
        """
        future = self._waiting.get(permission_id)
        if future is None:
            raise UnknownPermission(permission_id)
        timeout = self.timeout_seconds if timeout_seconds is None else timeout_seconds
        try:
            answer = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            answer = PermissionAnswer("reject", timed_out=True)
        finally:
            self._waiting.pop(permission_id, None)
        if answer.decision == "always" and tool:
            self._always.add(tool)
        return answer

    def answer(self, permission_id: str, decision: Decision, message: str = "") -> None:
        """Deliver the user's answer. Raises `UnknownPermission` if nothing waits for it."""
        future = self._waiting.get(permission_id)
        if future is None or future.done():
            raise UnknownPermission(permission_id)
        future.set_result(PermissionAnswer(decision, message))

    def pending(self) -> list[str]:
        """Ids of the requests still waiting."""
        return [pid for pid, future in self._waiting.items() if not future.done()]

    def cancel_all(self) -> None:
        """Refuse every waiting request (the run is being stopped)."""
        for future in self._waiting.values():
            if not future.done():
                future.set_result(PermissionAnswer("reject", "the run was stopped"))
