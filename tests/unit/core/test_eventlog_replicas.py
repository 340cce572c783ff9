"""The event log shared by replicas: several processes appending to one agent on PostgreSQL.

Each replica is its own `Database` (own engine, own connections) and `EventLog`, as in separate
processes; nothing in the process serialises them, only the database does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text, update

from forge.core.eventlog import EventBus, EventLog
from forge.core.events import EventDraft
from forge.store.db import Database
from forge.store.tables import RunRow, utcnow
from tests.support.rows import agent_with_running_run


def _event(request_id: str = "r1") -> EventDraft:
    return EventDraft(
        event_type="agent.event",
        request_id=request_id,
        entry={"kind": "assistant_message", "text": "m"},
    )


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[EventLog, EventLog]]:
    first, second = Database(postgres_url), Database(postgres_url)
    await agent_with_running_run(first)
    try:
        yield EventLog(first, EventBus()), EventLog(second, EventBus())
    finally:
        await first.close()
        await second.close()


async def test_two_replicas_appending_to_one_agent_get_seq_without_duplicates_or_gaps(
    replicas: tuple[EventLog, EventLog],
) -> None:
    batches, size = 40, 3

    async def appender(log: EventLog) -> list[int]:
        seqs = []
        for _ in range(batches):
            seqs += [e.seq for e in await log.append("ag_1", [_event()] * size)]
        return seqs

    first, second = replicas
    # Several appenders in each replica, so each one also appends concurrently with itself.
    results = await asyncio.gather(*(appender(log) for log in (first, second) for _ in range(3)))
    total = 6 * batches * size
    assert sorted(seq for seqs in results for seq in seqs) == list(range(1, total + 1))
    for seqs in results:
        assert seqs == sorted(seqs)
    stored = await first.read("ag_1", limit=total + 10)
    assert [e["seq"] for e in stored] == list(range(1, total + 1))
    async with first.db.read() as s:
        deliveries = await s.execute(text("SELECT count(*), count(DISTINCT seq) FROM deliveries"))
        assert tuple(deliveries.one()) == (total, total)


async def test_nothing_follows_a_final_event_stored_by_another_replica(
    replicas: tuple[EventLog, EventLog],
) -> None:
    first, second = replicas
    # The other replica is in the middle of appending the run's final event: it holds the agent.
    async with first.db.write() as s:
        await s.execute(text("SELECT last_seq FROM agents WHERE id = 'ag_1' FOR UPDATE"))
        await s.execute(
            update(RunRow).where(RunRow.request_id == "r1").values(finished_at=utcnow())
        )
        late = asyncio.create_task(second.append("ag_1", [_event()]))
        await _until_waiting_for_a_lock(first.db)
    # Once it commits, the waiting append must see the run as finished.
    assert await late == []
    assert await first.read("ag_1") == []


async def _until_waiting_for_a_lock(db: Database) -> None:
    async with asyncio.timeout(10):
        while True:
            async with db.read() as s:
                waiting = await s.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            if waiting:
                return
            await asyncio.sleep(0.01)
