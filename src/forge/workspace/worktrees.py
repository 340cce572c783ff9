"""Agent workspaces: a git worktree on branch `forge/<agent-id>`, or an empty directory."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from forge.core.errors import InvalidRequest, ProvisioningFailed
from forge.sandbox.processes import write_private

log = logging.getLogger(__name__)

BRANCH_PREFIX = "forge/"


class GitError(Exception):
    """Raised when a git command fails; `stderr` carries git's own explanation."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"git {' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.stderr = stderr.strip()
        self.returncode = returncode


async def git(*args: str, cwd: Path | str | None = None) -> str:
    """Run git without blocking the event loop; return its stdout, raise `GitError` on failure."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=git_env(),
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise GitError(list(args), proc.returncode or 1, err.decode(errors="replace"))
    return out.decode(errors="replace")


def git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")}
    # Never wait for a credential prompt or an editor.
    env.update(GIT_TERMINAL_PROMPT="0", GIT_EDITOR="true", GIT_OPTIONAL_LOCKS="0")
    return env


@dataclass(frozen=True)
class RepoSource:
    """A validated repository to branch from."""

    repo: Path
    base_ref: str
    base_commit: str


@dataclass(frozen=True)
class Workspace:
    """Where an agent works."""

    path: Path
    branch: str | None
    base_commit: str | None
    # The repository a worktree belongs to (None for an empty directory).
    repo: Path | None = None


@dataclass(frozen=True)
class GitMetadata:
    """What a worktree needs of its repository's git directory inside a sandbox: the common
    directory (read-only) and the parts of it a commit on the worktree's branch writes."""

    common_dir: Path
    writable: tuple[Path, ...]


