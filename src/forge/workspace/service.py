"""Worktrees as the API sees them: list, clean up, limit, review (diff, files) and merge.

Git always runs from the repository's side. A session's worktree is read with
`--git-dir=<the repository's common dir> --work-tree=<worktree>` and a temporary index, never
through the worktree's `.git` file or its administrative directory
(`<common>/worktrees/<name>`): the agent can rewrite both, and a git directory of its making
could have git run programs on the host. Files are read through directory descriptors that
never follow a symlink, so a path cannot lead out of the worktree.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm.attributes import flag_modified

from forge.config import Settings
from forge.core.errors import Conflict, InvalidRequest, NotFound
from forge.store.db import Database
from forge.store.tables import AgentRow, RunRow, utcnow
from forge.workspace.worktrees import BRANCH_PREFIX, GitError, WorktreeManager, git_env

log = logging.getLogger(__name__)

# The unified diff text of one answer stops here (`truncated: true`).
DIFF_LIMIT_BYTES = 2 * 1024 * 1024
# File content of one answer stops here (`truncated: true`).
FILE_LIMIT_BYTES = 1024 * 1024
# Entries of one directory listing.
LISTING_LIMIT = 10_000
# Sessions in these states may have their worktrees removed by a cleanup.
FINISHED_STATUSES = ("stopped", "failed")
# Never let git run a program named by configuration while Forge reads a worktree.
SAFE_GIT = ("-c", "core.fsmonitor=", "-c", "core.hooksPath=/dev/null")
DIFF_OPTIONS = ("--no-ext-diff", "--no-textconv", "--no-color", "--ignore-submodules=all", "-M")
CLEANUP_ENDPOINT = "DELETE /api/v1/worktrees/cleanup"


# ---- results ----------------------------------------------------------------------------------


class WorktreeInfo(BaseModel):
    """One directory under the worktree base."""

    path: str
    # The agent it belongs to; None for an orphan (no agent row: left by a crash).
    session: str | None
    kind: Literal["session", "pooled", "orphan"]
    owner_id: str | None = None
    repo: str | None = None
    branch: str | None = None
    # The agent's status (None for pooled and orphaned worktrees).
    status: str | None = None
    deleted: bool = False
    size_bytes: int = Field(description="Disk usage, symlinks not followed.")
    age_seconds: float = Field(description="Since the session was created (orphan: modified).")
    idle_seconds: float | None = Field(None, description="Since the session last changed.")


class WorktreeList(BaseModel):
    worktrees: list[WorktreeInfo]
    # What counts toward `max_worktrees`: git worktrees of sessions, and orphans.
    count: int
    max_worktrees: int
    total_size_bytes: int


class RemovedWorktree(BaseModel):
    path: str
    session: str | None
    repo: str | None = None
    branch: str | None = None
    reason: Literal["stopped", "failed", "deleted", "orphan"]


class PrunedEntry(BaseModel):
    """Stale git metadata removed by `git worktree prune` (`<repo>/.git/worktrees/<name>`)."""

    repo: str
    entry: str
    reason: str


class CleanupReport(BaseModel):
    older_than_hours: float
    removed: list[RemovedWorktree] = Field(default_factory=list)
    pruned: list[PrunedEntry] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)


class FileChange(BaseModel):
    path: str
    old_path: str | None = None
    status: Literal["added", "modified", "deleted", "renamed"]
    additions: int
    deletions: int
    binary: bool


class SessionDiff(BaseModel):
    session: str
    repo: str
    base_commit: str
    branch: str | None
    head_commit: str | None = Field(description="The branch's tip.")
    includes_uncommitted: bool = Field(
        description="False once the worktree is gone: only the branch's commits are compared."
    )
    files: list[FileChange]
    additions: int
    deletions: int
    diff: str
    truncated: bool


class DirEntryInfo(BaseModel):
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int


class FileView(BaseModel):
    """A directory listing, a file's content, or a symlink (never followed)."""

    path: str
    type: Literal["dir", "file", "symlink"]
    entries: list[DirEntryInfo] | None = None
    size: int | None = None
    content: str | None = None
    encoding: Literal["utf-8", "base64"] | None = None
    binary: bool = False
    truncated: bool = False
    target: str | None = None


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str | None = Field(None, min_length=1, max_length=20_000)


class MergeResult(BaseModel):
    session: str
    base_branch: str
    branch: str
    commit: str
    previous_commit: str
    files: list[FileChange]


