"""Control groups for a sandbox's memory, process and CPU limits: v2 where its controllers are
available, else v1 (hybrid hosts), else none (the rlimits still apply).

A sandbox's group is created before its first process starts; the process joins it between
fork and exec (`join`), so everything the sandbox ever forks is counted. Groups are found again
from their paths, which the runtime keeps in the sandbox's handle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from forge.sandbox.base import ResourceLimits

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000


class CgroupUnavailable(Exception):
    """Raised when no cgroup hierarchy with the needed controllers can be written here."""


@dataclass(frozen=True)
class SandboxCgroup:
    """One sandbox's group: a directory per hierarchy (one on v2, up to three on v1)."""

    paths: tuple[Path, ...]

    def to_json(self) -> list[str]:
        return [str(path) for path in self.paths]

    @classmethod
    def from_json(cls, paths: list[str]) -> SandboxCgroup:
        return cls(tuple(Path(path) for path in paths))

    def join(self) -> None:
        """Move the calling process into the group (called in the child before exec)."""
        pid = str(os.getpid()).encode()
        for path in self.paths:
            fd = os.open(path / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths:
            with contextlib.suppress(OSError):
                found.update(int(line) for line in (path / "cgroup.procs").read_text().split())
        return found

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the group until none is left (a fork bomb is bounded by the
        pids limit, so this ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        log.warning("processes left in %s after %.0fs", self.paths, timeout)

    def remove(self) -> None:
        """Remove the group's directories (only once they hold no process)."""
        for path in self.paths:
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # the last killed processes are still exiting

    def memory_events(self) -> dict[str, int]:
        """Counters of memory limit hits (v2 `memory.events`, v1 `memory.failcnt`)."""
        for path in self.paths:
            events = path / "memory.events"
            failcnt = path / "memory.failcnt"
            with contextlib.suppress(OSError):
                if events.exists():
                    pairs = (line.split() for line in events.read_text().splitlines())
                    return {name: int(value) for name, value in pairs}
                if failcnt.exists():
                    return {"max": int(failcnt.read_text())}
        return {}


class CgroupManager:
    """Creates sandbox groups under `forge-<instance>` in the hierarchy Forge itself runs in."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._layout = _detect_layout()
        self.remove_empty()

    def remove_empty(self) -> None:
        """Remove this instance's groups that hold no process (left by sandboxes that ended
        without their platform), and its parent group once empty."""
        if self._layout is None:
            return
        for base in self._layout[1].values():
            parent = base / f"forge-{self.instance}"
            _sweep_empty(parent)
            with contextlib.suppress(OSError):
                parent.rmdir()

    @property
    def available(self) -> bool:
        return self._layout is not None

    def bases(self) -> list[Path]:
        """The groups (one per hierarchy) under which this instance's groups are made."""
        return [] if self._layout is None else list(self._layout[1].values())

    @property
    def version(self) -> int:
        return 0 if self._layout is None else self._layout[0]

    def create(self, name: str, limits: ResourceLimits) -> SandboxCgroup:
        """A new group for sandbox `name` with `limits` set; `CgroupUnavailable` if none."""
        if self._layout is None:
            raise CgroupUnavailable("no writable cgroup hierarchy with memory and pids controllers")
        version, bases = self._layout
        paths: list[Path] = []
        try:
            for controller, base in bases.items():
                parent = base / f"forge-{self.instance}"
                if version == 2:
                    _make_v2_parent(parent)
                else:
                    parent.mkdir(exist_ok=True)
                path = parent / name
                path.mkdir(exist_ok=True)
                paths.append(path)
                _apply(version, controller, path, limits)
        except OSError as exc:
            SandboxCgroup(tuple(paths)).remove()
            raise CgroupUnavailable(f"could not set up a cgroup for {name}: {exc}") from exc
        return SandboxCgroup(tuple(paths))


def _detect_layout() -> tuple[int, dict[str, Path]] | None:
    """(2, {"all": base}) or (1, {controller: base}) for the groups Forge runs in, if writable."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    own: dict[str, str] = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    v2_root = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else None
    if v2_root is not None:
        available = set((v2_root / "cgroup.controllers").read_text().split())
        if {"memory", "pids"} <= available and os.access(v2_root, os.W_OK):
            # The root group is the one place exempt from "no processes in inner groups".
            return 2, {"all": v2_root}
    bases: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:
        mount = CGROUP_ROOT / controller
        if controller not in own or not (mount / "cgroup.procs").exists():
            continue
        base = mount / own[controller].lstrip("/")
        if os.access(base, os.W_OK):
            bases[controller] = base
    if "memory" in bases and "pids" in bases:
        return 1, bases
    return None


def _make_v2_parent(parent: Path) -> None:
    parent.mkdir(exist_ok=True)
    wanted = {"memory", "pids", "cpu"} & set((parent / "cgroup.controllers").read_text().split())
    enabled = set((parent / "cgroup.subtree_control").read_text().split())
    if wanted - enabled:
        (parent / "cgroup.subtree_control").write_text(
            " ".join(f"+{name}" for name in sorted(wanted - enabled))
        )


def _apply(version: int, controller: str, path: Path, limits: ResourceLimits) -> None:
    def write(name: str, value: object) -> None:
        (path / name).write_text(str(value))

    if version == 2:
        if limits.memory_bytes:
            write("memory.max", limits.memory_bytes)
            with contextlib.suppress(OSError):
                write("memory.swap.max", 0)
        if limits.processes:
            write("pids.max", limits.processes)
        if limits.cpus and (path / "cpu.max").exists():
            write("cpu.max", f"{int(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        return
    if controller == "memory" and limits.memory_bytes:
        write("memory.limit_in_bytes", limits.memory_bytes)
        if (path / "memory.memsw.limit_in_bytes").exists():
            write("memory.memsw.limit_in_bytes", limits.memory_bytes)
    elif controller == "pids" and limits.processes:
        write("pids.max", limits.processes)
    elif controller == "cpu" and limits.cpus:
        write("cpu.cfs_period_us", CPU_PERIOD_US)
        write("cpu.cfs_quota_us", int(limits.cpus * CPU_PERIOD_US))


def _sweep_empty(parent: Path) -> None:
    """Remove groups of sandboxes that ended without their platform (killed with it)."""
    with contextlib.suppress(OSError):
        for child in parent.iterdir():
            if child.is_dir() and not (child / "cgroup.procs").read_text().strip():
                with contextlib.suppress(OSError):
                    child.rmdir()