class WorktreeManager:
    """Creates and removes agent workspaces under one base directory."""

    def __init__(self, base_path: Path) -> None:
        self.base_path = base_path
        # `git worktree add` on one repository takes a lock; serialise per repository.
        self._repo_locks: dict[Path, asyncio.Lock] = {}

    async def resolve(self, repo: str, base_ref: str | None) -> RepoSource:
        """Check that `repo` is a git repository and `base_ref` a commit in it (fast; for 4xx)."""
        path = Path(repo)
        if not path.is_absolute():
            raise InvalidRequest(
                f"repo must be an absolute path, got {repo!r}", code="invalid_repo"
            )
        if not await asyncio.to_thread(path.is_dir):
            raise InvalidRequest(f"repo {repo!r} is not a directory", code="invalid_repo")
        try:
            toplevel = (await git("rev-parse", "--show-toplevel", cwd=path)).strip()
        except GitError as exc:
            raise InvalidRequest(
                f"repo {repo!r} is not a git repository: {exc.stderr}", code="invalid_repo"
            ) from exc
        root = Path(toplevel)
        ref = base_ref or "HEAD"
        try:
            commit = await git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=root)
        except GitError as exc:
            hint = (
                "the repository has no commits yet"
                if ref == "HEAD"
                else "no such branch, tag or commit"
            )
            raise InvalidRequest(
                f"base_ref {ref!r} does not name a commit in {root}: {hint}",
                code="invalid_base_ref",
            ) from exc
        return RepoSource(repo=root, base_ref=ref, base_commit=commit.strip())

    def path_for(self, agent_id: str) -> Path:
        return self.base_path / agent_id

    async def create(self, agent_id: str, source: RepoSource | None) -> Workspace:
        """A new worktree on `forge/<agent_id>` from the base commit, or an empty directory."""
        path = self.path_for(agent_id)
        await asyncio.to_thread(self.base_path.mkdir, parents=True, exist_ok=True)
        if source is None:
            await asyncio.to_thread(path.mkdir, exist_ok=True)
            return Workspace(path=path, branch=None, base_commit=None)
        branch = BRANCH_PREFIX + agent_id
        if await asyncio.to_thread(path.exists) and await self._is_worktree_on(
            source.repo, path, branch
        ):
            return Workspace(
                path=path, branch=branch, base_commit=source.base_commit, repo=source.repo
            )
        async with self._lock(source.repo):
            try:
                try:
                    await git(
                        "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=source.repo
                    )
                    # The session's branch outlived its worktree (cleaned up while stopped):
                    # check it out again, with the agent's commits.
                    where = [str(path), branch]
                except GitError:
                    where = ["-b", branch, str(path), source.base_commit]
                await git("worktree", "add", "--quiet", *where, cwd=source.repo)
            except GitError as exc:
                raise ProvisioningFailed(f"could not create the worktree: {exc.stderr}") from exc
        return Workspace(path=path, branch=branch, base_commit=source.base_commit, repo=source.repo)

    async def git_metadata(self, workspace: Workspace) -> GitMetadata | None:
        """What the worktree needs of its repository's git directory inside a sandbox, found from
        the repository's side, never from the worktree (whose `.git` file the agent can rewrite
        to point anywhere). The worktree's `.git` link and its administrative files are written
        afresh, so whatever an earlier sandbox planted there cannot steer git, in the sandbox
        or on the host. None for an empty workspace."""
        if workspace.repo is None or workspace.branch is None:
            return None
        try:
            common = await git(
                "rev-parse", "--path-format=absolute", "--git-common-dir", cwd=workspace.repo
            )
        except GitError as exc:
            raise ProvisioningFailed(f"cannot read the repository's git metadata: {exc}") from exc
        return await asyncio.to_thread(
            _restore_worktree_links, Path(common.strip()), workspace.path, workspace.branch
        )

    async def remove(self, agent_id: str, repo: str | None, *, delete_branch: bool) -> None:
        """Remove the workspace (and its branch when asked). Missing pieces are not an error."""
        path = self.path_for(agent_id)
        if repo:
            repo_path = Path(repo)
            async with self._lock(repo_path):
                if await asyncio.to_thread(path.exists):
                    try:
                        await git("worktree", "remove", "--force", str(path), cwd=repo_path)
                    except GitError as exc:
                        log.warning("git worktree remove failed, deleting the directory: %s", exc)
                await asyncio.to_thread(shutil.rmtree, path, True)
                try:
                    await git("worktree", "prune", cwd=repo_path)
                    if delete_branch:
                        await git("branch", "-D", BRANCH_PREFIX + agent_id, cwd=repo_path)
                except GitError as exc:
                    log.info("cleanup of %s in %s: %s", agent_id, repo_path, exc.stderr)
        else:
            await asyncio.to_thread(shutil.rmtree, path, True)

    async def _is_worktree_on(self, repo: Path, path: Path, branch: str) -> bool:
        """Whether the repository has a worktree at `path` on `branch` (asked of the repository:
        running git inside the worktree would read what the agent may have planted there)."""
        try:
            listing = await git("worktree", "list", "--porcelain", cwd=repo)
        except GitError:
            return False
        resolved = await asyncio.to_thread(path.resolve)
        wanted = {f"worktree {resolved}", f"branch refs/heads/{branch}"}
        return any(wanted <= set(block.splitlines()) for block in listing.split("\n\n"))

    def _lock(self, repo: Path) -> asyncio.Lock:
        return self._repo_locks.setdefault(repo.resolve(), asyncio.Lock())


def _restore_worktree_links(common: Path, path: Path, branch: str) -> GitMetadata:
    """Rewrite the links between the worktree at `path` and its administrative directory
    `<common>/worktrees/<name>` (git names it after the worktree's directory), and make sure the
    branch's ref and reflog directories exist (to be mounted)."""
    own_dir = common / "worktrees" / path.name
    if not own_dir.is_dir():
        raise ProvisioningFailed(
            f"the worktree {path} has no administrative directory {own_dir} in its repository; "
            "delete the agent with purge=true and create it again"
        )
    dot_git = path / ".git"
    if dot_git.is_dir() and not dot_git.is_symlink():
        # The agent made `.git` a repository of its own: keep it aside, restore the link.
        dot_git.rename(path / f".git.replaced-{os.getpid()}")
    write_private(dot_git, f"gitdir: {own_dir}\n", mode=0o644)
    write_private(own_dir / "gitdir", f"{dot_git}\n", mode=0o644)
    write_private(own_dir / "commondir", "../..\n", mode=0o644)
    ref_dir = common / "refs" / "heads" / Path(branch).parent
    log_dir = common / "logs" / "refs" / "heads" / Path(branch).parent
    for directory in (ref_dir, log_dir):
        directory.mkdir(parents=True, exist_ok=True)
    return GitMetadata(common_dir=common, writable=(own_dir, common / "objects", ref_dir, log_dir))
