"""What an executor is: the interface the runner drives, and the values that cross it.

An executor runs one agent turn (a *run*) inside the sandbox: it starts the agent with the
prompt, yields what the agent does as `ExecutorEvent`s and ends with exactly one
`ExecutorResult`. The runner turns those into protocol messages; executors know nothing of gRPC.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from forge.core.events import Outcome, Usage
from forge.runner.proto import runner_pb2
from forge.sandbox.base import allowed_environment


class ExecutorError(Exception):
    """Base class: a run could not be carried out. The runner reports it as an `Error` message."""

    code: ClassVar[str] = "EXECUTOR_CRASHED"
    recoverable: ClassVar[bool] = False


class UnknownExecutor(ExecutorError):
    """Raised by `get_executor` when no executor has the requested kind."""

    code = "UNKNOWN_EXECUTOR"


class InvalidExecutorSpec(ExecutorError):
    """Raised when an `ExecutorSpec` lacks what its executor needs (a command, valid settings)."""

    code = "INVALID_EXECUTOR_SPEC"


class ExecutorStartFailed(ExecutorError):
    """Raised from `Executor.run` when the agent process cannot be started at all."""

    code = "EXECUTOR_START_FAILED"


@dataclass(frozen=True)
class RunContext:
    """Everything an executor needs to carry out one run."""

    request_id: str
    agent_id: str
    workspace: Path
    prompt: str
    # Extra environment from the platform, on top of the allowlisted runner environment.
    env: Mapping[str, str] = field(default_factory=dict)
    # The executor's own session id to continue ("" for a new session).
    resume_session_id: str = ""
    # Executor-specific settings (the JSON object of `ExecutorSpec.settings_json`).
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutorEvent:
    """One thing the agent did: its raw event and, when it can be understood, a normalized entry."""

    # The executor's own name for the event ("" when it has none).
    executor_event_type: str
    # The raw event as a JSON value (None when there is none).
    raw: Any
    # The normalized entry (`forge.core.events.ENTRY_KINDS`), or None.
    entry: dict[str, Any] | None
    # The executor's own session id, when known.
    session_id: str = ""


@dataclass(frozen=True)
class ExecutorResult:
    """How a run ended; always the last output of `Executor.run`."""

    outcome: Outcome
    exit_code: int = 0
    message: str = ""
    usage: Usage = field(default_factory=Usage)
    session_id: str = ""


ExecutorOutput = ExecutorEvent | ExecutorResult


class Executor(ABC):
    """Runs one run of an agent. The runner makes a fresh instance for every run."""

    kind: ClassVar[str]

    @classmethod
    def from_spec(cls, spec: runner_pb2.ExecutorSpec) -> Self:
        """The executor an `ExecutorSpec` asks for. Raises `InvalidExecutorSpec`."""
        return cls()

    @abstractmethod
    def run(self, ctx: RunContext) -> AsyncGenerator[ExecutorOutput, None]:
        """Start the agent and yield its events, then exactly one `ExecutorResult`.

        Raises `ExecutorStartFailed` when the agent cannot be started. Closing the generator
        early must stop the agent and everything it started.
        """

    @abstractmethod
    async def interrupt(self, grace_seconds: float) -> None:
        """Ask the running agent to stop, forcing it after `grace_seconds` (<= 0: at once).

        `run` then ends with outcome "interrupted". Safe to call before the agent has started
        and after it has ended.
        """


def executor_environment(
    ctx: RunContext, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment an executor's process gets: allowlisted runner variables + run env."""
    env = allowed_environment(os.environ if parent is None else parent)
    env.setdefault("PATH", os.defpath)
    env.update(ctx.env)
    env["FORGE_AGENT_ID"] = ctx.agent_id
    env["FORGE_REQUEST_ID"] = ctx.request_id
    return env