class PooledWorkspaces(Protocol):
    """What the warm pool tells about worktrees it holds for agents not yet stored."""

    notes_dir: Path

    def agent_ids(self) -> set[str]: ...


# ---- the service ------------------------------------------------------------------------------


class WorktreeService:
    """Housekeeping and review of agent worktrees, on the database and a `WorktreeManager`."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        manager: WorktreeManager,
        *,
        pool: PooledWorkspaces | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.manager = manager
        self.pool = pool
        self._cleanup_lock = asyncio.Lock()
        self._merge_locks: dict[str, asyncio.Lock] = {}

    # ---- listing and limits ----------------------------------------------------------------

    async def list_worktrees(self, owner_id: str | None = None) -> WorktreeList:
        """Every directory under the worktree base, with its session, size and age."""
        names, rows, reserved = await self._snapshot()
        now = utcnow()
        if owner_id is not None:
            names = [n for n in names if n in rows and rows[n].owner_id == owner_id]
        paths = [self.manager.path_for(n) for n in names]
        sizes, mtimes = await asyncio.to_thread(_usage_and_mtimes, paths)
        orphans = [n for n in names if n not in rows and n not in reserved]
        branches = await self._orphan_branches(orphans, rows) if orphans else {}
        infos = []
        for name, path, size, mtime in zip(names, paths, sizes, mtimes, strict=True):
            row = rows.get(name)
            if row is not None:
                infos.append(
                    WorktreeInfo(
                        path=str(path),
                        session=name,
                        kind="session",
                        owner_id=row.owner_id,
                        repo=row.repo,
                        branch=row.branch,
                        status=row.status,
                        deleted=row.deleted_at is not None,
                        size_bytes=size,
                        age_seconds=round((now - row.created_at).total_seconds(), 3),
                        idle_seconds=round((now - _last_change(row)).total_seconds(), 3),
                    )
                )
            else:
                repo, branch = branches.get(name, (None, None))
                infos.append(
                    WorktreeInfo(
                        path=str(path),
                        session=None,
                        kind="pooled" if name in reserved else "orphan",
                        repo=repo,
                        branch=branch,
                        size_bytes=size,
                        age_seconds=round(max(0.0, now.timestamp() - mtime), 3),
                    )
                )
        return WorktreeList(
            worktrees=infos,
            count=sum(1 for n in names if _counts(n, rows, reserved)),
            max_worktrees=self.settings.worktrees.max_worktrees,
            total_size_bytes=sum(sizes),
        )

    async def check_limit(self) -> None:
        """Raise `Conflict` when `[worktrees] max_worktrees` worktrees exist already."""
        await check_worktree_limit(self.settings, self.db, self.pool)

    # ---- cleanup ---------------------------------------------------------------------------

    async def cleanup(
        self, now: datetime | None = None, *, older_than_hours: float | None = None
    ) -> CleanupReport:
        """Prune stale git metadata, remove the worktrees of finished sessions idle for longer
        than `older_than_hours` (default `[worktrees] cleanup_hours`) and the orphans. Branches
        stay: they hold the agents' commits."""
        now = now or utcnow()
        hours = (
            self.settings.worktrees.cleanup_hours if older_than_hours is None else older_than_hours
        )
        report = CleanupReport(older_than_hours=hours)
        async with self._cleanup_lock:
            names, rows, reserved = await self._snapshot()
            repos = await self._known_repos()
            for repo in repos:
                report.pruned.extend(await _prune(repo, report.errors))
            busy = await self._agents_with_runs([n for n in names if n in rows])
            cutoff = now.timestamp() - hours * 3600
            for name in names:
                row = rows.get(name)
                if row is None or name in reserved or name in busy:
                    continue
                reason = _finished_reason(row)
                if reason is None or _last_change(row).timestamp() > cutoff:
                    continue
                if not await self._release(name, cutoff):
                    continue
                try:
                    await self.manager.remove(name, row.repo, delete_branch=False)
                except Exception as exc:
                    log.exception("removing the worktree of %s failed", name)
                    report.errors.append(f"{name}: {exc}")
                    continue
                report.removed.append(
                    RemovedWorktree(
                        path=str(self.manager.path_for(name)),
                        session=name,
                        repo=row.repo,
                        branch=row.branch,
                        reason=reason,
                    )
                )
            orphans = [n for n in names if n not in rows and n not in reserved]
            await self._remove_orphans(orphans, rows, report)
        for item in report.removed:
            log.info("cleanup removed %s (%s)", item.path, item.reason)
        return report

    async def sweep_orphans(self) -> CleanupReport:
        """Remove directories under the worktree base that no agent owns (left by a crash), and
        prune their repositories' git metadata. Never raises: failures are in `errors`."""
        report = CleanupReport(older_than_hours=0)
        try:
            async with self._cleanup_lock:
                names, rows, reserved = await self._snapshot()
                orphans = [n for n in names if n not in rows and n not in reserved]
                if orphans:
                    await self._remove_orphans(orphans, rows, report)
        except Exception as exc:
            log.exception("sweeping orphaned worktrees failed")
            report.errors.append(str(exc))
        for item in report.removed:
            log.info("removed orphaned worktree %s", item.path)
        return report

    async def _remove_orphans(
        self, orphans: list[str], rows: dict[str, AgentRow], report: CleanupReport
    ) -> None:
        if not orphans:
            return
        branches = await self._orphan_branches(orphans, rows)
        touched: set[str] = set()
        for name in orphans:
            repo, branch = branches.get(name, (None, None))
            path = self.manager.path_for(name)
            try:
                if await asyncio.to_thread(_is_real_dir, path):
                    await self.manager.remove(name, repo, delete_branch=False)
                else:
                    # A file or a symlink put there: remove the entry itself, never its target.
                    await asyncio.to_thread(_unlink_entry, path)
            except Exception as exc:
                log.exception("removing the orphaned worktree %s failed", path)
                report.errors.append(f"{path}: {exc}")
                continue
            if repo:
                touched.add(repo)
            report.removed.append(
                RemovedWorktree(
                    path=str(path), session=None, repo=repo, branch=branch, reason="orphan"
                )
            )
        for repo in sorted(touched):
            report.pruned.extend(await _prune(Path(repo), report.errors))

    async def _release(self, agent_id: str, cutoff: float) -> bool:
        """Record that the agent's workspace is going, if the agent is still eligible (it may
        have been given a message since the snapshot)."""
        async with self.db.write() as session:
            row = await session.get(AgentRow, agent_id)
            if row is None or _finished_reason(row) is None:
                return False
            if _last_change(row).timestamp() > cutoff:
                return False
            row.workspace_path = None
            # Keep the last-activity time: this bookkeeping is not activity.
            flag_modified(row, "updated_at")
        return True

    # ---- review ----------------------------------------------------------------------------

    async def diff(self, agent_id: str, owner_id: str | None = None) -> SessionDiff:
        """The session's work against its base commit: the branch's commits and, while the
        worktree exists, its uncommitted changes and untracked files."""
        row = await self._agent(agent_id, owner_id)
        repo, base = _repo_and_base(row)
        head = await _branch_tip(repo, agent_id)
        path = await self._worktree_of(row)
        if path is not None:
            async with _working_state(repo, path, head or base) as view:
                files = await _file_changes(view.args, view.env, base)
                text = await _git_out(
                    [*view.args, "diff", *DIFF_OPTIONS, base], env=view.env, limit=DIFF_LIMIT_BYTES
                )
        else:
            target = head or base
            args = ["-C", str(repo), *SAFE_GIT]
            files = await _file_changes(args, None, base, target)
            text = await _git_out(
                [*args, "diff", *DIFF_OPTIONS, base, target], limit=DIFF_LIMIT_BYTES
            )
        return SessionDiff(
            session=agent_id,
            repo=str(repo),
            base_commit=base,
            branch=row.branch or (BRANCH_PREFIX + agent_id if head else None),
            head_commit=head,
            includes_uncommitted=path is not None,
            files=files,
            additions=sum(f.additions for f in files),
            deletions=sum(f.deletions for f in files),
            diff=text.stdout[:DIFF_LIMIT_BYTES].decode(errors="replace"),
            truncated=text.truncated,
        )

    async def files(self, agent_id: str, owner_id: str | None, path: str) -> FileView:
        """A directory listing or a file's content in the session's worktree (`.git` hidden)."""
        row = await self._agent(agent_id, owner_id)
        root = await self._worktree_of(row)
        if root is None:
            raise Conflict(
                f"session {agent_id} has no workspace any more (it was cleaned up); "
                "its branch keeps its commits",
                code="no_workspace",
            )
        parts = _path_parts(path)
        return await asyncio.to_thread(_view, root, parts)

    # ---- merge -----------------------------------------------------------------------------

    async def merge(
        self, agent_id: str, owner_id: str | None = None, message: str | None = None
    ) -> MergeResult:
        """Squash the commits of the session's branch into one commit on its base branch.

        No working tree is touched: the merge is computed by `git merge-tree`, the commit made
        with `git commit-tree`, and the base branch moved with a compare-and-swap
        `git update-ref`, so a conflict or a concurrent change leaves everything as it was."""
        row = await self._agent(agent_id, owner_id)
        repo, _base = _repo_and_base(row)
        branch = BRANCH_PREFIX + agent_id
        base_branch = _branch_name(row.base_ref)
        head = await _branch_tip(repo, agent_id)
        if head is None:
            raise Conflict(f"session {agent_id} has no branch {branch}", code="no_branch")
        old = await _rev(repo, f"refs/heads/{base_branch}") if base_branch else None
        if base_branch is None or old is None:
            raise Conflict(
                f"session {agent_id} was created from {row.base_ref!r}, which is not a branch; "
                f"merge its branch yourself (git merge --squash {branch})",
                code="base_not_branch",
            )
        checked_out = await _checked_out_at(repo, base_branch)
        if checked_out is not None:
            raise Conflict(
                f"branch {base_branch} is checked out in {checked_out}; moving it would leave "
                "that checkout's files out of step. Switch that checkout to another branch (or "
                f"run `git merge --squash {branch}` there yourself)",
                code="base_checked_out",
            )
        path = await self._worktree_of(row)
        if path is not None:
            dirty = await _uncommitted(repo, path, head)
            if dirty:
                shown = ", ".join(dirty[:20]) + (" ..." if len(dirty) > 20 else "")
                raise Conflict(
                    f"session {agent_id} has uncommitted changes ({shown}); only committed "
                    "work is merged: have the agent commit (or discard) them first",
                    code="uncommitted_changes",
                )
        async with self._merge_locks.setdefault(str(repo), asyncio.Lock()):
            return await self._squash(repo, agent_id, branch, base_branch, old, head, message)

    async def _squash(
        self,
        repo: Path,
        agent_id: str,
        branch: str,
        base_branch: str,
        old: str,
        head: str,
        message: str | None,
    ) -> MergeResult:
        args = ["-C", str(repo), *SAFE_GIT]
        merged = await _run(
            [*args, "merge-tree", "--write-tree", "-z", "--name-only", "--no-messages", old, head]
        )
        fields = merged.stdout.decode(errors="replace").split("\0")
        if merged.returncode == 1:
            conflicts = sorted({f for f in fields[1:] if f})
            raise Conflict(
                f"merging {branch} into {base_branch} conflicts in: {', '.join(conflicts)}; "
                "nothing was changed. Resolve it in the session (rebase its branch on "
                f"{base_branch}) and merge again",
                code="merge_conflict",
            )
        if merged.returncode != 0:
            raise GitError(["merge-tree"], merged.returncode, merged.stderr)
        tree = fields[0].strip()
        if tree == (await _git_out([*args, "rev-parse", f"{old}^{{tree}}"])).text.strip():
            raise Conflict(
                f"{branch} has nothing that {base_branch} does not have already",
                code="nothing_to_merge",
            )
        subjects = await _git_out([*args, "log", "--format=- %s", "-n", "50", f"{old}..{head}"])
        text = message or f"forge: squash of session {agent_id}"
        if message is None and subjects.text.strip():
            text += "\n\nSquashed commits:\n" + subjects.text
        commit = (
            await _git_out(
                [*args, "commit-tree", tree, "-p", old, "-F", "-"],
                env=await _identity(repo),
                stdin=text.encode(),
            )
        ).text.strip()
        reflog = f"forge: squash of session {agent_id}"
        moved = await _run(
            [*args, "update-ref", "-m", reflog, f"refs/heads/{base_branch}", commit, old]
        )
        if moved.returncode != 0:
            raise Conflict(
                f"{base_branch} moved while the merge was made ({moved.stderr}); nothing was "
                "changed, merge again",
                code="base_moved",
            )
        files = await _file_changes(args, None, old, commit)
        log.info("squashed %s into %s as %s", branch, base_branch, commit)
        return MergeResult(
            session=agent_id,
            base_branch=base_branch,
            branch=branch,
            commit=commit,
            previous_commit=old,
            files=files,
        )

    # ---- lookups ---------------------------------------------------------------------------

    async def _snapshot(self) -> tuple[list[str], dict[str, AgentRow], set[str]]:
        """The directories under the base, the agent rows and the pool's reservations, read in
        this order: an agent's row (or the pool's note) exists before its directory does, so a
        directory seen here without either is truly an orphan."""
        names = await asyncio.to_thread(_entries, self.manager.base_path)
        reserved: set[str] = set()
        if self.pool is not None:
            reserved = self.pool.agent_ids() | await asyncio.to_thread(
                _note_ids, self.pool.notes_dir
            )
        rows = await _rows(self.db, names)
        return names, rows, reserved

    async def _known_repos(self) -> list[Path]:
        async with self.db.read() as session:
            repos = set(
                await session.scalars(select(AgentRow.repo).where(AgentRow.repo.is_not(None)))
            )
        repos |= {w.repo for w in self.settings.sandbox.warm_pool if w.repo}
        found = []
        for repo in sorted(r for r in repos if r):
            if await asyncio.to_thread(Path(repo).is_dir):
                found.append(Path(repo))
        return found

    async def _orphan_branches(
        self, orphans: list[str], rows: dict[str, AgentRow]
    ) -> dict[str, tuple[str, str | None]]:
        """Which known repository (and branch) each orphan is a worktree of, asked of the
        repositories (an orphan's own `.git` file is not to be trusted)."""
        wanted = {str(self.manager.path_for(n).resolve()): n for n in orphans}
        found: dict[str, tuple[str, str | None]] = {}
        for repo in await self._known_repos():
            listing = await _run(["-C", str(repo), *SAFE_GIT, "worktree", "list", "--porcelain"])
            for block in listing.stdout.decode(errors="replace").split("\n\n"):
                lines = block.splitlines()
                where = next((ln[9:] for ln in lines if ln.startswith("worktree ")), None)
                ref = next((ln[7:] for ln in lines if ln.startswith("branch ")), None)
                if where in wanted:
                    branch = ref.removeprefix("refs/heads/") if ref else None
                    found[wanted[where]] = (str(repo), branch)
        return found

    async def _agents_with_runs(self, agent_ids: list[str]) -> set[str]:
        if not agent_ids:
            return set()
        async with self.db.read() as session:
            return set(
                await session.scalars(
                    select(RunRow.agent_id).where(
                        RunRow.agent_id.in_(agent_ids), RunRow.status.in_(("queued", "running"))
                    )
                )
            )

    async def _agent(self, agent_id: str, owner_id: str | None) -> AgentRow:
        async with self.db.read() as session:
            row = await session.get(AgentRow, agent_id)
        if (
            row is None
            or row.deleted_at is not None
            or (owner_id is not None and row.owner_id != owner_id)
        ):
            raise NotFound(f"session {agent_id} not found", code="agent_not_found")
        return row

    async def _worktree_of(self, row: AgentRow) -> Path | None:
        """The agent's workspace directory, when it still exists (always `<base>/<id>`)."""
        if not row.workspace_path:
            return None
        path = self.manager.path_for(row.id)
        return path if await asyncio.to_thread(_is_real_dir, path) else None


