"""The deliveries service on a real SQLite database: pages, filters, owners, redelivery."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from forge.core.deliveries import DeliveryService
from forge.core.errors import NotFound
from forge.store.db import Database
from forge.store.tables import AgentRow, DeliveryRow, EventRow, WebhookEndpointRow

HOOK = "https://example.com/hook"
AUDIT = "https://audit.example.com/hook"


async def _agent_with_deliveries(db: Database, events: int) -> None:
    """ag_1 (owner alice) with `events` events, each delivered to HOOK and AUDIT."""
    async with db.write() as session:
        session.add(
            AgentRow(id="ag_1", owner_id="alice", profile="p", executor="command", status="ready")
        )
        await session.flush()
        for seq in range(1, events + 1):
            session.add(
                EventRow(id=f"evt_{seq:03}", agent_id="ag_1", seq=seq, event_type="e", body="{}")
            )
        await session.flush()
        for seq in range(1, events + 1):
            for n, url in enumerate((HOOK, AUDIT)):
                session.add(
                    DeliveryRow(
                        id=f"dlv_{seq:03}_{n}",
                        event_id=f"evt_{seq:03}",
                        agent_id="ag_1",
                        request_id="req_1",
                        seq=seq,
                        endpoint_url=url,
                        secret="s3cret",
                        status="delivered" if seq % 2 else "pending",
                        attempts=1 if seq % 2 else 0,
                        next_attempt_at=time.time() - 5,
                    )
                )


def _service(db: Database, changed: list[str] | None = None) -> DeliveryService:
    sink = changed if changed is not None else []
    return DeliveryService(db, endpoint_changed=sink.append)


async def test_pages_never_split_the_deliveries_of_one_event(db: Database) -> None:
    await _agent_with_deliveries(db, 5)
    service = _service(db)
    seen: list[tuple[int, str]] = []
    after, pages = 0, 0
    while True:
        page = await service.list_deliveries("ag_1", "alice", status=None, after=after, limit=3)
        seen += [(d.seq, d.endpoint_url) for d in page.deliveries]
        pages += 1
        after = page.next_after
        if not page.has_more:
            break
    assert seen == [(seq, url) for seq in range(1, 6) for url in (HOOK, AUDIT)]
    assert pages == 3  # 4 + 4 + 2: each page ends at the end of an event
    assert after == 5


async def test_items_show_the_endpoint_state_and_never_the_secret(db: Database) -> None:
    await _agent_with_deliveries(db, 2)
    paused_until = time.time() + 60
    async with db.write() as session:
        session.add(
            WebhookEndpointRow(
                url=HOOK,
                status="disabled",
                disabled_reason="the endpoint answered HTTP 410 Gone",
                disabled_at=datetime.now(UTC),
                consecutive_failures=0,
            )
        )
        session.add(
            WebhookEndpointRow(url=AUDIT, consecutive_failures=5, paused_until=paused_until)
        )
    page = await _service(db).list_deliveries("ag_1", None, status="pending", after=0, limit=100)
    assert [(d.seq, d.endpoint_url) for d in page.deliveries] == [(2, HOOK), (2, AUDIT)]
    held, paused = page.deliveries
    assert held.endpoint_status == "disabled"
    assert held.endpoint_disabled_reason == "the endpoint answered HTTP 410 Gone"
    assert held.next_attempt_at is None  # not tried until the endpoint is enabled again
    assert paused.endpoint_status == "paused" and paused.endpoint_disabled_reason is None
    assert paused.next_attempt_at is not None
    assert paused.next_attempt_at.timestamp() == pytest.approx(paused_until)
    assert "s3cret" not in page.model_dump_json()

    delivered = await _service(db).list_deliveries(
        "ag_1", None, status="delivered", after=0, limit=100
    )
    assert {d.seq for d in delivered.deliveries} == {1}
    assert all(d.next_attempt_at is None for d in delivered.deliveries)


async def test_unknown_agents_and_other_owners_are_not_found(db: Database) -> None:
    await _agent_with_deliveries(db, 1)
    service = _service(db)
    with pytest.raises(NotFound):
        await service.list_deliveries("ag_nope", None, status=None, after=0, limit=10)
    with pytest.raises(NotFound):
        await service.list_deliveries("ag_1", "mallory", status=None, after=0, limit=10)
    with pytest.raises(NotFound):
        await service.redeliver("dlv_001_0", "mallory")
    with pytest.raises(NotFound):
        await service.redeliver("dlv_nope", None)


async def test_redeliver_resets_the_delivery_and_enables_its_endpoint(db: Database) -> None:
    await _agent_with_deliveries(db, 1)
    async with db.write() as session:
        session.add(
            WebhookEndpointRow(
                url=HOOK,
                status="disabled",
                disabled_reason="gone",
                disabled_at=datetime.now(UTC),
                consecutive_failures=7,
                paused_until=time.time() + 100,
            )
        )
    changed: list[str] = []
    before = time.time()
    answer = await _service(db, changed).redeliver("dlv_001_0", "alice")
    assert (answer.status, answer.attempts, answer.delivered_at) == ("pending", 0, None)
    assert answer.endpoint_status == "active"
    assert answer.next_attempt_at is not None and answer.next_attempt_at.timestamp() >= before
    assert changed == [HOOK]
    async with db.read() as session:
        endpoint = await session.get(WebhookEndpointRow, HOOK)
        row = await session.get(DeliveryRow, "dlv_001_0")
    assert endpoint is not None and row is not None
    assert (endpoint.status, endpoint.disabled_reason, endpoint.disabled_at) == (
        "active",
        None,
        None,
    )
    assert (endpoint.consecutive_failures, endpoint.paused_until) == (0, None)
    assert endpoint.enabled_at >= before
    assert (row.status, row.attempts, row.generation) == ("pending", 0, 1)


async def test_redeliver_makes_the_endpoint_row_when_there_is_none(db: Database) -> None:
    # Its row may not be written yet (a 410 still queued in the dispatcher): the enable is kept
    # in a row of its own, which an older change cannot overwrite.
    await _agent_with_deliveries(db, 1)
    before = time.time()
    await _service(db).redeliver("dlv_001_1", None)
    await _service(db).redeliver("dlv_001_1", None)
    async with db.read() as session:
        endpoint = await session.get(WebhookEndpointRow, AUDIT)
        row = await session.get(DeliveryRow, "dlv_001_1")
        other = await session.get(WebhookEndpointRow, HOOK)
    assert endpoint is not None and other is None
    assert (endpoint.status, endpoint.consecutive_failures, endpoint.paused_until) == (
        "active",
        0,
        None,
    )
    assert endpoint.enabled_at >= before
    assert row is not None and row.generation == 2
