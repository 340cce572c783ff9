"""What an executor is: the interface the runner drives, and the values that cross it.

An executor runs one agent turn (a *run*) inside the sandbox: it starts the agent with the
prompt, yields what the agent does as `ExecutorEvent`s and ends with exactly one
`ExecutorResult`. The runner turns those into protocol messages; executors know nothing of gRPC.
"""

from __future__ import annotations

import os
import shlex
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from forge.core.events import Outcome, Usage
from forge.runner.proto import runner_pb2
from forge.sandbox.base import allowed_environment

if TYPE_CHECKING:
    from forge.executors.permissions import Permissions

PermissionMode = Literal["bypass", "accept_edits", "ask"]
PERMISSION_MODES: tuple[PermissionMode, ...] = ("bypass", "accept_edits", "ask")


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
class Attachment:
    """A file sent with the message, already written into the workspace by the runner."""

    name: str
    media_type: str
    # Absolute path inside the workspace.
    path: Path

    @property
    def is_image(self) -> bool:
        return self.media_type.startswith("image/")


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
    # Executor-specific settings (the JSON object of `ExecutorSpec.settings_json`):
    # `command` (program to launch instead of the one on PATH), `append_prompt`,
    # `additional_params` (extra CLI arguments), `system_prompt`, and the executor's own keys.
    settings: Mapping[str, Any] = field(default_factory=dict)
    # The model to use ("" for the executor's default).
    model: str = ""
    # bypass: run every tool; accept_edits: file edits without asking, the rest per the agent's
    # own rules; ask: every tool call that needs approval waits for the user (`permissions`).
    permission_mode: PermissionMode = "bypass"
    # Where `ask` requests go; always set by the runner (None only in tests that do not ask).
    permissions: Permissions | None = None
    # Files sent with the message, written into the workspace before the run.
    attachments: tuple[Attachment, ...] = ()
    # The sandbox's private home directory (executor configuration and session stores live
    # here); None: the runner's own HOME.
    home: Path | None = None
    # A private directory outside the workspace that survives between runs (None: none).
    state_dir: Path | None = None

    def prompt_with_extras(self) -> str:
        """The prompt with `append_prompt` and a list of attached files, as most CLIs take it."""
        parts = [self.prompt]
        append = self.settings.get("append_prompt")
        if isinstance(append, str) and append.strip():
            parts.append(append)
        if self.attachments:
            listed = "\n".join(
                f"- {a.path.relative_to(self.workspace)} ({a.media_type})" for a in self.attachments
            )
            parts.append(f"Attached files (in the workspace):\n{listed}")
        return "\n\n".join(parts)

    def extra_args(self) -> list[str]:
        """`additional_params` from the settings: extra command-line arguments."""
        value = self.settings.get("additional_params", [])
        if isinstance(value, str):
            return value.split()
        return [str(arg) for arg in value] if isinstance(value, list) else []

    def program(self, default: str) -> list[str]:
        """The command to launch: `settings.command` (split like a shell would) or `default`."""
        command = self.settings.get("command")
        if isinstance(command, str) and command.strip():
            return shlex.split(command)
        return [default]


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
    # Environment variables this executor takes its credentials and endpoints from: the
    # platform passes them, from its own environment or the profile's `env`, to this executor's
    # process alone.
    credential_env: ClassVar[tuple[str, ...]] = ()
    # The `permission_mode`s the executor can honour (a profile asking for another is refused).
    permission_modes: ClassVar[tuple[PermissionMode, ...]] = ("bypass",)

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
    ctx: RunContext, parent: Mapping[str, str] | None = None, *, private_home: bool = True
) -> dict[str, str]:
    """The environment an executor's process gets: allowlisted runner variables + run env."""
    env = allowed_environment(os.environ if parent is None else parent)
    env.setdefault("PATH", os.defpath)
    if private_home and ctx.home is not None:
        env["HOME"] = str(ctx.home)
        for name, sub in _XDG_DIRS.items():
            env[name] = str(ctx.home / sub)
    env.update(ctx.env)
    env["FORGE_AGENT_ID"] = ctx.agent_id
    env["FORGE_REQUEST_ID"] = ctx.request_id
    return env


_XDG_DIRS = {
    "XDG_CONFIG_HOME": ".config",
    "XDG_DATA_HOME": ".local/share",
    "XDG_STATE_HOME": ".local/state",
    "XDG_CACHE_HOME": ".cache",
}
