"""The runtime interface: where runners live. One module a kind; `get_runtime` picks by config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from forge.config import Settings

# The only variables of a parent's environment that reach a runner or an executor: no platform
# secrets, no configuration of Forge itself.
ENV_ALLOWLIST = frozenset(
    {"PATH", "HOME", "LANG", "LC_ALL", "TERM", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR"}
)
ENV_ALLOWLIST_PREFIXES = ("LC_",)


def allowed_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The allowlisted part of `source`."""
    return {
        name: value
        for name, value in source.items()
        if name in ENV_ALLOWLIST or name.startswith(ENV_ALLOWLIST_PREFIXES)
    }


NetworkMode = Literal["none", "host"]
# starting: provisioned, runner not known to be up yet; running: the runner's process (or
# container, pod) is alive; exited: it ended; missing: the runtime knows nothing of it.
SandboxState = Literal["starting", "running", "exited", "missing"]
LIVE_STATES: frozenset[SandboxState] = frozenset({"starting", "running"})


@dataclass(frozen=True)
class ResourceLimits:
    """What one sandbox may use; 0 means no limit of that kind."""

    processes: int = 1024
    memory_bytes: int = 4096 * 1024 * 1024
    cpu_seconds: int = 0
    cpus: float = 0.0
    file_size_bytes: int = 1024 * 1024 * 1024
    open_files: int = 4096


def resource_limits(settings: Settings) -> ResourceLimits:
    """`[sandbox.limits]` in bytes and seconds."""
    configured = settings.sandbox.limits
    mib = 1024 * 1024
    return ResourceLimits(
        processes=configured.processes,
        memory_bytes=configured.memory_mb * mib,
        cpu_seconds=configured.cpu_seconds,
        cpus=configured.cpus,
        file_size_bytes=configured.file_size_mb * mib,
        open_files=configured.open_files,
    )


@dataclass(frozen=True)
class SandboxSpec:
    """What a runtime needs to start one agent's runner."""

    agent_id: str
    workspace: Path
    # Environment the runner may pass on to executors (already filtered by the platform).
    env: dict[str, str] = field(default_factory=dict)
    owner_id: str | None = None
    profile: str = ""
    network: NetworkMode = "host"
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    # A git worktree's metadata in its repository (`<repo>/.git`): the common directory, shown
    # read-only, and the parts of it the worktree must write (its own `worktrees/<name>`, the
    # object store, its branch's ref directory and reflog).
    git_common_dir: Path | None = None
    git_writable: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Sandbox:
    """A started sandbox: how to reach its runner and how the runtime finds it again.

    `handle` is stored with the agent (JSON), so a restarted platform can reattach.
    """

    address: str
    token: str
    handle: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "token": self.token, "handle": self.handle}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sandbox:
        return cls(address=data["address"], token=data["token"], handle=dict(data["handle"]))


class Runtime(Protocol):
    """Starts, finds and stops sandboxes with a runner inside. The rest of Forge never knows
    which kind is in use."""

    name: str

    async def provision(self, spec: SandboxSpec) -> Sandbox:
        """Start a sandbox with the workspace mounted and its runner starting; return once the
        runner's address is known (the caller waits for it to accept connections)."""
        ...

    async def status(self, sandbox: Sandbox) -> SandboxState:
        """Where the sandbox stands (`running` while its runner's process is alive)."""
        ...

    async def destroy(self, sandbox: Sandbox) -> None:
        """Make sure the sandbox is gone (the runner was asked to shut down before, if it could).
        Idempotent: destroying a missing sandbox does nothing."""
        ...


async def is_alive(runtime: Runtime, sandbox: Sandbox) -> bool:
    """Whether the sandbox's runner may still be running."""
    return await runtime.status(sandbox) in LIVE_STATES
