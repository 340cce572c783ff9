"""Worktree endpoints against a real server and real git: list, cleanup, limit, diff, files,
merge. Agents run profile `writer`: the message is a shell script run in the worktree."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer, git

pytestmark = pytest.mark.integration

WRITER = """
[profiles.writer]
executor = "command"
command = "sh"
"""


def run_script(server: ForgeServer, agent_id: str, script: str) -> list[dict[str, Any]]:
    response = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": script})
    assert response.status_code == 202, response.text
    events = server.wait_final(agent_id, response.json()["request_id"], timeout=60)
    assert events[-1].get("outcome") == "succeeded", events
    return events


def worktree_names(repo: Path) -> set[str]:
    admin = repo / ".git" / "worktrees"
    return {p.name for p in admin.iterdir()} if admin.is_dir() else set()


def listed_worktrees(repo: Path) -> set[str]:
    return {
        line.removeprefix("worktree ")
        for line in git("worktree", "list", "--porcelain", cwd=repo).splitlines()
        if line.startswith("worktree ")
    }


def branch_exists(repo: Path, branch: str) -> bool:
    return bool(git("branch", "--list", branch, cwd=repo).strip())


def test_cleanup_removes_exactly_the_eligible_worktrees(
    forge_server: Any, git_repo: Path, tmp_path: Path
) -> None:
    server: ForgeServer = forge_server(WRITER)
    base = server.data_dir / "worktrees"
    deleted = server.create_agent(profile="writer", repo=str(git_repo))
    stopped_old = server.create_agent(profile="writer", repo=str(git_repo))
    stopped_recent = server.create_agent(profile="writer", repo=str(git_repo))
    active = server.create_agent(profile="writer", repo=str(git_repo))
    empty = server.create_agent(profile="writer")
    run_script(server, deleted["id"], "echo work > work.txt && git add -A && git commit -qm w")

    # Orphans: a plain directory and a real worktree of the repository, both without an agent.
    (base / "ag_orphan_dir" / "sub").mkdir(parents=True)
    (base / "ag_orphan_dir" / "sub" / "f.txt").write_text("left by a crash")
    git("worktree", "add", "-q", "-b", "ghost", str(base / "ag_ghost"), "main", cwd=git_repo)
    # Stale git metadata: a worktree whose directory is gone.
    git("worktree", "add", "-q", "--detach", str(tmp_path / "gone"), "main", cwd=git_repo)
    shutil.rmtree(tmp_path / "gone")

    listing = server.http.get("/api/v1/worktrees").json()
    by_path = {w["path"]: w for w in listing["worktrees"]}
    assert by_path[str(base / "ag_orphan_dir")]["session"] is None
    assert by_path[str(base / "ag_orphan_dir")]["kind"] == "orphan"
    assert by_path[str(base / "ag_ghost")]["branch"] == "ghost"
    info = by_path[deleted["workspace_path"]]
    assert info["session"] == deleted["id"] and info["branch"] == f"forge/{deleted['id']}"
    assert info["size_bytes"] > 0 and info["age_seconds"] >= 0 and info["status"] == "ready"
    assert listing["count"] == 6  # 4 worktrees + 2 orphans; the empty workspace is no worktree
    only_bob = server.http.get("/api/v1/worktrees", params={"user_id": "bob"}).json()
    assert only_bob["worktrees"] == []

    assert server.http.delete(f"/api/v1/agents/{deleted['id']}").status_code == 204
    stop = server.http.post(f"/api/v1/sessions/{stopped_old['id']}/stop")
    assert stop.status_code == 200, stop.text
    time.sleep(4)
    stop = server.http.post(f"/api/v1/sessions/{stopped_recent['id']}/stop")
    assert stop.status_code == 200, stop.text

    response = server.http.delete(
        "/api/v1/worktrees/cleanup", params={"older_than_hours": 3 / 3600}
    )
    assert response.status_code == 200, response.text
    report = response.json()
    removed = {(r["session"], r["path"], r["reason"]) for r in report["removed"]}
    assert removed == {
        (deleted["id"], deleted["workspace_path"], "deleted"),
        (stopped_old["id"], stopped_old["workspace_path"], "stopped"),
        (None, str(base / "ag_orphan_dir"), "orphan"),
        (None, str(base / "ag_ghost"), "orphan"),
    }, report
    assert {p["entry"] for p in report["pruned"]} == {"worktrees/gone"}, report
    assert report["errors"] == []

    for gone in (deleted, stopped_old):
        assert not Path(gone["workspace_path"]).exists()
        assert gone["id"] not in worktree_names(git_repo)
        assert gone["workspace_path"] not in listed_worktrees(git_repo)
        # The branch keeps the agent's commits.
        assert branch_exists(git_repo, f"forge/{gone['id']}")
    assert not (base / "ag_orphan_dir").exists() and not (base / "ag_ghost").exists()
    assert "ag_ghost" not in worktree_names(git_repo) and "gone" not in worktree_names(git_repo)
    for kept in (stopped_recent, active):
        assert Path(kept["workspace_path"], "hello.txt").exists()
        assert kept["id"] in worktree_names(git_repo)
        assert kept["workspace_path"] in listed_worktrees(git_repo)
    assert Path(empty["workspace_path"]).is_dir()
    after = server.http.get(f"/api/v1/agents/{stopped_old['id']}").json()
    assert after["workspace_path"] is None
    assert server.http.get(f"/api/v1/agents/{active['id']}").json()["workspace_path"]
    # The active session still works in its worktree.
    run_script(server, active["id"], "test -f hello.txt")

    # A second cleanup finds nothing more to do.
    again = server.http.delete("/api/v1/worktrees/cleanup", params={"older_than_hours": 1}).json()
    assert again["removed"] == [] and again["pruned"] == []


def test_max_worktrees_refuses_a_new_worktree_with_409(forge_server: Any, git_repo: Path) -> None:
    server: ForgeServer = forge_server(WRITER + "\n[worktrees]\nmax_worktrees = 2\n")
    first = server.create_agent(profile="writer", repo=str(git_repo))
    server.create_agent(profile="writer", repo=str(git_repo))
    response = server.http.post(
        "/api/v1/agents", json={"profile": "writer", "repo": str(git_repo), "owner_id": "alice"}
    )
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"] == "worktree_limit"
    assert "max_worktrees" in body["message"] and "2" in body["message"]
    assert "DELETE /api/v1/worktrees/cleanup" in body["message"]
    # The server keeps serving; an agent without a repository needs no worktree.
    assert server.http.get("/healthz").status_code == 200
    server.create_agent(profile="writer")

    assert server.http.delete(f"/api/v1/agents/{first['id']}").status_code == 204
    cleanup = server.http.delete("/api/v1/worktrees/cleanup", params={"older_than_hours": 0})
    assert [r["session"] for r in cleanup.json()["removed"]] == [first["id"]]
    server.create_agent(profile="writer", repo=str(git_repo))


AGENT_WORK = """set -e
echo committed > committed.txt
echo "hello world" > hello.txt
git add -A
git commit -qm "agent work"
echo more >> committed.txt
echo untracked > untracked.txt
printf 'a\\000b' > blob.bin
mkdir -p src/deep && echo nested > src/deep/n.txt
ln -s /etc link-out
"""


def test_diff_and_files_of_a_session(forge_server: Any, git_repo: Path) -> None:
    server: ForgeServer = forge_server(WRITER)
    agent = server.create_agent(profile="writer", repo=str(git_repo))
    run_script(server, agent["id"], AGENT_WORK)

    response = server.http.get(f"/api/v1/sessions/{agent['id']}/diff")
    assert response.status_code == 200, response.text
    diff = response.json()
    files = {f["path"]: f for f in diff["files"]}
    assert set(files) == {
        "committed.txt",
        "hello.txt",
        "untracked.txt",
        "blob.bin",
        "src/deep/n.txt",
        "link-out",
    }
    assert files["committed.txt"] | {} == {
        "path": "committed.txt",
        "old_path": None,
        "status": "added",
        "additions": 2,
        "deletions": 0,
        "binary": False,
    }
    assert (files["hello.txt"]["status"], files["hello.txt"]["additions"]) == ("modified", 1)
    assert files["hello.txt"]["deletions"] == 1
    assert files["untracked.txt"]["status"] == "added"
    assert files["blob.bin"]["binary"] is True
    assert diff["includes_uncommitted"] is True and diff["truncated"] is False
    assert diff["base_commit"] == agent["base_commit"]
    assert diff["head_commit"] == git("rev-parse", f"forge/{agent['id']}", cwd=git_repo).strip()
    assert "+hello world" in diff["diff"] and "+more" in diff["diff"]
    assert "untracked.txt" in diff["diff"]
    other = server.http.get(f"/api/v1/sessions/{agent['id']}/diff", params={"user_id": "bob"})
    assert other.status_code == 404

    def files_at(path: str, **params: str) -> Any:
        return server.http.get(
            f"/api/v1/sessions/{agent['id']}/files", params={"path": path, **params}
        )

    root = files_at("").json()
    assert root["type"] == "dir"
    names = {e["name"]: e["type"] for e in root["entries"]}
    assert names == {
        "committed.txt": "file",
        "hello.txt": "file",
        "untracked.txt": "file",
        "blob.bin": "file",
        "src": "dir",
        "link-out": "symlink",
    }
    assert [e["name"] for e in files_at("src/deep").json()["entries"]] == ["n.txt"]
    hello = files_at("hello.txt").json()
    assert (hello["content"], hello["encoding"], hello["binary"]) == (
        "hello world\n",
        "utf-8",
        False,
    )
    blob = files_at("blob.bin").json()
    assert blob["binary"] is True and base64.b64decode(blob["content"]) == b"a\0b"
    link = files_at("link-out").json()
    assert (link["type"], link["target"]) == ("symlink", "/etc")

    for bad in ("../..", "../../etc/passwd", "src/../../x", "/etc/passwd", "link-out/passwd"):
        response = files_at(bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"] == "invalid_path"
    assert files_at(".git").status_code == 404
    assert files_at("missing.txt").status_code == 404
    assert files_at("hello.txt", user_id="bob").status_code == 404


def test_merge_squashes_the_session_into_its_base_branch(forge_server: Any, git_repo: Path) -> None:
    server: ForgeServer = forge_server(WRITER)
    agent = server.create_agent(profile="writer", repo=str(git_repo), base_ref="main")
    run_script(
        server,
        agent["id"],
        "set -e; echo one > one.txt; git add -A; git commit -qm one;"
        " echo two > two.txt; git add -A; git commit -qm two; echo scratch > scratch.txt",
    )
    merge_url = f"/api/v1/sessions/{agent['id']}/merge"

    # main is checked out in the repository itself: moving it would desync that checkout.
    refused = server.http.post(merge_url)
    assert refused.status_code == 409 and refused.json()["error"] == "base_checked_out"
    git("checkout", "-q", "--detach", cwd=git_repo)
    refused = server.http.post(merge_url)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "uncommitted_changes"
    assert "scratch.txt" in refused.json()["message"]
    run_script(server, agent["id"], "rm scratch.txt")

    before = git("rev-parse", "main", cwd=git_repo).strip()
    response = server.http.post(merge_url, json={})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["previous_commit"] == before and result["base_branch"] == "main"
    assert git("rev-parse", "main", cwd=git_repo).strip() == result["commit"]
    # One squashed commit on top of the old main, holding both of the agent's commits.
    assert git("rev-list", "--parents", "-n", "1", "main", cwd=git_repo).split() == [
        result["commit"],
        before,
    ]
    assert git("log", "-1", "--format=%s", "main", cwd=git_repo).strip() == (
        f"forge: squash of session {agent['id']}"
    )
    assert git("show", "main:one.txt", cwd=git_repo) == "one\n"
    assert git("show", "main:two.txt", cwd=git_repo) == "two\n"
    assert {f["path"]: f["status"] for f in result["files"]} == {
        "one.txt": "added",
        "two.txt": "added",
    }

    # A session from HEAD (not a branch) cannot be merged.
    detached = server.create_agent(profile="writer", repo=str(git_repo))
    refused = server.http.post(f"/api/v1/sessions/{detached['id']}/merge")
    assert refused.status_code == 409 and refused.json()["error"] == "base_not_branch"


def test_a_conflicting_merge_changes_nothing(forge_server: Any, git_repo: Path) -> None:
    server: ForgeServer = forge_server(WRITER)
    agent = server.create_agent(profile="writer", repo=str(git_repo), base_ref="main")
    run_script(
        server,
        agent["id"],
        "set -e; echo 'agent line' > hello.txt; git commit -qam 'agent edit'",
    )
    # The base branch changes the same line after the agent branched.
    (git_repo / "hello.txt").write_text("main line\n")
    git("commit", "-qam", "main edit", cwd=git_repo)
    git("checkout", "-q", "--detach", cwd=git_repo)

    def state() -> tuple[str, ...]:
        return (
            git("rev-parse", "main", f"forge/{agent['id']}", "main^{tree}", cwd=git_repo),
            git("worktree", "list", "--porcelain", cwd=git_repo),
            " ".join(sorted(worktree_names(git_repo))),
            git("status", "--porcelain", cwd=git_repo),
        )

    before = state()
    response = server.http.post(
        f"/api/v1/sessions/{agent['id']}/merge", json={"message": "should not land"}
    )
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"] == "merge_conflict" and "hello.txt" in body["message"]
    assert state() == before
    assert "should not land" not in git("log", "--all", "--format=%s", cwd=git_repo)


def test_orphans_are_swept_when_the_server_starts(forge_server: Any, git_repo: Path) -> None:
    server: ForgeServer = forge_server(WRITER)
    agent = server.create_agent(profile="writer", repo=str(git_repo))
    server.stop()
    base = server.data_dir / "worktrees"
    (base / "ag_crashed").mkdir()
    git("worktree", "add", "-q", "-b", "crashed", str(base / "ag_crashed2"), "main", cwd=git_repo)
    server.start()
    assert not (base / "ag_crashed").exists() and not (base / "ag_crashed2").exists()
    assert "ag_crashed2" not in worktree_names(git_repo)
    assert branch_exists(git_repo, "crashed")
    assert Path(agent["workspace_path"], "hello.txt").exists()


def test_a_stopped_session_whose_worktree_was_cleaned_up_resumes_on_its_branch(
    forge_server: Any, git_repo: Path
) -> None:
    server: ForgeServer = forge_server(WRITER)
    agent = server.create_agent(profile="writer", repo=str(git_repo))
    run_script(
        server,
        agent["id"],
        "echo kept > work.txt && git add work.txt && "
        "git -c user.email=a@forge -c user.name=agent commit -qm work",
    )
    stopped = server.http.post(f"/api/v1/sessions/{agent['id']}/stop")
    assert stopped.json()["status"] == "stopped"
    cleanup = server.http.delete("/api/v1/worktrees/cleanup", params={"older_than_hours": 0})
    assert agent["id"] in {w["session"] for w in cleanup.json()["removed"]}, cleanup.text
    assert not Path(agent["workspace_path"]).exists()

    resumed = server.http.post(
        f"/api/v1/sessions/{agent['id']}/resume", json={"prompt": "cat work.txt"}
    )
    assert resumed.status_code == 202, resumed.text
    events = server.wait_final(agent["id"], resumed.json()["request_id"], timeout=60)
    assert events[-1]["outcome"] == "succeeded"
    assert any((e.get("entry") or {}).get("text") == "kept" for e in events)
    assert (Path(agent["workspace_path"]) / "work.txt").read_text() == "kept\n"
