"""The `command` executor: a shell command line run in the workspace, one event per output line.

The prompt goes to the command's stdin. Each stdout line that is a JSON value passes through as
the raw event (a JSON object may carry its own normalized `entry`); any other stdout line is an
assistant message; each stderr line is a system entry. The command runs in its own process
group, and the whole group is gone when the run ends (`forge.executors.process`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal, Self

from forge.core.events import ENTRY_KINDS
from forge.executors.base import (
    ExecutorEvent,
    ExecutorResult,
    InvalidExecutorSpec,
    RunContext,
    executor_environment,
)
from forge.executors.process import (
    LINE_LIMIT,
    ProcessExecutor,
    Stream,
    describe_exit,
    stderr_event,
)
from forge.runner.proto import runner_pb2

__all__ = ["LINE_LIMIT", "CommandExecutor", "parse_stdout_line"]


class CommandExecutor(ProcessExecutor):
    """Runs `/bin/sh -c <command>` in the workspace with the prompt on stdin."""

    kind = "command"

    def __init__(self, command: str, *, shell: str = "/bin/sh") -> None:
        super().__init__()
        if not command.strip():
            raise InvalidExecutorSpec("the command executor needs a non-empty command")
        self.command = command
        self.shell = shell

    @classmethod
    def from_spec(cls, spec: runner_pb2.ExecutorSpec) -> Self:
        return cls(spec.command)

    def argv(self, ctx: RunContext) -> list[str]:
        return [self.shell, "-c", self.command]

    def environment(self, ctx: RunContext) -> dict[str, str]:
        # A command is the user's own tooling: it keeps the sandbox's HOME (git identity, keys);
        # the private home is for the agent CLIs' configuration and sessions.
        return executor_environment(ctx, private_home=False)

    async def events_for_line(
        self, stream: Stream, text: str, ctx: RunContext
    ) -> AsyncIterator[ExecutorEvent]:
        if stream == "stderr":
            yield stderr_event(text)
        else:
            yield parse_stdout_line(text)

    def result(self, returncode: int, ctx: RunContext) -> ExecutorResult:
        how = describe_exit(returncode)
        if self.interrupted:
            outcome: Literal["succeeded", "failed", "interrupted"] = "interrupted"
            message = f"interrupted; the command {how}"
        elif returncode == 0:
            outcome, message = "succeeded", f"the command {how}"
        else:
            outcome, message = "failed", f"the command {how}"
        return ExecutorResult(
            outcome=outcome, exit_code=returncode, message=message, session_id=self.session_id
        )


def parse_stdout_line(text: str) -> ExecutorEvent:
    """The event for one stdout line (without its newline) of a `command` executor."""
    value = _json_value(text)
    if value is _NOT_JSON:
        return ExecutorEvent(
            executor_event_type="", raw=None, entry={"kind": "assistant_message", "text": text}
        )
    event_type = ""
    entry: dict[str, Any] | None = None
    session_id = ""
    if isinstance(value, dict):
        if isinstance(value.get("type"), str):
            event_type = value["type"]
        candidate = value.get("entry")
        if isinstance(candidate, dict) and candidate.get("kind") in ENTRY_KINDS:
            entry = candidate
        if isinstance(value.get("session_id"), str):
            session_id = value["session_id"]
    return ExecutorEvent(
        executor_event_type=event_type, raw=value, entry=entry, session_id=session_id
    )


_NOT_JSON = object()


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; a line with them is treated as text.
    raise ValueError(name)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return _NOT_JSON
    except RecursionError:
        return _NOT_JSON


def _decode_line(data: bytes) -> str:
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    return data.decode("utf-8", errors="replace")
