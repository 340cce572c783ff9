"""Process and file helpers the process-based runtimes (`local`, `bwrap`) share."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from forge.sandbox.base import Sandbox, SandboxState

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 100
SHORT_DIR_PREFIX = "forge-"


class UnsafeSocketDirectory(Exception):
    """Raised when the short socket directory under /tmp is not a private directory of ours."""


def short_socket_dir(state_dir: Path) -> Path:
    """Where runner sockets go when `state_dir` is too deep for a Unix socket path."""
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"{SHORT_DIR_PREFIX}{os.getuid()}-{digest}"


def check_private_dir(path: Path) -> None:
    """Refuse a directory someone else made (they could listen in our place and get the token)."""
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UnsafeSocketDirectory(
            f"{path} must be a directory owned by uid {os.getuid()} with mode 0700; remove it "
            "or set a shorter data directory"
        )


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class _ProcStat(NamedTuple):
    pid: int
    state: str
    pgrp: int
    session: int


def _processes() -> Iterator[_ProcStat]:
    """Every process from /proc/<pid>/stat (those that vanish while reading are skipped)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # After "pid (command)": state, ppid, pgrp, session, ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        yield _ProcStat(int(entry.name), fields[0], int(fields[2]), int(fields[3]))


def kill_session(sid: int, agent_dir: str) -> None:
    """SIGKILL every process of the session a runner started as `sid` led: the runner's own
    (`is_our_runner`), or, when no process has that pid any more, what it left behind. A pid
    reused by another process (after a reboot, say) is left alone, with its session."""
    if Path(f"/proc/{sid}").exists() and not is_our_runner(sid, agent_dir):
        return
    for proc in _processes():
        if proc.session == sid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)


def write_private(path: Path, content: str, mode: int = 0o600) -> None:
    """Replace `path` with a new file holding `content` (never writing through a link that may
    have been put in its place)."""
    unlink_quietly(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)


def is_our_runner(pid: int, agent_dir: str) -> bool:
    """The pid is alive, not a zombie, and is the runner we started (pids get reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and "forge.runner" in cmdline and agent_dir in cmdline


async def terminate_group(pid: int, grace: float = 5.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = asyncio.get_running_loop().time() + wait
        while asyncio.get_running_loop().time() < deadline:
            if not await asyncio.to_thread(_group_alive, pid):
                return
            await asyncio.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left counts as gone.
    return any(p.pgrp == pgid and p.state != "Z" for p in _processes())


async def runner_process_status(sandbox: Sandbox) -> SandboxState:
    """`status` of a runtime whose sandbox is a process tree led by `handle["pid"]`."""
    pid = int(sandbox.handle.get("pid", 0))
    agent_dir = str(sandbox.handle.get("state_dir", ""))
    if pid > 0 and await asyncio.to_thread(is_our_runner, pid, agent_dir):
        return "running"
    return "exited" if pid > 0 else "missing"


async def end_runner_processes(sandbox: Sandbox) -> None:
    """SIGTERM, then SIGKILL, the sandbox's process group while its leader is ours; then
    SIGKILL what is left of its session: executors have process groups of their own inside the
    runner's session (whose id is the leader's pid), which a runner that died may have left."""
    pid = int(sandbox.handle.get("pid", 0))
    agent_dir = str(sandbox.handle.get("state_dir", ""))
    if pid <= 0:
        return
    if await asyncio.to_thread(is_our_runner, pid, agent_dir):
        await terminate_group(pid)
    await asyncio.to_thread(kill_session, pid, agent_dir)


# The executors' home inside a runner's state directory (`home` under bwrap, `state` for the
# local and docker runtimes): their configuration and conversations. It outlives the sandbox,
# so a stopped session's next sandbox continues the executor's conversation; deleting the agent
# with `purge` removes it.
EXECUTOR_HOMES = ("home", "state")


def remove_sandbox_state(agent_dir: Path) -> None:
    """Remove what a sandbox kept in its state directory, except the executors' home."""
    if not agent_dir.is_dir():
        return
    for entry in agent_dir.iterdir():
        if entry.name in EXECUTOR_HOMES and entry.is_dir() and not entry.is_symlink():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            unlink_quietly(entry)