async def check_worktree_limit(
    settings: Settings, db: Database, pool: PooledWorkspaces | None = None
) -> None:
    """Raise `Conflict` when `[worktrees] max_worktrees` (0: no limit) worktrees exist: git
    worktrees of sessions and orphans under the worktree base (the warm pool's are not counted:
    taking one from the pool makes no new worktree)."""
    limit = settings.worktrees.max_worktrees
    if limit <= 0:
        return
    names = await asyncio.to_thread(_entries, settings.worktree_base)
    reserved: set[str] = set()
    if pool is not None:
        reserved = pool.agent_ids() | await asyncio.to_thread(_note_ids, pool.notes_dir)
    rows = await _rows(db, names)
    count = sum(1 for n in names if _counts(n, rows, reserved))
    if count >= limit:
        raise Conflict(
            f"{count} worktrees exist and the limit ([worktrees] max_worktrees) is {limit}; "
            f"remove the worktrees of finished sessions with {CLEANUP_ENDPOINT} "
            "(or delete sessions with purge=true), or raise the limit",
            code="worktree_limit",
        )


# ---- database helpers -------------------------------------------------------------------------


async def _rows(db: Database, names: Sequence[str]) -> dict[str, AgentRow]:
    rows: dict[str, AgentRow] = {}
    async with db.read() as session:
        for start in range(0, len(names), 500):
            chunk = list(names[start : start + 500])
            for row in await session.scalars(select(AgentRow).where(AgentRow.id.in_(chunk))):
                rows[row.id] = row
    return rows


