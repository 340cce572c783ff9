"""The event log on a real SQLite database: gapless seq, replay dedupe, outbox, run state."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import select

from forge.core.eventlog import EventBus, EventLog
from forge.core.events import EventDraft, Usage
from forge.store.db import Database
from forge.store.tables import AgentRow, DeliveryRow, EventRow, RunRow


async def _agent_with_run(db: Database, webhook: str | None = "http://example.com/hook") -> None:
    async with db.write() as s:
        s.add(
            AgentRow(
                id="ag_1",
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
        s.add(
            RunRow(
                agent_id="ag_1",
                request_id="r1",
                owner_id="o",
                prompt="hi",
                body_hash="h",
                status="running",
                priority=0,
                webhook_url=webhook,
                webhook_secret="sec",
                interrupt_requested=False,
            )
        )


def _event(seq: int = 0, request_id: str | None = "r1") -> EventDraft:
    return EventDraft(
        event_type="agent.event",
        request_id=request_id,
        runner_seq=seq,
        entry={"kind": "assistant_message", "text": f"m{seq}"},
    )


async def test_append_assigns_gapless_seq_and_writes_outbox(db: Database) -> None:
    await _agent_with_run(db)
    woken = []
    log = EventLog(db, EventBus(), on_outbox=lambda: woken.append(1))
    first = await log.append("ag_1", [_event(1), _event(2)], runner_ack=2)
    second = await log.append(
        "ag_1",
        [
            EventDraft(
                event_type="agent.complete",
                request_id="r1",
                outcome="succeeded",
                usage=Usage(input_tokens=3),
                runner_seq=3,
            )
        ],
        runner_ack=3,
    )
    assert [e.seq for e in first + second] == [1, 2, 3]
    assert [e.is_final for e in first + second] == [False, False, True]
    assert second[0].success is True and second[0].usage == Usage(input_tokens=3)
    assert woken == [1, 1]
    async with db.read() as s:
        deliveries = list(await s.scalars(select(DeliveryRow).order_by(DeliveryRow.seq)))
        run = await s.scalar(select(RunRow))
        agent = await s.get(AgentRow, "ag_1")
    assert [(d.seq, d.endpoint_url, d.secret, d.status) for d in deliveries] == [
        (i, "http://example.com/hook", "sec", "pending") for i in (1, 2, 3)
    ]
    assert run is not None and run.status == "succeeded" and run.finished_at is not None
    assert agent is not None and (agent.last_seq, agent.runner_ack) == (3, 3)
    stored = await log.read("ag_1", after=1)
    assert [e["seq"] for e in stored] == [2, 3]
    assert stored[1]["event_type"] == "agent.complete" and stored[1]["outcome"] == "succeeded"


async def test_replayed_runner_messages_are_stored_once(db: Database) -> None:
    await _agent_with_run(db)
    log = EventLog(db, EventBus())
    await log.append("ag_1", [_event(1), _event(2)], runner_ack=2)
    # After a reconnect the runner resends 2 and 3: only 3 is new.
    again = await log.append("ag_1", [_event(2), _event(3)], runner_ack=3)
    assert [e.seq for e in again] == [3]
    events = await log.read("ag_1")
    assert [e["entry"]["text"] for e in events] == ["m1", "m2", "m3"]


async def test_events_without_webhook_write_no_delivery(db: Database) -> None:
    await _agent_with_run(db, webhook=None)
    log = EventLog(db, EventBus())
    await log.append("ag_1", [_event(1), _event(0, request_id=None)])
    async with db.read() as s:
        assert list(await s.scalars(select(DeliveryRow))) == []
        bodies = [json.loads(b) for b in await s.scalars(select(EventRow.body))]
    assert {b["seq"] for b in bodies} == {1, 2}


async def test_concurrent_appends_stay_gapless(db: Database) -> None:
    await _agent_with_run(db)
    log = EventLog(db, EventBus())
    await asyncio.gather(*(log.append("ag_1", [_event(0), _event(0)]) for _ in range(20)))
    events = await log.read("ag_1", limit=1000)
    assert [e["seq"] for e in events] == list(range(1, 41))


async def test_bus_wakes_waiters() -> None:
    bus = EventBus()
    waiter = asyncio.create_task(bus.wait("ag_1", 0, timeout=5))
    await asyncio.sleep(0)
    bus.publish("ag_1", 1)
    assert await waiter is True
    assert await bus.wait("ag_1", 0, timeout=0.01) is True
    assert await bus.wait("ag_1", 1, timeout=0.01) is False
