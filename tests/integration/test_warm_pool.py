"""The warm pool: agents created from sandboxes started ahead of time."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer, git, runner_pids, wait_for

pytestmark = pytest.mark.integration


def pool_config(repo: Path, size: int = 2) -> str:
    return f"""
[[sandbox.warm_pool]]
profile = "default"
size = {size}
repo = "{repo}"

[[sandbox.warm_pool]]
profile = "default"
size = 1
"""


def pool_ready(server: ForgeServer, *sizes: int) -> bool:
    """Whether the pool entries hold `sizes` ready sandboxes (in configuration order)."""
    counts = server.http.get("/health").json()["sandbox"]["warm_pool"]
    return list(counts.values()) == list(sizes)


def pooled_ids(server: ForgeServer) -> set[str]:
    """Agent ids of the runners started for the pool (their agents do not exist yet)."""
    notes = server.data_dir / "runners" / "pool"
    return {path.stem for path in notes.glob("*.json")} if notes.is_dir() else set()


def test_created_agents_take_pooled_sandboxes_and_the_pool_refills(
    forge_server: Any, git_repo: Path
) -> None:
    server: ForgeServer = forge_server(pool_config(git_repo))
    wait_for(lambda: pool_ready(server, 2, 1), timeout=30)
    waiting = pooled_ids(server)
    assert len(waiting) == 3 and all(runner_pids(agent_id) for agent_id in waiting)

    agent = server.create_agent(repo=str(git_repo))
    assert agent["id"] in waiting, "the agent did not take a pooled sandbox"
    assert agent["branch"] == f"forge/{agent['id']}"
    head = git("rev-parse", "HEAD", cwd=git_repo).strip()
    assert agent["base_commit"] == head
    assert git("rev-parse", "HEAD", cwd=Path(agent["workspace_path"])).strip() == head
    # Its runner is the one started for the pool: same process, no new start.
    assert len(runner_pids(agent["id"])) == 1

    empty = server.create_agent()
    assert empty["id"] in waiting and empty["workspace_path"]

    for created in (agent, empty):
        response = server.http.post(
            f"/api/v1/agents/{created['id']}/messages", json={"content": "from the pool"}
        )
        events = server.wait_final(created["id"], response.json()["request_id"])
        assert events[-1]["outcome"] == "succeeded"
        assert any((e.get("entry") or {}).get("text") == "from the pool" for e in events)

    # The pool starts replacements for what was taken.
    wait_for(lambda: pool_ready(server, 2, 1), timeout=30)
    assert pooled_ids(server) >= waiting - {agent["id"], empty["id"]}
    assert not pooled_ids(server) & {agent["id"], empty["id"]}


def test_a_pooled_worktree_of_an_older_commit_is_not_handed_out(
    forge_server: Any, git_repo: Path
) -> None:
    server: ForgeServer = forge_server(pool_config(git_repo, size=1))
    wait_for(lambda: pool_ready(server, 1, 1), timeout=30)
    # The repository entry's sandbox (the one with a branch; the other has an empty workspace).
    [stale] = [
        a for a in pooled_ids(server) if git("branch", "--list", f"forge/{a}", cwd=git_repo).strip()
    ]
    (git_repo / "new.txt").write_text("new\n")
    git("add", "new.txt", cwd=git_repo)
    git("commit", "-qm", "new", cwd=git_repo)

    agent = server.create_agent(repo=str(git_repo))
    assert agent["base_commit"] == git("rev-parse", "HEAD", cwd=git_repo).strip()
    assert (Path(agent["workspace_path"]) / "new.txt").exists()
    # The stale sandbox was destroyed (runner, worktree and branch), not handed out.
    assert agent["id"] != stale
    wait_for(lambda: not runner_pids(stale), timeout=20)
    wait_for(lambda: not git("branch", "--list", f"forge/{stale}", cwd=git_repo).strip())
    # A fresh one of the new commit takes its place.
    wait_for(lambda: pool_ready(server, 1, 1), timeout=30)


def test_pooled_sandboxes_left_by_a_killed_platform_are_destroyed_at_start(
    forge_server: Any, git_repo: Path
) -> None:
    server: ForgeServer = forge_server(pool_config(git_repo, size=1))
    wait_for(
        lambda: len(pooled_ids(server)) == 2 and all(runner_pids(a) for a in pooled_ids(server)),
        timeout=30,
    )
    before = pooled_ids(server)
    server.stop(signal.SIGKILL)
    assert all(runner_pids(a) for a in before), "runners outlive the platform"

    server.start()
    wait_for(lambda: not any(runner_pids(a) for a in before), timeout=30)
    for agent_id in before:
        assert not git("branch", "--list", f"forge/{agent_id}", cwd=git_repo).strip()
    wait_for(lambda: pool_ready(server, 1, 1), timeout=30)
    assert not pooled_ids(server) & before

    server.stop()  # a clean stop destroys what is pooled
    assert not pooled_ids(server)
    assert not git("branch", "--list", "forge/*", cwd=git_repo).strip()
