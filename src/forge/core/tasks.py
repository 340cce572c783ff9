"""Tasks: `POST /tasks` makes a session (an agent) for a piece of work and queues its first
run; `GET /tasks` shows where each stands, including its place in the queue."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy import func, or_, select

from forge.core import ids
from forge.core.agents import AgentService
from forge.core.errors import InvalidRequest, NotFound
from forge.core.schemas import (
    EXECUTOR_PATTERN,
    MAX_MESSAGE_CHARS,
    NAME_PATTERN,
    VARIANT_PATTERN,
    AgentCreate,
    MessageCreate,
    check_metadata,
    check_no_control_characters,
)
from forge.store.db import Database
from forge.store.tables import AgentRow, RunRow, TaskRow

TaskStatus = Literal[
    "provisioning",
    "queued",
    "running",
    "succeeded",
    "failed",
    "interrupted",
    "timed_out",
    "error",
]


class TaskCreate(BaseModel):
    """A piece of work for a new session."""

    title: str = Field(min_length=1, max_length=256)
    prompt: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    owner_id: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Who the task belongs to; with an owner's API key, that owner (may be left "
        "out). Required otherwise.",
    )
    # The same rules as `AgentCreate`'s, which the session is made with.
    profile: str | None = Field(default=None, pattern=NAME_PATTERN)
    executor: str | None = Field(default=None, pattern=EXECUTOR_PATTERN)
    variant: str | None = Field(default=None, pattern=VARIANT_PATTERN)
    repo: str | None = Field(default=None, min_length=1, max_length=4096)
    base_branch: str | None = Field(default=None, min_length=1, max_length=256)
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first.")
    metadata: dict[str, Any] | None = Field(
        default=None, description="Free-form; the session's metadata, with `title` added."
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_metadata(value)

    @field_validator("repo", "base_branch")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        return check_no_control_characters(value)


class Task(BaseModel):
    task_id: str
    session_id: str
    request_id: str
    title: str
    owner_id: str
    priority: int
    status: TaskStatus
    # 1 = next to start; None unless queued.
    queue_position: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class TaskList(BaseModel):
    tasks: list[Task]
    total: int
    next_cursor: str | None = None


class TaskService:
    def __init__(self, db: Database, agents: AgentService) -> None:
        self.db = db
        self.agents = agents

    async def create(self, body: TaskCreate, *, owner_id: str) -> Task:
        """Make the task's session for `owner_id` (who the caller may act for) and queue it."""
        metadata = dict(body.metadata or {})
        metadata.setdefault("title", body.title)
        try:
            spec = AgentCreate(
                profile=body.profile,
                executor=body.executor,
                variant=body.variant,
                repo=body.repo,
                base_ref=body.base_branch,
                metadata=metadata,
            )
        except ValidationError as exc:
            # What `TaskCreate` let through but a session cannot take (metadata that the
            # title pushes over the limit): the caller's to fix, not a server error.
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise InvalidRequest(f"the task's session cannot be made: {problems}") from exc
        agent = await self.agents.create(spec, owner_id=owner_id)
        task_id = ids.task_id()
        accepted = await self.agents.send_message(
            agent.id,
            owner_id,
            MessageCreate(content=body.prompt, priority=body.priority, request_id=task_id),
        )
        async with self.db.write() as session:
            session.add(
                TaskRow(
                    id=task_id,
                    owner_id=owner_id,
                    title=body.title,
                    agent_id=agent.id,
                    request_id=accepted.request_id,
                    priority=body.priority,
                )
            )
        return await self.get(task_id, owner_id)

    async def get(self, task_id: str, owner_id: str | None) -> Task:
        async with self.db.read() as session:
            row = await session.get(TaskRow, task_id)
            if row is None or (owner_id is not None and row.owner_id != owner_id):
                raise NotFound(f"no task {task_id}")
            [task] = await self._tasks(session, [row])
        return task

    async def list_tasks(self, owner_id: str | None, *, limit: int, cursor: str | None) -> TaskList:
        async with self.db.read() as session:
            query = select(TaskRow)
            counting = select(func.count()).select_from(TaskRow)
            if owner_id is not None:
                query = query.where(TaskRow.owner_id == owner_id)
                counting = counting.where(TaskRow.owner_id == owner_id)
            if cursor is not None:
                query = query.where(TaskRow.id < cursor)
            rows = list(await session.scalars(query.order_by(TaskRow.id.desc()).limit(limit + 1)))
            more = len(rows) > limit
            rows = rows[:limit]
            tasks = await self._tasks(session, rows)
            total = await session.scalar(counting)
        return TaskList(
            tasks=tasks, total=int(total or 0), next_cursor=rows[-1].id if more and rows else None
        )

    async def _tasks(self, session: Any, rows: list[TaskRow]) -> list[Task]:
        """The tasks of `rows`, with their runs and agents read in one query each (the queue
        position is counted for queued ones only)."""
        agent_ids = {row.agent_id for row in rows}
        runs = {
            (run.agent_id, run.request_id): run
            for run in await session.scalars(
                select(RunRow).where(
                    RunRow.agent_id.in_(agent_ids),
                    RunRow.request_id.in_({row.request_id for row in rows}),
                )
            )
        }
        agent_status = dict(
            (
                await session.execute(
                    select(AgentRow.id, AgentRow.status).where(AgentRow.id.in_(agent_ids))
                )
            ).all()
        )
        tasks = []
        for row in rows:
            run = runs.get((row.agent_id, row.request_id))
            status: TaskStatus = run.status if run is not None else "error"
            position = None
            if run is not None and run.status == "queued":
                if agent_status.get(row.agent_id) == "provisioning":
                    status = "provisioning"
                position = 1 + int(
                    await session.scalar(
                        select(func.count())
                        .select_from(RunRow)
                        .where(
                            RunRow.status == "queued",
                            or_(
                                RunRow.priority > run.priority,
                                (RunRow.priority == run.priority)
                                & (RunRow.created_at < run.created_at),
                            ),
                        )
                    )
                    or 0
                )
            tasks.append(
                Task(
                    task_id=row.id,
                    session_id=row.agent_id,
                    request_id=row.request_id,
                    title=row.title,
                    owner_id=row.owner_id,
                    priority=row.priority,
                    status=status,
                    queue_position=position,
                    created_at=row.created_at,
                    started_at=run.started_at if run is not None else None,
                    finished_at=run.finished_at if run is not None else None,
                )
            )
        return tasks
