"""Fixtures that start the real runner (`python -m forge.runner`) as a subprocess."""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from forge.runner import RunnerClient

AGENT_ID = "ag_test"
STARTUP_SECONDS = 15.0


@dataclass
class RunnerProcess:
    """One runner subprocess with its own directory (socket, workspace, log, pid files)."""

    process: subprocess.Popen[bytes]
    directory: Path
    workspace: Path
    address: str
    token: str | None

    @property
    def log(self) -> str:
        path = self.directory / "runner.log"
        return path.read_text() if path.exists() else ""

    def client(self, token: str | None = None) -> RunnerClient:
        return RunnerClient(self.address, token if token is not None else self.token)


StartRunner = Callable[..., RunnerProcess]


@pytest.fixture
def start_runner() -> Iterator[StartRunner]:
    """Start runners with extra arguments; every one is killed at teardown."""
    started: list[RunnerProcess] = []

    def start(
        *extra_args: str,
        token: str | None = None,
        env: dict[str, str] | None = None,
        listen: str | None = None,
    ) -> RunnerProcess:
        # A short path: unix socket paths are limited to ~107 bytes.
        directory = Path(tempfile.mkdtemp(prefix="frt", dir="/tmp"))
        workspace = directory / "ws"
        workspace.mkdir()
        listen = listen or f"unix:{directory}/r.sock"
        args = [
            sys.executable,
            "-m",
            "forge.runner",
            "--listen",
            listen,
            "--workspace",
            str(workspace),
            "--agent-id",
            AGENT_ID,
            "--log-file",
            str(directory / "runner.log"),
            "--log-level",
            "DEBUG",
            "--grace-seconds",
            "1",
            *extra_args,
        ]
        if token is not None:
            token_file = directory / "token"
            token_file.write_text(token + "\n")
            args += ["--token-file", str(token_file)]
        process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        runner = RunnerProcess(process, directory, workspace, listen, token)
        started.append(runner)
        # The runner prints the address it listens on once it accepts connections.
        runner.address = _first_line(process, STARTUP_SECONDS)
        assert runner.address, runner.log
        return runner

    yield start

    for runner in started:
        if runner.process.poll() is None:
            runner.process.kill()
            runner.process.wait(10)
        assert runner.process.stdout is not None
        runner.process.stdout.close()
        # Executors run in their own process groups: kill any a failed test left behind.
        for pid_file in runner.directory.glob("*.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
        shutil.rmtree(runner.directory, ignore_errors=True)


@pytest.fixture
def runner(start_runner: StartRunner) -> RunnerProcess:
    """A runner started with the default arguments and no token."""
    return start_runner()


@pytest.fixture
async def client(runner: RunnerProcess) -> AsyncIterator[RunnerClient]:
    """A client for `runner`, ready to connect."""
    client = runner.client()
    await client.wait_ready(5)
    yield client
    await client.close()


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The runner's first stdout line (its bound address), or "" if it does not come."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline().decode().strip()
