"""Runtimes: where sandboxes with a runner inside live.

Imported by the runner too (inside every sandbox), so this module stays light: each runtime is
imported only when chosen.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from forge.sandbox.base import Runtime, Sandbox, SandboxSpec

if TYPE_CHECKING:
    from forge.config import Settings

__all__ = ["Runtime", "Sandbox", "SandboxSpec", "get_runtime"]

log = logging.getLogger(__name__)


def get_runtime(settings: Settings) -> Runtime:
    """The runtime `[sandbox] runtime` names; `auto` is `bwrap` on Linux where bubblewrap works,
    else `local` (with a warning: agents are then not isolated)."""
    kind = settings.sandbox.runtime
    if kind == "docker":
        from forge.sandbox.docker import DockerRuntime

        return DockerRuntime(settings)
    if kind == "kubernetes":
        from forge.sandbox.kubernetes import KubernetesRuntime

        return KubernetesRuntime(settings)
    from forge.sandbox.bwrap import BwrapRuntime, bwrap_works
    from forge.sandbox.local import LocalRuntime

    if kind == "bwrap":
        return BwrapRuntime(settings)
    if kind == "auto" and sys.platform == "linux":
        works, why = bwrap_works(settings.sandbox.bwrap.command)
        if works:
            return BwrapRuntime(settings)
        log.warning(
            "sandbox: bubblewrap does not work here (%s); agents run as plain processes with "
            'no isolation (set [sandbox] runtime = "local" to silence this)',
            why,
        )
    return LocalRuntime(settings.runner_state_dir)
