"""Finding and killing what a run started outside its process group.

Agent CLIs start shell commands in sessions of their own (Gemini CLI detaches them, Codex runs
them in a pty, and a command may put a job in the background), so killing the CLI's process
group can leave them running. They all inherit the run's `FORGE_AGENT_ID` and
`FORGE_REQUEST_ID` (`executor_environment`), which is how they are found here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from forge.executors.base import RunContext


def kill_strays(ctx: RunContext) -> list[int]:
    """SIGKILL every process (but this one) that carries the run's agent and request ids.

    Blocking (it reads /proc); call it from a thread in async code. Returns the pids killed.
    """
    marks = {
        f"FORGE_AGENT_ID={ctx.agent_id}".encode(),
        f"FORGE_REQUEST_ID={ctx.request_id}".encode(),
    }
    killed: list[int] = []
    for _ in range(3):  # a process may fork while we look
        strays = [pid for pid in processes_with(marks) if pid != os.getpid()]
        if not strays:
            break
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.05)
    return killed


def processes_with(marks: set[bytes]) -> list[int]:
    """Live processes whose environment holds every one of `marks` (Linux; [] elsewhere)."""
    found = []
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as environ:
                variables = set(environ.read().split(b"\0"))
        except OSError:  # gone, a zombie, or not ours
            continue
        if marks <= variables:
            found.append(int(entry.name))
    return found
