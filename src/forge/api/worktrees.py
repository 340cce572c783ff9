"""HTTP routes for worktrees: list and clean them up, and review and merge a session's work."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request

from forge.api.auth import OwnerScope, admin_only, bearer_scheme
from forge.api.routes import AUTH_ERRORS, REQUEST_ERRORS, AgentId, platform_of
from forge.core.schemas import ErrorBody
from forge.workspace.service import (
    CleanupReport,
    FileView,
    MergeRequest,
    MergeResult,
    SessionDiff,
    WorktreeList,
    WorktreeService,
)

_errors: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    **REQUEST_ERRORS,
    **AUTH_ERRORS,
}

worktrees_router = APIRouter(
    prefix="/api/v1",
    responses=_errors,
    tags=["worktrees"],
    dependencies=[Depends(bearer_scheme)],
)


def _service(request: Request) -> WorktreeService:
    return platform_of(request).worktrees


@worktrees_router.get("/worktrees", response_model=WorktreeList)
async def list_worktrees(request: Request, user_id: OwnerScope) -> WorktreeList:
    """Every directory under the worktree base: its session (null for an orphan), branch, size
    on disk and age. With `user_id`, only that owner's sessions."""
    return await _service(request).list_worktrees(user_id)


@worktrees_router.delete(
    "/worktrees/cleanup", response_model=CleanupReport, dependencies=[Depends(admin_only)]
)
async def cleanup_worktrees(
    request: Request,
    older_than_hours: Annotated[
        float | None,
        Query(ge=0, description="Instead of `[worktrees] cleanup_hours` for this cleanup."),
    ] = None,
) -> CleanupReport:
    """Remove the worktrees of stopped, failed and deleted sessions idle for longer than
    `cleanup_hours`, and orphaned directories; prune stale git metadata. Branches are kept."""
    return await _service(request).cleanup(older_than_hours=older_than_hours)


@worktrees_router.get("/sessions/{agent_id}/diff", response_model=SessionDiff)
async def session_diff(request: Request, agent_id: AgentId, user_id: OwnerScope) -> SessionDiff:
    """The session's changes against its base commit: commits on its branch, uncommitted
    changes and untracked files, per file and as a unified diff (at most 2 MB)."""
    return await _service(request).diff(agent_id, user_id)


@worktrees_router.get("/sessions/{agent_id}/files", response_model=FileView)
async def session_files(
    request: Request,
    agent_id: AgentId,
    user_id: OwnerScope,
    path: Annotated[
        str, Query(max_length=4096, description="Relative to the worktree; empty for its top.")
    ] = "",
) -> FileView:
    """A directory listing or a file's content (UTF-8 text, or base64 with `binary: true`)."""
    return await _service(request).files(agent_id, user_id, path)


@worktrees_router.post("/sessions/{agent_id}/merge", response_model=MergeResult)
async def merge_session(
    request: Request,
    agent_id: AgentId,
    user_id: OwnerScope,
    body: Annotated[MergeRequest | None, Body()] = None,
) -> MergeResult:
    """Squash the commits of the session's branch into one commit on its base branch. 409 when
    the base is not a branch or is checked out, the worktree has uncommitted changes, or the
    merge conflicts (the message names the files); nothing is changed then."""
    message = body.message if body else None
    return await _service(request).merge(agent_id, user_id, message)
