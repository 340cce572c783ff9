"""The scheduler: takes queued runs by priority, then age, within `max_concurrent` and the
per-owner limit.

The runs table is the queue. A pass marks the chosen runs `running` (and their agents `running`)
in one transaction, then hands each to `dispatch`. An agent runs one run at a time, in order.

With several replicas, each takes only runs of the agents it holds the lease of (it supervises
their runners), and the passes of all replicas are serialized by an advisory lock, so the
limits count every replica's running runs; the queued rows are taken `FOR UPDATE SKIP LOCKED`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import func, select

from forge.core.cluster import serialize
from forge.store.db import Database
from forge.store.tables import AgentRow, RunRow, utcnow

log = logging.getLogger(__name__)

Dispatch = Callable[[RunRow, AgentRow], Awaitable[None]]


class Scheduler:
    """Starts queued runs whenever there is room; woken by `kick()` and by a slow timer."""

    def __init__(
        self,
        db: Database,
        *,
        max_concurrent: int,
        dispatch: Dispatch,
        per_owner: int = 0,
        replica_id: str | None = None,
    ) -> None:
        self._db = db
        # Only agents leased by this replica (None: every agent, for a single process).
        self._replica_id = replica_id
        self._max_concurrent = max_concurrent
        self._per_owner = per_owner
        self._dispatch = dispatch
        self._wake = asyncio.Event()
        # Held while runs are claimed and their Run messages sent; see `dispatch_lock`.
        self._pass_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def dispatch_lock(self) -> asyncio.Lock:
        """Held for a whole pass, from claiming runs to sending them: whoever holds it sees no
        run claimed but not yet sent, and no queued run claimed."""
        return self._pass_lock

    def kick(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run_pass(self) -> int:
        """Start as many queued runs as the limits allow; return how many were started."""
        async with self._pass_lock:
            chosen = await self._claim()
            for run, agent in chosen:
                try:
                    await self._dispatch(run, agent)
                except Exception:
                    log.exception("dispatch of %s/%s failed", agent.id, run.request_id)
            return len(chosen)

    async def _claim(self) -> list[tuple[RunRow, AgentRow]]:
        async with self._db.write() as session:
            await serialize(session)
            running = await session.scalar(
                select(func.count()).select_from(RunRow).where(RunRow.status == "running")
            )
            room = self._max_concurrent - int(running or 0)
            if room <= 0:
                return []
            owners_running: dict[str, int] = {}
            if self._per_owner:
                counts = await session.execute(
                    select(RunRow.owner_id, func.count())
                    .where(RunRow.status == "running")
                    .group_by(RunRow.owner_id)
                )
                owners_running = {owner: int(n) for owner, n in counts}
            query = (
                select(RunRow, AgentRow)
                .join(AgentRow, AgentRow.id == RunRow.agent_id)
                .where(
                    RunRow.status == "queued",
                    # Being ended (interrupted before it started, its session stopped).
                    RunRow.interrupt_requested.is_(False),
                    AgentRow.status == "ready",
                    AgentRow.deleted_at.is_(None),
                )
                .order_by(RunRow.priority.desc(), RunRow.created_at, RunRow.id)
                .limit(room * 8 + 64)
                .with_for_update(skip_locked=True, of=RunRow)
            )
            if self._replica_id is not None:
                query = query.where(AgentRow.lease_owner == self._replica_id)
            rows = await session.execute(query)
            chosen: list[tuple[RunRow, AgentRow]] = []
            agents_taken: set[str] = set()
            for run, agent in rows:
                if agent.id in agents_taken:
                    continue
                if self._per_owner and owners_running.get(run.owner_id, 0) >= self._per_owner:
                    continue
                agents_taken.add(agent.id)
                owners_running[run.owner_id] = owners_running.get(run.owner_id, 0) + 1
                run.status = "running"
                run.started_at = utcnow()
                agent.status = "running"
                chosen.append((run, agent))
                if len(chosen) >= room:
                    break
            return chosen

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            self._wake.clear()
            try:
                await self.run_pass()
            except Exception:
                log.exception("scheduler pass failed")