def _counts(name: str, rows: dict[str, AgentRow], reserved: set[str]) -> bool:
    row = rows.get(name)
    if row is None:
        return name not in reserved
    return row.repo is not None


def _last_change(row: AgentRow) -> datetime:
    return max(row.updated_at, row.deleted_at) if row.deleted_at else row.updated_at


def _finished_reason(row: AgentRow) -> Literal["stopped", "failed", "deleted"] | None:
    if row.deleted_at is not None:
        return "deleted"
    if row.status == "stopped":
        return "stopped"
    if row.status == "failed":
        return "failed"
    return None


def _repo_and_base(row: AgentRow) -> tuple[Path, str]:
    if not row.repo or not row.base_commit:
        raise Conflict(
            f"session {row.id} works in an empty directory, not a git repository",
            code="no_repository",
        )
    return Path(row.repo), row.base_commit


def _branch_name(base_ref: str | None) -> str | None:
    if not base_ref or base_ref == "HEAD":
        return None
    return base_ref.removeprefix("refs/heads/")


# ---- git --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Output:
    returncode: int
    stdout: bytes
    stderr: str
    truncated: bool = False

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


async def _run(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    limit: int | None = None,
) -> _Output:
    """Run git; with `limit`, stop reading (and end git) after that many bytes of output."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**git_env(), **(env or {})},
    )
    if limit is None:
        out, err = await proc.communicate(stdin)
        return _Output(proc.returncode or 0, out, err.decode(errors="replace").strip())
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.ensure_future(proc.stderr.read())
    chunks: list[bytes] = []
    size = 0
    truncated = False
    while chunk := await proc.stdout.read(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            truncated = True
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            break
    err = await errors
    returncode = await proc.wait()
    return _Output(
        0 if truncated else returncode,
        b"".join(chunks),
        err.decode(errors="replace").strip(),
        truncated,
    )


async def _git_out(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    limit: int | None = None,
) -> _Output:
    """`_run`, raising `GitError` unless git succeeded."""
    result = await _run(args, env=env, stdin=stdin, limit=limit)
    if result.returncode != 0:
        raise GitError(list(args), result.returncode, result.stderr)
    return result


async def _rev(repo: Path, ref: str) -> str | None:
    result = await _run(
        ["-C", str(repo), *SAFE_GIT, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"]
    )
    return result.text.strip() if result.returncode == 0 and result.text.strip() else None


async def _branch_tip(repo: Path, agent_id: str) -> str | None:
    return await _rev(repo, f"refs/heads/{BRANCH_PREFIX}{agent_id}")


async def _common_dir(repo: Path) -> Path:
    out = await _git_out(
        ["-C", str(repo), *SAFE_GIT, "rev-parse", "--path-format=absolute", "--git-common-dir"]
    )
    return Path(out.text.strip())


@dataclass(frozen=True)
class _View:
    """Git arguments and environment that see a worktree's files through a temporary index."""

    args: list[str]
    env: dict[str, str]


