"""The runtime interface: where runners live. One module a kind; `get_runtime` picks by config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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


@dataclass(frozen=True)
class SandboxSpec:
    """What a runtime needs to start one agent's runner."""

    agent_id: str
    workspace: Path
    # Environment the runner may pass on to executors (already filtered by the platform).
    env: dict[str, str] = field(default_factory=dict)


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
    """Starts, finds and stops sandboxes with a runner inside."""

    name: str

    async def provision(self, spec: SandboxSpec) -> Sandbox:
        """Start a sandbox and its runner; return once the runner's process exists."""
        ...

    async def is_alive(self, sandbox: Sandbox) -> bool:
        """Whether the sandbox's runner is still running."""
        ...

    async def destroy(self, sandbox: Sandbox) -> None:
        """Make sure the sandbox is gone (the runner was asked to shut down before, if it could)."""
        ...
