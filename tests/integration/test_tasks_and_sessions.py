"""Tasks and the session lifecycle: the priority queue within `max_concurrent`, run timeouts,
stop, idle stop and resume."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer, git, host_pid, runner_pids, wait_for
from tests.support.model_server import Reply, Script, ScriptedModelServer

pytestmark = pytest.mark.integration

QUEUE = """
[sessions]
max_concurrent = 3

[profiles.blocker]
executor = "command"
command = "while [ ! -f release ]; do sleep 0.05; done; echo released"

[profiles.work]
executor = "command"
command = "sleep 0.3; echo done"
"""


def task(server: ForgeServer, **body: Any) -> dict[str, Any]:
    body.setdefault("owner_id", "alice")
    response = server.http.post("/api/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def tasks(server: ForgeServer) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = server.http.get("/api/v1/tasks", params={"limit": 100}).json()[
        "tasks"
    ]
    return listed


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_ten_tasks_run_by_priority_never_more_than_three_at_once(forge_server: Any) -> None:
    # QUEUE has its own [sessions] table: the server's test defaults are replaced by it.
    server: ForgeServer = forge_server(QUEUE.replace("[sessions]\n", ""))
    blockers = [
        task(server, title=f"blocker {i}", prompt="wait", profile="blocker") for i in range(3)
    ]
    wait_for(lambda: sum(t["status"] == "running" for t in tasks(server)) == 3, timeout=60)

    priorities = [0, 5, -1, 5, 10, 0, 3, -1, 10, 7]
    work = [
        task(server, title=f"work {i}", prompt="go", profile="work", priority=p)
        for i, p in enumerate(priorities)
    ]
    # All ten wait with their agents ready (not provisioning) before any slot frees.
    wait_for(lambda: sum(t["status"] == "queued" for t in tasks(server)) == 10, timeout=90)
    positions = {
        t["task_id"]: t["queue_position"] for t in tasks(server) if t["status"] == "queued"
    }
    expected = sorted(range(10), key=lambda i: (-priorities[i], i))
    assert [positions[work[i]["task_id"]] for i in expected] == list(range(1, 11))

    for blocker in blockers:
        workspace = server.http.get(f"/api/v1/sessions/{blocker['session_id']}").json()
        Path(workspace["workspace_path"], "release").write_text("go")
    wait_for(lambda: all(t["status"] == "succeeded" for t in tasks(server)), timeout=120)

    done = {t["task_id"]: t for t in tasks(server)}
    started = sorted(work, key=lambda w: moment(done[w["task_id"]]["started_at"]))
    assert [w["title"] for w in started] == [f"work {i}" for i in expected]
    intervals = [(moment(t["started_at"]), moment(t["finished_at"])) for t in done.values()]
    for start, _ in intervals:
        running = sum(1 for s, f in intervals if s <= start < f)
        assert running <= 3, f"{running} runs at once at {start}"


def test_a_run_past_its_timeout_ends_timed_out_with_its_processes_gone(forge_server: Any) -> None:
    server: ForgeServer = forge_server(
        'timeout_seconds = 2\n\n[profiles.slow]\nexecutor = "command"\n'
        'command = "sleep 300 & echo $! > child; echo $$ > shell; echo started; wait"\n'
    )
    created = task(server, title="slow", prompt="go", profile="slow")
    agent_id = created["session_id"]
    workspace = Path(server.http.get(f"/api/v1/sessions/{agent_id}").json()["workspace_path"])
    wait_for(lambda: (workspace / "child").exists() and (workspace / "shell").exists(), timeout=30)
    pids = [host_pid(workspace, int((workspace / name).read_text())) for name in ("child", "shell")]
    events = server.wait_final(agent_id, created["request_id"], timeout=30)
    final = events[-1]
    assert (final["event_type"], final["outcome"]) == ("agent.complete", "timed_out"), final
    assert "timed out after 2 s" in final["message"]
    for pid in pids:
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), timeout=10)
    assert server.http.get(f"/api/v1/tasks/{created['task_id']}").json()["status"] == "timed_out"


def test_stop_ends_the_work_keeps_the_workspace_and_resume_starts_again(
    forge_server: Any, git_repo: Path
) -> None:
    server: ForgeServer = forge_server(QUEUE.replace("[sessions]\nmax_concurrent = 3\n", ""))
    created = task(server, title="blocked", prompt="wait", profile="blocker", repo=str(git_repo))
    agent_id = created["session_id"]
    wait_for(
        lambda: server.http.get(f"/api/v1/tasks/{created['task_id']}").json()["status"] == "running"
    )
    queued = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "later"})
    workspace = Path(server.http.get(f"/api/v1/sessions/{agent_id}").json()["workspace_path"])
    (workspace / "notes.txt").write_text("kept")

    stopped = server.http.post(f"/api/v1/sessions/{agent_id}/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["status"] == "stopped"
    assert runner_pids(agent_id) == []
    history = server.history(agent_id)
    finals = {e["request_id"]: e for e in history if e["is_final"]}
    assert finals[created["request_id"]]["outcome"] == "interrupted"
    assert finals[queued.json()["request_id"]]["error"]["code"] == "SESSION_STOPPED"
    assert (workspace / "notes.txt").read_text() == "kept"

    (workspace / "release").write_text("go")
    resumed = server.http.post(f"/api/v1/sessions/{agent_id}/resume", json={"prompt": "again"})
    assert resumed.status_code == 202, resumed.text
    events = server.wait_final(agent_id, resumed.json()["request_id"], timeout=60)
    assert events[-1]["outcome"] == "succeeded"
    session = server.http.get(f"/api/v1/sessions/{agent_id}").json()
    assert session["workspace_path"] == str(workspace) and session["status"] == "idle"


def test_resume_after_an_idle_stop_continues_the_executor_session_in_the_same_worktree(
    forge_server: Any, git_repo: Path
) -> None:
    script = Script([Reply(text="Noted: kiwi."), Reply(text="The word was kiwi.")])
    with ScriptedModelServer(script) as model:
        server: ForgeServer = forge_server(
            f"""idle_stop_seconds = 1

