"""`kill_strays`: processes of a run that left its process group are found and killed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from forge.executors.base import RunContext, executor_environment
from forge.executors.strays import kill_strays, processes_with


def test_kills_only_the_runs_own_processes(tmp_path: Path) -> None:
    ctx = RunContext(request_id="req_strays", agent_id="ag_strays", workspace=tmp_path, prompt="")
    other = RunContext(request_id="req_other", agent_id="ag_strays", workspace=tmp_path, prompt="")
    # A session of its own, as a detached shell command has.
    mine = subprocess.Popen(["sleep", "60"], env=executor_environment(ctx), start_new_session=True)
    theirs = subprocess.Popen(["sleep", "60"], env=executor_environment(other))
    try:
        assert mine.pid in processes_with({b"FORGE_REQUEST_ID=req_strays"})
        assert kill_strays(ctx) == [mine.pid]
        assert mine.wait(timeout=5) == -9
        assert theirs.poll() is None
        assert kill_strays(ctx) == []
    finally:
        for process in (mine, theirs):
            if process.poll() is None:
                os.kill(process.pid, 9)
            process.wait()