@contextlib.asynccontextmanager
async def _working_state(repo: Path, worktree: Path, commit: str) -> AsyncIterator[_View]:
    """A temporary index holding `commit` plus the worktree's untracked (not ignored) files as
    intent-to-add, so `git diff <rev>` compares `<rev>` with everything in the worktree. Uses
    the repository's common dir, not the worktree's (agent-writable) administrative dir."""
    common = await _common_dir(repo)
    scratch = await asyncio.to_thread(tempfile.mkdtemp, prefix="forge-index-")
    try:
        view = _View(
            args=[
                "-C",
                str(repo),
                *SAFE_GIT,
                "-c",
                "submodule.recurse=false",
                f"--git-dir={common}",
                f"--work-tree={worktree}",
            ],
            env={"GIT_INDEX_FILE": str(Path(scratch) / "index")},
        )
        await _git_out([*view.args, "read-tree", commit], env=view.env)
        others = await _git_out(
            [*view.args, "ls-files", "-z", "--others", "--exclude-standard"], env=view.env
        )
        # Entries ending in "/" are repositories nested in the worktree: not looked into.
        paths = [p for p in others.text.split("\0") if p and not p.endswith("/")]
        if paths:
            await _git_out(
                [
                    *view.args,
                    "add",
                    "--intent-to-add",
                    "--pathspec-from-file=-",
                    "--pathspec-file-nul",
                ],
                env=view.env,
                stdin="\0".join(paths).encode(),
            )
        yield view
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


