"""`forge import DIR` as a subprocess into a server's data directory, read back through the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer

pytestmark = pytest.mark.integration


def _forge_import(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    return subprocess.run(
        [sys.executable, "-m", "forge", "import", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _write_log(path: Path, lines: list[dict[str, Any] | str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )


def _file_store(root: Path) -> Path:
    """A store like the file-based tool leaves: four sessions, one log with a broken line, one
    session without a log, logs in each of the places the tool used."""
    store = root / "store"
    store.mkdir()
    index = {
        "sessions": [
            {
                "id": "fix-login",
                "agent": "claude-code",
                "status": "completed",
                "created_at": "2024-05-01T09:00:00Z",
                "updated_at": "2024-05-01T09:30:00Z",
                "repo": "/home/dev/webapp",
                "branch": "forge/fix-login",
                "title": "Fix the login redirect",
                "claude_session_id": "c0ffee-1",
            },
            {
                "id": "add-tests",
                "profile": "codex",
                "status": "error",
                "created_at": "2024-05-02T10:00:00+02:00",
                "updated_at": "2024-05-02T10:05:00+02:00",
                "worktree_path": "/home/dev/.wt/add-tests",
                "title": "Add tests",
                "owner": "bob",
            },
            {
                "id": "broken-one",
                "agent": "claude-code",
                "status": "completed",
                "created_at": "2024-05-03T08:00:00Z",
                "updated_at": "2024-05-03T08:10:00Z",
            },
            {
                "id": "no-log",
                "agent": "claude-code",
                "status": "completed",
                "created_at": "2024-05-04T08:00:00Z",
                "updated_at": "2024-05-04T08:10:00Z",
            },
        ]
    }
    (store / "sessions.json").write_text(json.dumps(index, indent=2))
    _write_log(
        store / "fix-login.jsonl",
        [
            {"timestamp": "2024-05-01T09:00:01Z", "type": "system", "content": "session start"},
            {"timestamp": "2024-05-01T09:00:02Z", "type": "user", "content": "Fix the login"},
            {"timestamp": "2024-05-01T09:00:03Z", "type": "thinking", "text": "Look at auth"},
            {
                "timestamp": "2024-05-01T09:00:04Z",
                "type": "tool_use",
                "id": "tu_1",
                "name": "Bash",
                "input": {"command": "grep -r redirect src"},
            },
            {
                "timestamp": "2024-05-01T09:00:05Z",
                "type": "tool_result",
                "tool_use_id": "tu_1",
                "content": "src/auth.py:12: redirect(",
            },
            {
                "timestamp": "2024-05-01T09:00:06Z",
                "type": "tool_use",
                "id": "tu_2",
                "name": "Read",
                "input": {"file_path": "missing.py"},
            },
            {
                "timestamp": "2024-05-01T09:00:07Z",
                "type": "tool_result",
                "tool_use_id": "tu_2",
                "content": "no such file",
                "is_error": True,
            },
            {
                "timestamp": "2024-05-01T09:00:08Z",
                "type": "assistant",
                "content": [{"type": "text", "text": "Fixed the redirect."}],
            },
            {"timestamp": "2024-05-01T09:10:00Z", "type": "user", "message": "Thanks, commit"},
            {"timestamp": "2024-05-01T09:10:05Z", "type": "assistant", "text": "Committed."},
        ],
    )
    _write_log(
        store / "sessions" / "add-tests.jsonl",
        [
            {"timestamp": "2024-05-02T08:00:01Z", "type": "user", "content": "Add tests"},
            {"timestamp": "2024-05-02T08:00:02Z", "type": "error", "message": "rate limited"},
        ],
    )
    _write_log(
        store / "logs" / "broken-one.log",
        [
            {"timestamp": "2024-05-03T08:00:01Z", "type": "user", "content": "hello"},
            '{"timestamp": "2024-05-03T08:00:02Z", "type": "assist',
        ],
    )
    return store


def test_import_into_a_server(tmp_path: Path) -> None:
    store = _file_store(tmp_path)
    root = tmp_path / "forge"
    root.mkdir()
    server = ForgeServer(root)
    try:
        first = _forge_import(str(store), "--config", str(server.config_path), "--owner", "dev")
        # Two sessions skipped: the exit status says the import was partial.
        assert first.returncode == 1, first.stderr
        assert "imported 2 sessions" in first.stdout and "2 skipped" in first.stdout
        assert "4/4 sessions read" in first.stdout
        assert "broken-one.log: line 2: invalid JSON" in first.stderr
        assert "skipped no-log: no log" in first.stderr

        server.start()
        page = server.http.get("/api/v1/sessions").json()
        assert page["total"] == 2
        by_title = {}
        for item in page["sessions"]:
            agent = server.http.get(f"/api/v1/agents/{item['id']}").json()
            by_title[agent["metadata"]["title"]] = (item, agent)

        login, login_agent = by_title["Fix the login redirect"]
        assert login_agent["metadata"]["imported_from"] == "fix-login"
        assert login["id"].startswith("ag_") and login["owner_id"] == "dev"
        assert login["status"] == "stopped" and login["executor"] == "claude_code"
        assert login["created_at"].startswith("2024-05-01T09:00:00")
        assert login["updated_at"].startswith("2024-05-01T09:30:00")
        assert login["branch"] == "forge/fix-login" and login["repo"] == "/home/dev/webapp"
        assert login["executor_session_id"] == "c0ffee-1" and login["runs"] == 2

        tests_session, _ = by_title["Add tests"]
        assert tests_session["status"] == "failed" and tests_session["owner_id"] == "bob"
        assert tests_session["created_at"].startswith("2024-05-02T08:00:00")
        assert tests_session["workspace_path"] == "/home/dev/.wt/add-tests"
        only_bob = server.http.get("/api/v1/sessions", params={"user_id": "bob"}).json()
        assert [s["id"] for s in only_bob["sessions"]] == [tests_session["id"]]

        transcript = server.http.get(f"/api/v1/sessions/{login['id']}/transcript").json()
        lines = [(e["kind"], e["entry"]) for e in transcript["entries"]]
        assert [kind for kind, _ in lines] == [
            "user_message",
            "system",
            "thinking",
            "tool_call",
            "tool_call",
            "assistant_message",
            "run_end",
            "user_message",
            "assistant_message",
            "run_end",
        ]
        assert lines[0][1]["text"] == "Fix the login"
        assert lines[3][1]["status"] == "success" and lines[3][1]["command"].startswith("grep")
        assert lines[3][1]["output"] == "src/auth.py:12: redirect("
        assert lines[4][1]["status"] == "failed" and lines[4][1]["error"] == "no such file"
        assert lines[5][1]["text"] == "Fixed the redirect."
        assert lines[6][1]["outcome"] == "succeeded"
        assert lines[7][1]["text"] == "Thanks, commit"
        assert transcript["entries"][8]["timestamp"] == "2024-05-01T09:10:05.000Z"

        # The event log is gapless and ends in a final event per run.
        events = server.history(login["id"])
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert [e["event_type"] for e in events if e["is_final"]] == ["agent.complete"] * 2

        failed = server.http.get(f"/api/v1/sessions/{tests_session['id']}/transcript").json()
        assert [e["kind"] for e in failed["entries"]] == ["user_message", "error", "run_end"]
        assert failed["entries"][1]["entry"]["message"] == "rate limited"

        # Again while the server runs: nothing new.
        again = _forge_import(str(store), "--config", str(server.config_path))
        assert "imported 0 sessions" in again.stdout and "2 already imported" in again.stdout
        assert server.http.get("/api/v1/sessions").json()["total"] == 2

        # The broken log fixed, the next import brings in just that session.
        _write_log(
            store / "logs" / "broken-one.log",
            [{"timestamp": "2024-05-03T08:00:01Z", "type": "user", "content": "hello"}],
        )
        fixed = _forge_import(str(store), "--config", str(server.config_path))
        assert "imported 1 sessions" in fixed.stdout and "1 skipped" in fixed.stdout
        assert server.http.get("/api/v1/sessions").json()["total"] == 3
    finally:
        server.stop()
        server.http.close()


def test_missing_and_invalid_index(tmp_path: Path) -> None:
    config = tmp_path / "forge.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    store = tmp_path / "store"
    store.mkdir()

    missing = _forge_import(str(store), "--config", str(config))
    assert missing.returncode == 2
    assert f"{store / 'sessions.json'}: not found" in missing.stderr

    (store / "sessions.json").write_text('{"sessions": [\n  {"id": "a"},\n  {"id": }\n]}\n')
    invalid = _forge_import(str(store), "--config", str(config))
    assert invalid.returncode == 2
    assert "sessions.json: line 3, column 10: invalid JSON" in invalid.stderr

    (store / "sessions.json").write_text('{"sessions": {"id": "a"}}')
    wrong = _forge_import(str(store), "--config", str(config))
    assert wrong.returncode == 2 and "expected" in wrong.stderr
