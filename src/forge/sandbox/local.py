"""`local` runtime: the runner as a plain subprocess in its own session (development use)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from forge.sandbox.base import Sandbox, SandboxSpec, SandboxState

log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 100
_SHORT_DIR_PREFIX = "forge-"


class UnsafeSocketDirectory(Exception):
    """Raised when the short socket directory under /tmp is not a private directory of ours."""


class LocalRuntime:
    """Starts `forge runner` as a detached subprocess working in the agent's workspace.

    The runner gets its own session, so it outlives a restart of the platform and can be
    reattached; its state (socket, token, log) lives in `<state_dir>/<agent_id>/`.
    """

    name = "local"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._reapers: set[asyncio.Task[None]] = set()

    async def provision(self, spec: SandboxSpec) -> Sandbox:
        agent_dir = self.state_dir / spec.agent_id
        await asyncio.to_thread(agent_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
        socket_path = await asyncio.to_thread(self._socket_path, agent_dir, spec.agent_id)
        await asyncio.to_thread(_unlink_quietly, socket_path)
        token = secrets.token_urlsafe(32)
        token_file = agent_dir / "token"
        await asyncio.to_thread(_write_private, token_file, token)
        log_file = agent_dir / "runner.log"
        args = [
            sys.executable,
            "-m",
            "forge.runner",
            "--listen",
            f"unix:{socket_path}",
            "--workspace",
            str(spec.workspace),
            "--agent-id",
            spec.agent_id,
            "--token-file",
            str(token_file),
            "--log-file",
            str(log_file),
            "--state-dir",
            str(agent_dir / "state"),
        ]
        with open(log_file, "ab") as out:  # noqa: ASYNC230 - opening a log file is instant
            proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=spec.workspace,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=spec.env,
                start_new_session=True,
            )
        reaper = asyncio.create_task(self._reap(proc, spec.agent_id))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)
        return Sandbox(
            address=f"unix:{socket_path}",
            token=token,
            handle={"runtime": self.name, "pid": proc.pid, "state_dir": str(agent_dir)},
        )

    async def status(self, sandbox: Sandbox) -> SandboxState:
        pid = int(sandbox.handle.get("pid", 0))
        agent_dir = str(sandbox.handle.get("state_dir", ""))
        if pid > 0 and await asyncio.to_thread(_is_our_runner, pid, agent_dir):
            return "running"
        return "exited" if pid > 0 else "missing"

    async def destroy(self, sandbox: Sandbox) -> None:
        pid = int(sandbox.handle.get("pid", 0))
        agent_dir = str(sandbox.handle.get("state_dir", ""))
        if pid > 0 and await asyncio.to_thread(_is_our_runner, pid, agent_dir):
            await _terminate_group(pid)
        if pid > 0:
            # Executors have process groups of their own inside the runner's session (whose id
            # is the runner's pid): a runner that died or was killed may have left them.
            await asyncio.to_thread(_kill_session, pid)
        if agent_dir:
            await asyncio.to_thread(shutil.rmtree, agent_dir, True)
        if sandbox.address.startswith("unix:"):
            socket_path = Path(sandbox.address.removeprefix("unix:"))
            await asyncio.to_thread(_unlink_quietly, socket_path)
            if socket_path.parent.name.startswith(_SHORT_DIR_PREFIX):
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(socket_path.parent.rmdir)  # only once empty

    def _socket_path(self, agent_dir: Path, agent_id: str) -> Path:
        preferred = agent_dir / "runner.sock"
        if len(str(preferred)) <= _MAX_SOCKET_PATH:
            return preferred
        # Deep data directories (tests, containers): a short directory of our own under /tmp.
        short = short_socket_dir(self.state_dir)
        with contextlib.suppress(FileExistsError):
            short.mkdir(mode=0o700)
        _check_private_dir(short)
        return short / f"{agent_id}.sock"

    async def _reap(self, proc: asyncio.subprocess.Process, agent_id: str) -> None:
        code = await proc.wait()
        log.info("runner of %s exited with %s", agent_id, code)


def short_socket_dir(state_dir: Path) -> Path:
    """Where runner sockets go when `state_dir` is too deep for a Unix socket path."""
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"{_SHORT_DIR_PREFIX}{os.getuid()}-{digest}"


def _check_private_dir(path: Path) -> None:
    """Refuse a directory someone else made (they could listen in our place and get the token)."""
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UnsafeSocketDirectory(
            f"{path} must be a directory owned by uid {os.getuid()} with mode 0700; remove it "
            "or set a shorter data directory"
        )


def _unlink_quietly(path: Path) -> None:
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


def _kill_session(sid: int) -> None:
    """SIGKILL every process whose session id is `sid`."""
    for proc in _processes():
        if proc.session == sid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)


def _write_private(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)


def _is_our_runner(pid: int, agent_dir: str) -> bool:
    """The pid is alive, not a zombie, and is the runner we started (pids get reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and "forge.runner" in cmdline and agent_dir in cmdline


async def _terminate_group(pid: int, grace: float = 5.0) -> None:
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
