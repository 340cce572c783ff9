"""The scheduler on a real SQLite database: priority, age, one run per agent, max_concurrent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from forge.core.scheduler import Scheduler
from forge.store.db import Database
from forge.store.tables import AgentRow, RunRow


async def _setup(db: Database, runs: list[tuple[str, str, int, int]], agents: list[str]) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    async with db.write() as s:
        for agent_id in agents:
            s.add(
                AgentRow(
                    id=agent_id,
                    owner_id="o",
                    profile="p",
                    executor="command",
                    status="ready",
                    metadata_={},
                    last_seq=0,
                    runner_ack=0,
                )
            )
        await s.flush()
        for agent_id, request_id, priority, age in runs:
            s.add(
                RunRow(
                    agent_id=agent_id,
                    request_id=request_id,
                    owner_id="o",
                    prompt="x",
                    body_hash="h",
                    status="queued",
                    priority=priority,
                    interrupt_requested=False,
                    created_at=base + timedelta(seconds=age),
                )
            )


async def test_priority_then_age_within_the_limit(db: Database) -> None:
    await _setup(
        db, [("a", "a-old", 0, 1), ("b", "b-high", 5, 9), ("c", "c-new", 0, 5)], ["a", "b", "c"]
    )
    started: list[str] = []

    async def dispatch(run: RunRow, agent: AgentRow) -> None:
        started.append(run.request_id)

    scheduler = Scheduler(db, max_concurrent=2, dispatch=dispatch)
    assert await scheduler.run_pass() == 2
    assert started == ["b-high", "a-old"]
    # Full: nothing more starts until a run finishes.
    assert await scheduler.run_pass() == 0
    async with db.write() as s:
        run = await s.scalar(select(RunRow).where(RunRow.request_id == "b-high"))
        assert run is not None
        run.status = "succeeded"
        agent = await s.get(AgentRow, "b")
        assert agent is not None
        agent.status = "ready"
    assert await scheduler.run_pass() == 1
    assert started == ["b-high", "a-old", "c-new"]


async def test_one_run_per_agent_in_order(db: Database) -> None:
    await _setup(db, [("a", "first", 0, 1), ("a", "second", 0, 2)], ["a"])
    started: list[str] = []

    async def dispatch(run: RunRow, agent: AgentRow) -> None:
        started.append(run.request_id)

    scheduler = Scheduler(db, max_concurrent=10, dispatch=dispatch)
    assert await scheduler.run_pass() == 1
    assert await scheduler.run_pass() == 0
    assert started == ["first"]
    async with db.read() as s:
        agent = await s.get(AgentRow, "a")
    assert agent is not None and agent.status == "running"


async def test_agents_not_ready_are_skipped(db: Database) -> None:
    await _setup(db, [("a", "r", 0, 1)], ["a"])
    async with db.write() as s:
        agent = await s.get(AgentRow, "a")
        assert agent is not None
        agent.status = "provisioning"

    async def dispatch(run: RunRow, agent: AgentRow) -> None:
        raise AssertionError("must not dispatch")

    assert await Scheduler(db, max_concurrent=1, dispatch=dispatch).run_pass() == 0
