"""Worktrees with real git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from forge.core.errors import InvalidRequest
from forge.workspace.worktrees import WorktreeManager


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    _git("init", "-q", "-b", "main", cwd=path)
    _git(
        "-c",
        "user.email=t@e",
        "-c",
        "user.name=T",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "one",
        cwd=path,
    )
    _git("tag", "v1", cwd=path)
    _git(
        "-c",
        "user.email=t@e",
        "-c",
        "user.name=T",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "two",
        cwd=path,
    )
    return path


async def test_worktree_on_agent_branch_from_base_ref(tmp_path: Path, repo: Path) -> None:
    manager = WorktreeManager(tmp_path / "wt")
    source = await manager.resolve(str(repo), "v1")
    assert source.base_commit == _git("rev-parse", "v1", cwd=repo)
    workspace = await manager.create("ag_x", source)
    assert workspace.branch == "forge/ag_x"
    assert _git("rev-parse", "--abbrev-ref", "HEAD", cwd=workspace.path) == "forge/ag_x"
    assert _git("rev-parse", "HEAD", cwd=workspace.path) == source.base_commit
    # Creating again (a restarted provisioning) reuses it.
    assert (await manager.create("ag_x", source)).path == workspace.path
    await manager.remove("ag_x", str(source.repo), delete_branch=True)
    assert not workspace.path.exists()
    assert _git("branch", "--list", "forge/*", cwd=repo) == ""


async def test_default_base_is_head_and_subdirectory_resolves_to_root(
    tmp_path: Path, repo: Path
) -> None:
    (repo / "sub").mkdir()
    source = await WorktreeManager(tmp_path / "wt").resolve(str(repo / "sub"), None)
    assert source.repo == repo and source.base_ref == "HEAD"
    assert source.base_commit == _git("rev-parse", "HEAD", cwd=repo)


async def test_empty_workspace_without_repo(tmp_path: Path) -> None:
    manager = WorktreeManager(tmp_path / "wt")
    workspace = await manager.create("ag_y", None)
    assert workspace.path.is_dir() and workspace.branch is None
    await manager.remove("ag_y", None, delete_branch=False)
    assert not workspace.path.exists()


async def test_refusals(tmp_path: Path, repo: Path) -> None:
    manager = WorktreeManager(tmp_path / "wt")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InvalidRequest, match="not a git repository"):
        await manager.resolve(str(tmp_path / "plain"), None)
    with pytest.raises(InvalidRequest, match="not a directory"):
        await manager.resolve(str(tmp_path / "nope"), None)
    with pytest.raises(InvalidRequest, match="absolute"):
        await manager.resolve("relative", None)
    with pytest.raises(InvalidRequest, match="does not name a commit"):
        await manager.resolve(str(repo), "missing-branch")
    empty = tmp_path / "empty"
    empty.mkdir()
    _git("init", "-q", cwd=empty)
    with pytest.raises(InvalidRequest, match="no commits"):
        await manager.resolve(str(empty), None)