async def _uncommitted(repo: Path, worktree: Path, head: str) -> list[str]:
    """Paths whose content in the worktree differs from the branch's tip."""
    async with _working_state(repo, worktree, head) as view:
        out = await _git_out(
            [*view.args, "diff", *DIFF_OPTIONS, "--name-only", "-z", head], env=view.env
        )
    return [p for p in out.text.split("\0") if p]


async def _file_changes(
    args: Sequence[str], env: dict[str, str] | None, base: str, target: str | None = None
) -> list[FileChange]:
    """Per-file status and line counts from `base` to `target` (None: the working tree)."""
    revs = [base] if target is None else [base, target]
    statuses = await _git_out([*args, "diff", *DIFF_OPTIONS, "--name-status", "-z", *revs], env=env)
    counts = await _git_out([*args, "diff", *DIFF_OPTIONS, "--numstat", "-z", *revs], env=env)
    return _parse_changes(statuses.text, counts.text)


_STATUS: dict[str, Literal["added", "modified", "deleted", "renamed"]] = {
    "A": "added",
    "C": "added",
    "D": "deleted",
    "M": "modified",
    "T": "modified",
    "R": "renamed",
}


def _parse_changes(name_status: str, numstat: str) -> list[FileChange]:
    """Pair `--name-status -z` and `--numstat -z` output (same order, same rename pairing)."""
    stats: dict[str, tuple[int, int, bool]] = {}
    fields = numstat.split("\0")
    i = 0
    while i < len(fields) and fields[i]:
        added, deleted, path = fields[i].split("\t", 2)
        if not path:  # a rename: old and new path follow
            path = fields[i + 2]
            i += 3
        else:
            i += 1
        binary = added == "-"
        stats[path] = (0 if binary else int(added), 0 if binary else int(deleted), binary)
    changes = []
    tokens = name_status.split("\0")
    j = 0
    while j < len(tokens) and tokens[j]:
        code = tokens[j][0]
        if code in ("R", "C"):
            old, path = tokens[j + 1], tokens[j + 2]
            j += 3
        else:
            old, path = None, tokens[j + 1]
            j += 2
        additions, deletions, binary = stats.get(path, (0, 0, False))
        changes.append(
            FileChange(
                path=path,
                old_path=old if code == "R" else None,
                status=_STATUS.get(code, "modified"),
                additions=additions,
                deletions=deletions,
                binary=binary,
            )
        )
    return changes