[profiles.builtin]
executor = "forge"
model = "qwen3-coder"
env = {{ OPENAI_BASE_URL = "{model.url}/v1", OPENAI_API_KEY = "test-key" }}
"""
        )
        created = task(
            server,
            title="remember",
            prompt="Remember the word kiwi.",
            profile="builtin",
            repo=str(git_repo),
        )
        agent_id = created["session_id"]
        first = server.wait_final(agent_id, created["request_id"], timeout=60)
        assert first[-1].get("outcome") == "succeeded", first[-1]
        conversation = first[-1]["session_id"]
        assert conversation
        [runner_before] = runner_pids(agent_id)
        workspace = server.http.get(f"/api/v1/sessions/{agent_id}").json()["workspace_path"]

        # Nothing to do for a second: the session is stopped, its runner gone, workspace kept.
        wait_for(
            lambda: server.http.get(f"/api/v1/sessions/{agent_id}").json()["status"] == "stopped",
            timeout=30,
        )
        wait_for(lambda: runner_pids(agent_id) == [], timeout=10)
        assert Path(workspace).is_dir()

        resumed = server.http.post(
            f"/api/v1/sessions/{agent_id}/resume", json={"prompt": "Which word?"}
        )
        assert resumed.status_code == 202, resumed.text
        second = server.wait_final(agent_id, resumed.json()["request_id"], timeout=60)
        assert second[-1].get("outcome") == "succeeded", second[-1].get("error")
        assert second[-1]["session_id"] == conversation
        [runner_after] = runner_pids(agent_id)
        assert runner_after != runner_before
        session = server.http.get(f"/api/v1/sessions/{agent_id}").json()
        assert session["workspace_path"] == workspace
        # The model saw the earlier turn: the executor continued its conversation.
        messages = json.dumps(model.model_requests()[-1].body["messages"])
        assert "Remember the word kiwi." in messages and "Noted: kiwi." in messages


def test_a_setup_script_runs_in_the_sandbox_before_the_first_message(
    forge_server: Any, git_repo: Path
) -> None:
    (git_repo / ".forge").mkdir()
    (git_repo / ".forge" / "setup.sh").write_text("echo project > .project-setup\n")
    git("add", ".forge/setup.sh", cwd=git_repo)
    git("commit", "-qm", "setup", cwd=git_repo)
    server: ForgeServer = forge_server(
        '[profiles.shell]\nexecutor = "command"\ncommand = "sh"\n\n'
        '[profiles.prepared]\nexecutor = "command"\ncommand = "sh"\n'
        'setup_script = "echo profile > .profile-setup; echo preparing"\n'
    )
    # The profile's setup wins; a project's .forge/setup.sh runs when the profile has none.
    for profile, marker, text in (
        ("prepared", ".profile-setup", "profile"),
        ("shell", ".project-setup", "project"),
    ):
        created = task(
            server, title=profile, prompt=f"cat {marker}", profile=profile, repo=str(git_repo)
        )
        agent_id = created["session_id"]
        events = server.wait_final(agent_id, created["request_id"], timeout=60)
        assert events[-1].get("outcome") == "succeeded", events[-1]
        assert any((e.get("entry") or {}).get("text") == text for e in events)
        history = server.history(agent_id)
        setup = [e for e in history if e["request_id"] == f"setup_{agent_id}"]
        assert setup and setup[-1]["outcome"] == "succeeded"
        assert history.index(setup[-1]) < history.index(events[0])
        transcript = server.http.get(f"/api/v1/sessions/{agent_id}/transcript").json()
        assert transcript["entries"][0]["kind"] == "setup"
    # Without a repository or a setup, the first run is the message.
    plain = task(server, title="plain", prompt="echo hi", profile="shell")
    server.wait_final(plain["session_id"], plain["request_id"], timeout=60)
    assert not [
        e for e in server.history(plain["session_id"]) if e["request_id"].startswith("setup_")
    ]


def test_one_owner_cannot_take_more_than_its_share_of_the_slots(forge_server: Any) -> None:
    server: ForgeServer = forge_server(
        "max_concurrent = 4\nmax_concurrent_per_owner = 1\n"
        + QUEUE.replace("[sessions]\nmax_concurrent = 3\n", "")
    )
    mine = [task(server, title=f"a{i}", prompt="wait", profile="blocker") for i in range(3)]
    theirs = task(server, title="b", prompt="wait", profile="blocker", owner_id="bob")

    def running(owner: str) -> int:
        listed = server.http.get("/api/v1/tasks", params={"user_id": owner}).json()["tasks"]
        return sum(t["status"] == "running" for t in listed)

    # Slots are free (4), but alice gets one; bob's task is not held up behind hers.
    wait_for(lambda: running("alice") == 1 and running("bob") == 1, timeout=60)
    wait_for(
        lambda: all(
            server.http.get(f"/api/v1/tasks/{t['task_id']}").json()["status"] == "queued"
            for t in mine
            if server.http.get(f"/api/v1/tasks/{t['task_id']}").json()["status"] != "running"
        ),
        timeout=30,
    )
    assert running("alice") == 1
    # When hers ends, her next one starts.
    first = next(
        t
        for t in mine
        if server.http.get(f"/api/v1/tasks/{t['task_id']}").json()["status"] == "running"
    )
    workspace = server.http.get(f"/api/v1/sessions/{first['session_id']}").json()["workspace_path"]
    Path(workspace, "release").write_text("go")
    wait_for(
        lambda: (
            server.http.get(f"/api/v1/tasks/{first['task_id']}").json()["status"] == "succeeded"
            and running("alice") == 1
        ),
        timeout=30,
    )
    assert server.http.get(f"/api/v1/tasks/{theirs['task_id']}").json()["status"] == "running"
