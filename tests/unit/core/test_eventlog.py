"""The event log on real databases (SQLite and PostgreSQL): gapless seq, replay dedupe, outbox,
run state."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import select

from forge.core.eventlog import EventBus, EventLog
from forge.core.events import ErrorInfo, EventDraft, Usage
from forge.store.db import Database
from forge.store.tables import AgentRow, DeliveryRow, EventRow, RunRow
from tests.support.rows import agent_with_running_run


async def _agent_with_run(db: Database, webhook: str | None = "http://example.com/hook") -> None:
    await agent_with_running_run(db, webhook_url=webhook, webhook_secret="sec")


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
    waiter = asyncio.create_task(bus.wait_for_events("ag_1", 0, timeout=5))
    await asyncio.sleep(0)
    bus.publish("ag_1", 1)
    assert (await waiter)[0] is True
    assert (await bus.wait_for_events("ag_1", 0, timeout=0.01))[0] is True
    assert (await bus.wait_for_events("ag_1", 1, timeout=0.01))[0] is False


async def test_run_state_follows_its_events(db: Database) -> None:
    await _agent_with_run(db)
    log = EventLog(db, EventBus())
    running = EventDraft(event_type="agent.status", request_id="r1", status="running", runner_seq=1)
    await log.append("ag_1", [running, _event(2)], runner_ack=2)
    async with db.read() as s:
        run = await s.scalar(select(RunRow))
    assert run is not None and run.started_at is not None and run.finished_at is None
    started_at = run.started_at

    again = EventDraft(event_type="agent.status", request_id="r1", status="running", runner_seq=3)
    error = EventDraft(
        event_type="agent.error",
        request_id="r1",
        error=ErrorInfo(code="EXECUTOR_FAILED", message="boom", recoverable=True),
        runner_seq=4,
    )
    sealed = await log.append("ag_1", [again, error], runner_ack=4)
    assert [e.is_final for e in sealed] == [False, True]
    async with db.read() as s:
        run = await s.scalar(select(RunRow))
    assert run is not None
    assert run.started_at == started_at  # the first start counts
    assert (run.status, run.outcome) == ("error", None)
    assert run.error == {"code": "EXECUTOR_FAILED", "message": "boom", "recoverable": True}
    assert run.finished_at is not None and run.finished_at >= started_at


async def test_interrupt_webhook_gets_the_events_too(db: Database) -> None:
    await _agent_with_run(db)
    async with db.write() as s:
        run = await s.scalar(select(RunRow))
        assert run is not None
        run.interrupt_webhook_url = "http://example.com/interrupt"
    woken: list[int] = []
    log = EventLog(db, EventBus(), on_outbox=lambda: woken.append(1))
    sealed = await log.append("ag_1", [_event(1), _event(2)], runner_ack=2)
    async with db.read() as s:
        deliveries = list(
            await s.scalars(select(DeliveryRow).order_by(DeliveryRow.seq, DeliveryRow.endpoint_url))
        )
    assert [(d.seq, d.endpoint_url, d.secret) for d in deliveries] == [
        (seq, url, "sec")
        for seq in (1, 2)
        for url in ("http://example.com/hook", "http://example.com/interrupt")
    ]
    assert [d.event_id for d in deliveries] == [e.event_id for e in sealed for _ in range(2)]
    assert {(d.status, d.attempts, d.agent_id, d.request_id) for d in deliveries} == {
        ("pending", 0, "ag_1", "r1")
    }
    assert woken == [1]


async def test_the_executors_session_id_is_kept_on_the_agent(db: Database) -> None:
    await _agent_with_run(db)
    log = EventLog(db, EventBus())
    first = _event(1).model_copy(update={"session_id": "s-1"})
    second = _event(2).model_copy(update={"session_id": "s-2"})
    await log.append("ag_1", [first, second, _event(3)], runner_ack=3)
    async with db.read() as s:
        agent = await s.get(AgentRow, "ag_1")
    assert agent is not None and agent.executor_session_id == "s-2"
    assert [e["session_id"] for e in await log.read("ag_1")] == ["s-1", "s-2", None]


async def test_a_batch_of_replays_only_stores_and_announces_nothing(db: Database) -> None:
    await _agent_with_run(db)
    bus = EventBus()
    woken: list[int] = []
    log = EventLog(db, bus, on_outbox=lambda: woken.append(1))
    await log.append("ag_1", [_event(1), _event(2)], runner_ack=2)
    assert bus.latest("ag_1") == 2 and woken == [1]
    assert await log.append("ag_1", [_event(1), _event(2)], runner_ack=2) == []
    assert bus.latest("ag_1") == 2 and woken == [1]
    async with db.read() as s:
        agent = await s.get(AgentRow, "ag_1")
        assert len(list(await s.scalars(select(DeliveryRow)))) == 2
    assert agent is not None and (agent.last_seq, agent.runner_ack) == (2, 2)


async def test_an_unknown_agent_gets_nothing(db: Database) -> None:
    bus = EventBus()
    log = EventLog(db, bus)
    assert await log.append("ag_missing", [_event(1)], runner_ack=1) == []
    assert bus.latest("ag_missing") is None
    assert await log.read("ag_missing") == []


async def test_a_large_batch_is_stored_in_order_with_its_deliveries(db: Database) -> None:
    await _agent_with_run(db)
    log = EventLog(db, EventBus())
    sealed = await log.append("ag_1", [_event(i) for i in range(1, 1001)], runner_ack=1000)
    assert [e.seq for e in sealed] == list(range(1, 1001))
    assert len({e.event_id for e in sealed}) == 1000
    stored = await log.read("ag_1", limit=1000)
    assert [e["entry"]["text"] for e in stored] == [f"m{i}" for i in range(1, 1001)]
    assert stored == [e.to_wire() for e in sealed]
    async with db.read() as s:
        rows = list(await s.scalars(select(EventRow).order_by(EventRow.seq)))
        deliveries = list(await s.scalars(select(DeliveryRow).order_by(DeliveryRow.seq)))
    assert [(r.seq, r.id, r.event_type, r.is_final) for r in rows] == [
        (e.seq, e.event_id, "agent.event", False) for e in sealed
    ]
    assert [(d.seq, d.event_id) for d in deliveries] == [(e.seq, e.event_id) for e in sealed]


async def test_nothing_follows_a_final_event(db: Database) -> None:
    await _agent_with_run(db)
    log = EventLog(db, EventBus())
    lost = EventDraft(
        event_type="agent.error",
        request_id="r1",
        error=ErrorInfo(code="RUNNER_LOST", message="the runner exited"),
    )
    assert [e.seq for e in await log.append("ag_1", [lost])] == [1]
    # The runner turns out to be alive after all and replays the end of the run.
    late = [
        _event(1),
        EventDraft(event_type="agent.complete", request_id="r1", outcome="succeeded", runner_seq=2),
    ]
    assert await log.append("ag_1", late, runner_ack=2) == []
    events = await log.read("ag_1")
    assert [e["event_type"] for e in events] == ["agent.error"]
    async with db.read() as s:
        agent = await s.get(AgentRow, "ag_1")
    assert agent is not None and (agent.last_seq, agent.runner_ack) == (1, 2)


async def test_the_bus_hands_caught_up_waiters_the_events_just_stored(db: Database) -> None:
    await _agent_with_run(db)
    bus = EventBus()
    log = EventLog(db, bus)
    await log.append("ag_1", [_event(1)], runner_ack=1)
    caught_up = asyncio.create_task(bus.wait_for_events("ag_1", 1, timeout=5))
    behind = asyncio.create_task(bus.wait_for_events("ag_1", 0, timeout=5))
    await asyncio.sleep(0)
    await log.append("ag_1", [_event(2), _event(3)], runner_ack=3)
    woken, events = await caught_up
    stored = await log.read_stored("ag_1", after=1)
    assert woken and list(events) == stored and [e.seq for e in events] == [2, 3]
    # Behind the log: woken at once, and told to read the log (the events would leave a gap).
    assert await behind == (True, ())
    assert await bus.wait_for_events("ag_1", 3, timeout=0.01) == (False, ())
    # Closed: every wait returns at once.
    bus.close()
    assert await bus.wait_for_events("ag_1", 3, timeout=5) == (True, ())
