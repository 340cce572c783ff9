"""`forge run`, `resume`, `status`, `sessions`, `worktrees` and `logs`: the CLI as a subprocess
against a real server, from inside a real git repository."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer, wait_for

pytestmark = pytest.mark.integration

# `echo` shows one entry of each kind the CLI prints, then echoes the prompt.
PROFILES = """
[profiles.echo]
executor = "command"
command = '''printf '%s\\n' '{"entry": {"kind": "thinking", "text": "pondering"}}' \
'{"entry": {"kind": "tool_call", "tool": "Bash", "detail": "ls -la", "status": "running"}}'; cat'''

[profiles.fail]
executor = "command"
command = "cat; exit 3"

[profiles.slow]
executor = "command"
command = "sleep 30"

# The `echo` ends the prompt's line: the executor sends a line once it is complete.
[profiles.gate]
executor = "command"
command = "cat; echo; while [ ! -f go ]; do sleep 0.05; done; echo after-go; sleep 30"

[profiles.gate_ends]
executor = "command"
command = "cat; echo; while [ ! -f go ]; do sleep 0.05; done; echo after-go"
"""


def forge(
    *args: str, server: ForgeServer | None, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(*args), cwd=cwd, env=_env(server), capture_output=True, text=True, timeout=timeout
    )


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "forge", *args]


def _env(server: ForgeServer | None, base_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env["FORGE_BASE_URL"] = base_url or (server.base_url if server else "")
    env["FORGE_OWNER"] = "dana"
    # The package from this checkout, whatever the cwd.
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    return env


def session(server: ForgeServer, session_id: str) -> dict[str, Any]:
    found: dict[str, Any] = server.http.get(f"/api/v1/sessions/{session_id}").json()
    return found


def background(server: ForgeServer, repo: Path, profile: str, prompt: str) -> str:
    started = time.monotonic()
    result = forge("run", profile, prompt, "--background", server=server, cwd=repo)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20
    session_id = result.stdout.strip()
    assert session_id.startswith("ag_")
    return session_id


def test_run_streams_writes_session_file_and_resume_continues(
    forge_server: Any, git_repo: Path
) -> None:
    server: ForgeServer = forge_server(PROFILES)
    ran = forge("run", "echo", "hello from the cli", server=server, cwd=git_repo)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = ran.stdout.splitlines()
    assert "[thinking] pondering" in lines
    assert "[Bash] ls -la" in lines
    assert "hello from the cli" in lines
    assert lines[-1].startswith("== succeeded")

    record = json.loads((git_repo / ".forge" / "session").read_text())
    session_id = record["session_id"]
    assert record["url"] == server.base_url
    assert record["dashboard_url"] == f"{server.base_url}/sessions/{session_id}"
    assert record["created_at"]
    found = session(server, session_id)
    assert found["owner_id"] == "dana" and found["repo"] == str(git_repo)
    assert (
        "session"
        not in subprocess.run(
            ["git", "status", "--porcelain"], cwd=git_repo, capture_output=True, text=True
        ).stdout
    )

    resumed = forge("resume", "second message", server=server, cwd=git_repo)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "second message" in resumed.stdout.splitlines()
    assert "hello from the cli" not in resumed.stdout  # only the new run
    assert session(server, session_id)["runs"] == 2

    history = forge("logs", session_id, server=server, cwd=git_repo)
    assert history.returncode == 0, history.stderr
    out = history.stdout
    assert out.index("hello from the cli") < out.index("second message")
    assert out.count("== succeeded") == 2

    failed = forge("run", "fail", "doomed", server=server, cwd=git_repo)
    assert failed.returncode == 1 and "== failed" in failed.stdout
    assert "doomed" in failed.stdout
    # The file now names the latest session.
    latest = json.loads((git_repo / ".forge" / "session").read_text())["session_id"]
    assert latest != session_id


def test_resume_without_id_outside_a_repository_is_a_clear_error(
    forge_server: Any, tmp_path: Path
) -> None:
    server: ForgeServer = forge_server(PROFILES)
    outside = tmp_path / "plain"
    outside.mkdir()
    result = forge("resume", "more", server=server, cwd=outside)
    assert result.returncode == 2 and "not inside a git repository" in result.stderr
    missing = forge("resume", "ag_00000000000000000000000000", "more", server=server, cwd=outside)
    assert missing.returncode == 1 and "error: agent_not_found:" in missing.stderr


def test_sessions_status_stop_and_worktrees(forge_server: Any, git_repo: Path) -> None:
    server: ForgeServer = forge_server(PROFILES)
    session_id = background(server, git_repo, "slow", "take your time")
    wait_for(lambda: session(server, session_id)["status"] == "running", timeout=90)

    status = forge("status", server=server, cwd=git_repo)
    assert status.returncode == 0, status.stderr
    assert server.base_url in status.stdout and ": ok" in status.stdout
    assert "1 running" in status.stdout
    assert any(ln.startswith(session_id) and "slow" in ln for ln in status.stdout.splitlines())
    assert "queue: 0 task(s) waiting" in status.stdout

    listed = forge("sessions", "list", "--status", "running", server=server, cwd=git_repo)
    assert listed.returncode == 0 and session_id in listed.stdout
    as_json = forge("sessions", "list", "--profile", "echo", "--json", server=server, cwd=git_repo)
    assert json.loads(as_json.stdout)["sessions"] == []
    shown = forge("sessions", "show", session_id, server=server, cwd=git_repo)
    assert json.loads(shown.stdout)["status"] == "running"
    transcript = forge("sessions", "transcript", session_id, server=server, cwd=git_repo)
    assert transcript.returncode == 0 and "take your time" in transcript.stdout
    as_json = forge(
        "sessions", "transcript", session_id, "--format", "json", server=server, cwd=git_repo
    )
    assert json.loads(as_json.stdout)["session_id"] == session_id

    worktrees = forge("worktrees", "list", server=server, cwd=git_repo)
    assert worktrees.returncode == 0
    path = session(server, session_id)["workspace_path"]
    assert any(session_id in ln and path in ln for ln in worktrees.stdout.splitlines())

    stopped = forge("sessions", "stop", session_id, server=server, cwd=git_repo)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"{session_id}: stopped"

    cleaned = forge("worktrees", "cleanup", "--older-than-hours", "0", server=server, cwd=git_repo)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"removed {path} (stopped, {session_id})" in cleaned.stdout
    assert not Path(path).exists()
    as_json = forge("worktrees", "list", "--json", server=server, cwd=git_repo)
    assert session_id not in [w["session"] for w in json.loads(as_json.stdout)["worktrees"]]


def test_logs_follow_prints_new_output_live(forge_server: Any, git_repo: Path) -> None:
    server: ForgeServer = forge_server(PROFILES)
    session_id = background(server, git_repo, "gate", "waiting at the gate")
    wait_for(lambda: session(server, session_id)["status"] == "running", timeout=90)

    proc, lines = spawn(server, git_repo, "logs", "-f", session_id)
    try:
        _read_until(lines, "waiting at the gate")  # the history
        Path(session(server, session_id)["workspace_path"], "go").write_text("")
        _read_until(lines, "after-go")  # printed as it happened
        assert proc.poll() is None  # still following
    finally:
        proc.kill()
        proc.wait()


def test_run_follows_across_a_server_restart(forge_server: Any, git_repo: Path) -> None:
    server: ForgeServer = forge_server(PROFILES)
    proc, lines = spawn(server, git_repo, "run", "gate_ends", "through the restart")
    try:
        _read_until(lines, "through the restart", timeout=90)
        server.stop()
        server.start()
        session_id = json.loads((git_repo / ".forge" / "session").read_text())["session_id"]
        Path(session(server, session_id)["workspace_path"], "go").write_text("")
        _read_until(lines, "after-go", timeout=60)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def spawn(
    server: ForgeServer, cwd: Path, *args: str
) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """The CLI in the background, its stdout lines in a queue as they come."""
    proc = subprocess.Popen(
        _argv(*args), cwd=cwd, env=_env(server), stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(
        target=lambda: [lines.put(ln.rstrip("\n")) for ln in stdout], daemon=True
    ).start()
    return proc, lines


def _read_until(lines: queue.Queue[str], wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if lines.get(timeout=0.2) == wanted:
                return
        except queue.Empty:
            pass
    raise AssertionError(f"{wanted!r} was not printed")


def test_status_of_an_unreachable_server_fails_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        _argv("status"),
        cwd=tmp_path,
        env=_env(None, "http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "cannot reach Forge at http://127.0.0.1:9" in result.stderr
