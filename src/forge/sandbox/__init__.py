"""Runtimes: where sandboxes with a runner inside live."""

from __future__ import annotations

from forge.config import Settings
from forge.sandbox.base import Runtime, Sandbox, SandboxSpec
from forge.sandbox.local import LocalRuntime

__all__ = ["LocalRuntime", "Runtime", "Sandbox", "SandboxSpec", "get_runtime"]


def get_runtime(settings: Settings) -> Runtime:
    """The runtime `[sandbox] runtime` names."""
    kind = settings.sandbox.runtime
    if kind == "docker":
        from forge.sandbox.docker import DockerRuntime

        return DockerRuntime(settings)
    if kind == "kubernetes":
        from forge.sandbox.kubernetes import KubernetesRuntime

        return KubernetesRuntime(settings)
    return LocalRuntime(settings.runner_state_dir)