async def _checked_out_at(repo: Path, branch: str) -> str | None:
    """The worktree (the user's own checkout included) that has `branch` checked out."""
    listing = await _git_out(["-C", str(repo), *SAFE_GIT, "worktree", "list", "--porcelain"])
    for block in listing.text.split("\n\n"):
        lines = block.splitlines()
        if f"branch refs/heads/{branch}" in lines:
            return next((ln[9:] for ln in lines if ln.startswith("worktree ")), "a worktree")
    return None


async def _identity(repo: Path) -> dict[str, str]:
    """Forge's own name on the squash commit when the repository configures none."""
    env: dict[str, str] = {}
    for key, var_name, var_email in (
        ("author", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL"),
        ("committer", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"),
    ):
        ident = await _run(["-C", str(repo), *SAFE_GIT, "var", f"GIT_{key.upper()}_IDENT"])
        if ident.returncode != 0:
            env.update({var_name: "Forge", var_email: "forge@localhost"})
    return env


async def _prune(repo: Path, errors: list[str]) -> list[PrunedEntry]:
    result = await _run(["-C", str(repo), *SAFE_GIT, "worktree", "prune", "--verbose"])
    if result.returncode != 0:
        errors.append(f"git worktree prune in {repo}: {result.stderr}")
        return []
    pruned = []
    for line in (result.text + "\n" + result.stderr).splitlines():
        if line.startswith("Removing "):
            entry, _, reason = line.removeprefix("Removing ").partition(": ")
            pruned.append(PrunedEntry(repo=str(repo), entry=entry, reason=reason))
    return pruned


# ---- files (blocking; run in a thread) --------------------------------------------------------


def _entries(base: Path) -> list[str]:
    """Names under the worktree base (entries of any kind), sorted."""
    try:
        with os.scandir(base) as it:
            return sorted(e.name for e in it)
    except FileNotFoundError:
        return []


def _note_ids(notes_dir: Path) -> set[str]:
    return {p.stem for p in notes_dir.glob("*.json")} if notes_dir.is_dir() else set()


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _unlink_entry(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _usage_and_mtimes(paths: list[Path]) -> tuple[list[int], list[float]]:
    sizes, mtimes = [], []
    for path in paths:
        try:
            mtimes.append(path.lstat().st_mtime)
        except OSError:
            mtimes.append(0.0)
        sizes.append(_disk_usage(path))
    return sizes, mtimes


def _disk_usage(path: Path) -> int:
    """Bytes on disk under `path` (like `du`): symlinks not followed, hard links counted once."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(path)]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


def _path_parts(path: str) -> list[str]:
    """The components of a path relative to the worktree; `InvalidRequest` for one that could
    lead out, `NotFound` for `.git`."""
    if "\0" in path:
        raise InvalidRequest("path must not contain NUL characters", code="invalid_path")
    if path.startswith("/"):
        raise InvalidRequest(
            f"path {path!r} must be relative to the worktree, not absolute", code="invalid_path"
        )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidRequest(
            f"path {path!r} must stay inside the worktree ('..' is not allowed)",
            code="invalid_path",
        )
    if ".git" in parts:
        raise NotFound(f"no such file or directory: {path}", code="file_not_found")
    return parts


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _view(root: Path, parts: list[str]) -> FileView:
    """Open `parts` one directory at a time without following symlinks (the agent may swap a
    directory for a link at any moment), then list, read or describe the last one."""
    shown = "/".join(parts)
    fds = [os.open(root, _DIR_FLAGS)]
    try:
        for part in parts[:-1]:
            fds.append(_open_dir(part, fds[-1], shown))
        if not parts:
            return _listing(fds[-1], "")
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
        except FileNotFoundError as exc:
            raise NotFound(f"no such file or directory: {shown}", code="file_not_found") from exc
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=fds[-1])
            return FileView(path=shown, type="symlink", target=target, size=st.st_size)
        if stat.S_ISDIR(st.st_mode):
            fds.append(_open_dir(name, fds[-1], shown))
            return _listing(fds[-1], shown)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidRequest(f"{shown} is not a regular file", code="invalid_path")
        return _read_file(name, fds[-1], shown)
    finally:
        for fd in fds:
            os.close(fd)


def _open_dir(name: str, dir_fd: int, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError as exc:
        raise NotFound(f"no such file or directory: {shown}", code="file_not_found") from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise InvalidRequest(
                    f"path {shown!r} goes through the symlink {name!r}; symlinks are not followed",
                    code="invalid_path",
                ) from exc
            raise NotFound(f"{shown}: {name!r} is not a directory", code="file_not_found") from exc
        raise


def _listing(fd: int, shown: str) -> FileView:
    entries: list[DirEntryInfo] = []
    truncated = False
    with os.scandir(fd) as it:
        for entry in it:
            if entry.name == ".git":
                continue
            if len(entries) >= LISTING_LIMIT:
                truncated = True
                break
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            kind: Literal["file", "dir", "symlink", "other"] = (
                "dir"
                if stat.S_ISDIR(st.st_mode)
                else "symlink"
                if stat.S_ISLNK(st.st_mode)
                else "file"
                if stat.S_ISREG(st.st_mode)
                else "other"
            )
            entries.append(DirEntryInfo(name=entry.name, type=kind, size=st.st_size))
    entries.sort(key=lambda e: (e.type != "dir", e.name))
    return FileView(path=shown, type="dir", entries=entries, truncated=truncated)


def _read_file(name: str, dir_fd: int, shown: str) -> FileView:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InvalidRequest(f"{shown} is not a regular file", code="invalid_path")
        data = handle.read(FILE_LIMIT_BYTES + 1)
    truncated = len(data) > FILE_LIMIT_BYTES
    data = data[:FILE_LIMIT_BYTES]
    text = _as_text(data, truncated)
    if text is None:
        return FileView(
            path=shown,
            type="file",
            size=st.st_size,
            content=base64.b64encode(data).decode(),
            encoding="base64",
            binary=True,
            truncated=truncated,
        )
    return FileView(
        path=shown,
        type="file",
        size=st.st_size,
        content=text,
        encoding="utf-8",
        truncated=truncated,
    )


def _as_text(data: bytes, truncated: bool) -> str | None:
    """`data` as UTF-8 text, or None for binary content (a NUL byte, or not UTF-8). A cut at
    the size limit may split the last character: that much is dropped."""
    if b"\0" in data[:8192]:
        return None
    for cut in range(4 if truncated else 1):
        with contextlib.suppress(UnicodeDecodeError):
            return data[: len(data) - cut].decode("utf-8")
    return None
