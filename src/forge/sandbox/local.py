"""`local` runtime: the runner as a plain subprocess in its own session (development use)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
from pathlib import Path

from forge.sandbox.base import Sandbox, SandboxSpec, SandboxState
from forge.sandbox.processes import (
    MAX_SOCKET_PATH,
    SHORT_DIR_PREFIX,
    check_private_dir,
    end_runner_processes,
    remove_sandbox_state,
    runner_process_status,
    short_socket_dir,
    unlink_quietly,
    write_private,
)

log = logging.getLogger(__name__)


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
        await asyncio.to_thread(unlink_quietly, socket_path)
        token = secrets.token_urlsafe(32)
        token_file = agent_dir / "token"
        await asyncio.to_thread(write_private, token_file, token)
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
        return await runner_process_status(sandbox)

    async def destroy(self, sandbox: Sandbox) -> None:
        await end_runner_processes(sandbox)
        agent_dir = str(sandbox.handle.get("state_dir", ""))
        if agent_dir:
            await asyncio.to_thread(remove_sandbox_state, Path(agent_dir))
        if sandbox.address.startswith("unix:"):
            socket_path = Path(sandbox.address.removeprefix("unix:"))
            await asyncio.to_thread(unlink_quietly, socket_path)
            if socket_path.parent.name.startswith(SHORT_DIR_PREFIX):
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(socket_path.parent.rmdir)  # only once empty

    def _socket_path(self, agent_dir: Path, agent_id: str) -> Path:
        preferred = agent_dir / "runner.sock"
        if len(str(preferred)) <= MAX_SOCKET_PATH:
            return preferred
        # Deep data directories (tests, containers): a short directory of our own under /tmp.
        short = short_socket_dir(self.state_dir)
        with contextlib.suppress(FileExistsError):
            short.mkdir(mode=0o700)
        check_private_dir(short)
        return short / f"{agent_id}.sock"

    async def _reap(self, proc: asyncio.subprocess.Process, agent_id: str) -> None:
        code = await proc.wait()
        log.info("runner of %s exited with %s", agent_id, code)
