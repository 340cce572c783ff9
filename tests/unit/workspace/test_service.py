"""`WorktreeService` with real git and a real (SQLite) database, without a server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from forge.config import Settings
from forge.core.errors import Conflict, InvalidRequest, NotFound
from forge.store.db import Database
from forge.store.tables import AgentRow
from forge.workspace.service import WorktreeService, _parse_changes
from forge.workspace.worktrees import WorktreeManager


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@e", "-c", "user.name=T", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    _git("init", "-q", "-b", "main", cwd=path)
    (path / "a.txt").write_text("one\ntwo\nthree\n")
    _git("add", ".", cwd=path)
    _git("commit", "-qm", "init", cwd=path)
    _git("checkout", "-q", "--detach", cwd=path)
    return path


async def _session(
    db: Database, manager: WorktreeManager, repo: Path, agent_id: str = "ag_t"
) -> Path:
    source = await manager.resolve(str(repo), "main")
    workspace = await manager.create(agent_id, source)
    async with db.write() as session:
        session.add(
            AgentRow(
                id=agent_id,
                owner_id="alice",
                profile="default",
                executor="command",
                status="stopped",
                repo=str(source.repo),
                base_ref="main",
                base_commit=source.base_commit,
                branch=workspace.branch,
                workspace_path=str(workspace.path),
                metadata_={},
                last_seq=0,
                runner_ack=0,
            )
        )
    return workspace.path


@pytest.fixture
def service(tmp_path: Path, db: Database) -> WorktreeService:
    settings = Settings(data_dir=tmp_path / "data")
    return WorktreeService(settings, db, WorktreeManager(settings.worktree_base))


async def test_diff_sees_renames_and_untracked_files(
    service: WorktreeService, db: Database, repo: Path
) -> None:
    path = await _session(db, service.manager, repo)
    _git("mv", "a.txt", "b.txt", cwd=path)
    (path / "new.txt").write_text("new\n")
    diff = await service.diff("ag_t", "alice")
    files = {f.path: f for f in diff.files}
    assert files["b.txt"].status == "renamed" and files["b.txt"].old_path == "a.txt"
    assert files["new.txt"].status == "added" and files["new.txt"].additions == 1
    with pytest.raises(NotFound):
        await service.diff("ag_t", "bob")


async def test_files_never_follow_symlinks_or_open_fifos(
    service: WorktreeService, db: Database, repo: Path, tmp_path: Path
) -> None:
    path = await _session(db, service.manager, repo)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (path / "dir-link").symlink_to(outside)
    os.mkfifo(path / "pipe")
    with pytest.raises(InvalidRequest, match="symlink"):
        await service.files("ag_t", None, "dir-link/secret")
    with pytest.raises(InvalidRequest, match="not a regular file"):
        await service.files("ag_t", None, "pipe")
    view = await service.files("ag_t", None, "dir-link")
    assert view.type == "symlink" and view.target == str(outside)
    for bad in ("..", "a/../../b", "/etc"):
        with pytest.raises(InvalidRequest):
            await service.files("ag_t", None, bad)


async def test_merge_refuses_a_conflict_and_leaves_the_refs(
    service: WorktreeService, db: Database, repo: Path
) -> None:
    path = await _session(db, service.manager, repo)
    (path / "a.txt").write_text("one\nagent\nthree\n")
    _git("commit", "-qam", "agent", cwd=path)
    _git("checkout", "-q", "main", cwd=repo)
    (repo / "a.txt").write_text("one\nmain\nthree\n")
    _git("commit", "-qam", "main", cwd=repo)
    _git("checkout", "-q", "--detach", cwd=repo)
    refs = _git("rev-parse", "main", "forge/ag_t", cwd=repo)
    with pytest.raises(Conflict, match=r"conflicts in: a\.txt") as caught:
        await service.merge("ag_t", None)
    assert caught.value.code == "merge_conflict"
    assert _git("rev-parse", "main", "forge/ag_t", cwd=repo) == refs


def test_parse_changes_pairs_statuses_and_counts() -> None:
    name_status = "R087\0old.txt\0new.txt\0M\0m.txt\0A\0bin\0"
    numstat = "1\t1\t\0old.txt\0new.txt\0" + "3\t2\tm.txt\0" + "-\t-\tbin\0"
    changes = _parse_changes(name_status, numstat)
    assert [
        (c.path, c.old_path, c.status, c.additions, c.deletions, c.binary) for c in changes
    ] == [
        ("new.txt", "old.txt", "renamed", 1, 1, False),
        ("m.txt", None, "modified", 3, 2, False),
        ("bin", None, "added", 0, 0, True),
    ]


async def test_cleanup_keeps_the_branch_and_the_last_activity_time(
    service: WorktreeService, db: Database, repo: Path
) -> None:
    path = await _session(db, service.manager, repo)
    async with db.read() as session:
        before = await session.get(AgentRow, "ag_t")
    assert before is not None
    report = await service.cleanup(older_than_hours=0)
    assert [(r.session, r.reason) for r in report.removed] == [("ag_t", "stopped")]
    assert not path.exists()
    assert _git("branch", "--list", "forge/ag_t", cwd=repo)
    async with db.read() as session:
        after = await session.get(AgentRow, "ag_t")
    assert after is not None and after.workspace_path is None
    assert after.updated_at == before.updated_at
