"""Endpoint health in the dispatcher: 410 disables an endpoint, the circuit breaker pauses one,
and an endpoint enabled again in the table (by a redelivery, here or in another process) is
noticed. Real SQLite, real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from forge.config import WebhookSettings
from forge.core.deliveries import DeliveryService
from forge.delivery import dispatcher as dispatcher_module
from forge.delivery.endpoints import EndpointHealth
from forge.delivery.outbox import AttemptRecord, EndpointRecord, Outbox
from forge.store.db import Database
from forge.store.tables import DeliveryRow, WebhookEndpointRow

GONE_ERROR = "HTTP 410 Gone: endpoint disabled; redeliver a delivery to enable it again"


async def endpoint_row(db: Database, url: str) -> WebhookEndpointRow | None:
    async with db.read() as session:
        return await session.get(WebhookEndpointRow, url)


async def is_disabled(db: Database, url: str) -> bool:
    row = await endpoint_row(db, url)
    return row is not None and row.status == "disabled"


async def is_paused(db: Database, url: str) -> bool:
    row = await endpoint_row(db, url)
    return row is not None and row.paused_until is not None


def seqs_by_agent(receiver) -> dict[str, list[int]]:
    by_agent: dict[str, list[int]] = collections.defaultdict(list)
    for item in receiver.received_json():
        by_agent[str(item["agent_id"])].append(int(item["seq"]))
    return dict(by_agent)


async def test_gone_disables_the_endpoint_holds_the_rest_and_redeliver_enables_it(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    answer = {"status": 410}
    gone = await receivers(lambda _request: answer["status"])
    other = await receivers()
    agent_a, agent_b = "ag_" + "a" * 26, "ag_" + "b" * 26
    a_ids = await add_deliveries(db, gone.url, 3, agent_id=agent_a)
    await add_deliveries(db, other.url, 5)
    dispatcher = await dispatchers(db, fast_settings())

    await wait_until(functools.partial(is_disabled, db, gone.url))
    # Another agent's deliveries to the same URL come later: held too, not attempted.
    b_ids = await add_deliveries(db, gone.url, 2, agent_id=agent_b)
    dispatcher.wake()
    await wait_until(lambda: len(other.requests) == 5)  # other endpoints keep going
    await asyncio.sleep(0.3)  # six times the retry schedule

    assert len(gone.requests) == 1
    rows = await deliveries_by_event(db)
    first = rows[a_ids[0]]
    assert (first.status, first.attempts, first.last_status_code) == ("pending", 0, 410)
    assert first.last_error == GONE_ERROR
    for event_id in a_ids[1:] + b_ids:
        assert (rows[event_id].status, rows[event_id].attempts) == ("pending", 0)
    endpoint = await endpoint_row(db, gone.url)
    assert endpoint is not None and endpoint.disabled_at is not None
    assert endpoint.disabled_reason == "the endpoint answered HTTP 410 Gone"

    # The endpoint is back; redelivering the failed delivery enables it again.
    answer["status"] = 200
    service = DeliveryService(db, endpoint_changed=dispatcher.endpoint_changed)
    redelivered = await service.redeliver(first.id, "owner")
    assert (redelivered.status, redelivered.attempts) == ("pending", 0)
    assert redelivered.endpoint_status == "active"

    await wait_until(lambda: len(gone.requests) == 6, within=2)
    assert seqs_by_agent(gone) == {agent_a: [1, 1, 2, 3], agent_b: [1, 2]}
    # The same event again, with the same webhook-id.
    a_requests = [r for r in gone.requests if r.json()["agent_id"] == agent_a]
    assert [r.headers["webhook-id"] for r in a_requests] == [a_ids[0], *a_ids]

    async def all_delivered() -> bool:
        rows = await deliveries_by_event(db)
        return {row.status for row in rows.values()} == {"delivered"}

    await wait_until(all_delivered)
    endpoint = await endpoint_row(db, gone.url)
    assert endpoint is not None
    assert (endpoint.status, endpoint.disabled_reason, endpoint.consecutive_failures) == (
        "active",
        None,
        0,
    )


async def test_an_endpoint_enabled_in_the_table_by_another_process_is_noticed(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    answer = {"status": 410}
    receiver = await receivers(lambda _request: answer["status"])
    event_ids = await add_deliveries(db, receiver.url, 3)
    first = await dispatchers(db, fast_settings())

    await wait_until(functools.partial(is_disabled, db, receiver.url))
    await first.stop(grace_seconds=0.1)

    # A restarted dispatcher reads the endpoint's state: still disabled, nothing is sent.
    second = await dispatchers(db, fast_settings())
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1

    # Another process (its own database handle, no call to this dispatcher) enables it again.
    answer["status"] = 200
    other = Database(db.url)
    try:
        await DeliveryService(other, endpoint_changed=lambda _url: None).redeliver(
            (await deliveries_by_event(db))[event_ids[0]].id, None
        )
    finally:
        await other.close()
    enabled_at = time.monotonic()

    await wait_until(lambda: len(receiver.requests) == 4, within=3)
    assert receiver.requests[1].at - enabled_at < 2.0  # the table is read at least every second
    assert [int(r.json()["seq"]) for r in receiver.requests] == [1, 1, 2, 3]
    assert second is not first


async def test_the_breaker_opens_holds_without_using_attempts_and_a_probe_closes_it(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    state = {"healthy": False, "first_healthy": 0, "probing": False, "probe_overlap": 0}
    arrivals: list[float] = []

    async def respond(_request) -> int:
        arrivals.append(time.time())
        if state["probing"]:
            state["probe_overlap"] += 1
        if not state["healthy"]:
            return 503
        if len(arrivals) == state["first_healthy"]:
            state["probing"] = True
            await asyncio.sleep(0.2)  # a slow probe: nothing else is sent meanwhile
            state["probing"] = False
        return 200

    receiver = await receivers(respond)
    agents = [f"ag_{i}" + "c" * 25 for i in range(3)]
    for agent in agents:
        await add_deliveries(db, receiver.url, 3, agent_id=agent)
    settings = fast_settings(
        retry_schedule_seconds=[0.01] * 20,
        circuit_failure_threshold=3,
        circuit_open_seconds=0.4,
        circuit_max_open_seconds=5,
    )
    await dispatchers(db, settings)

    async def opened(failures: int) -> bool:
        row = await endpoint_row(db, receiver.url)
        return row is not None and row.consecutive_failures >= failures and bool(row.paused_until)

    await wait_until(lambda: opened(3))
    row = await endpoint_row(db, receiver.url)
    assert row is not None and row.paused_until is not None
    first_pause_end = row.paused_until
    sent_before_pause = len(arrivals)

    # The probe after the pause fails: paused again, for twice as long.
    await wait_until(lambda: opened(4), within=3)
    row = await endpoint_row(db, receiver.url)
    assert row is not None and row.paused_until is not None
    assert len(arrivals) == sent_before_pause + 1  # one probe, nothing during the pause
    probe_at = arrivals[-1]
    assert probe_at >= first_pause_end - 0.01
    assert 0.8 <= row.paused_until - probe_at < 1.3  # twice circuit_open_seconds

    # Held deliveries kept their attempts: each attempt in the table was a request received.
    rows = await deliveries_by_event(db)
    assert sum(r.attempts for r in rows.values()) == len(arrivals)
    assert {r.status for r in rows.values()} == {"pending"}

    state["first_healthy"] = len(arrivals) + 1
    state["healthy"] = True

    async def all_delivered() -> bool:
        rows = await deliveries_by_event(db)
        return {row.status for row in rows.values()} == {"delivered"}

    await wait_until(all_delivered, within=5)
    assert min(arrivals[state["first_healthy"] - 1 :]) >= row.paused_until - 0.01
    assert state["probe_overlap"] == 0
    by_agent = seqs_by_agent(receiver)
    for agent in agents:
        firsts = list(dict.fromkeys(by_agent[agent]))
        assert firsts == [1, 2, 3]  # in order, whatever was retried
    row = await endpoint_row(db, receiver.url)
    assert row is not None
    assert (row.consecutive_failures, row.paused_until, row.status) == (0, None, "active")


async def test_with_the_breaker_off_failures_only_follow_the_retry_schedule(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    receiver = await receivers(lambda _request: 503)
    await add_deliveries(db, receiver.url, 1)
    settings = fast_settings(retry_schedule_seconds=[0.01] * 8, circuit_failure_threshold=0)
    await dispatchers(db, settings)

    async def exhausted() -> bool:
        rows = await deliveries_by_event(db)
        return {row.status for row in rows.values()} == {"exhausted"}

    await wait_until(exhausted)
    assert len(receiver.requests) == 9
    assert await endpoint_row(db, receiver.url) is None


async def test_a_success_on_another_stream_resets_the_failure_count(
    db, receivers, add_deliveries, dispatchers, fast_settings, wait_until
) -> None:
    bad_agent = "ag_" + "d" * 26

    def respond(request) -> int:
        return 503 if request.json()["agent_id"] == bad_agent else 200

    receiver = await receivers(respond)
    await add_deliveries(db, receiver.url, 1, agent_id=bad_agent)
    # The bad stream's third attempt (which would open the breaker) comes 30 s after its second:
    # long after the good delivery, however busy the machine.
    settings = fast_settings(retry_schedule_seconds=[0.05, 30, 30], circuit_failure_threshold=3)
    dispatcher = await dispatchers(db, settings)

    async def failures(n: int) -> bool:
        row = await endpoint_row(db, receiver.url)
        return row is not None and row.consecutive_failures == n

    await wait_until(lambda: failures(2))
    await add_deliveries(db, receiver.url, 1)  # another agent, answered 200
    dispatcher.wake()
    await wait_until(lambda: len(receiver.requests) == 3)
    await wait_until(lambda: failures(0), within=5)
    row = await endpoint_row(db, receiver.url)
    assert row is not None and row.paused_until is None  # the breaker never opened
    assert [r.json()["agent_id"] == bad_agent for r in receiver.requests] == [True, True, False]


async def test_paused_endpoints_hold_only_themselves(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    failing = await receivers(lambda _request: 500)
    healthy = await receivers()
    await add_deliveries(db, failing.url, 5)
    settings = fast_settings(
        retry_schedule_seconds=[0.01] * 20,
        circuit_failure_threshold=2,
        circuit_open_seconds=30,
        circuit_max_open_seconds=30,
    )
    dispatcher = await dispatchers(db, settings)

    await wait_until(functools.partial(is_paused, db, failing.url))
    await add_deliveries(db, healthy.url, 20)
    dispatcher.wake()
    await wait_until(lambda: len(healthy.requests) == 20, within=2)
    assert len(failing.requests) == 2
    rows = await deliveries_by_event(db)
    assert sorted(r.attempts for r in rows.values() if r.endpoint_url == failing.url) == [
        0,
        0,
        0,
        0,
        2,
    ]


async def test_redeliver_ends_a_pause(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    answer = {"status": 500}
    receiver = await receivers(lambda _request: answer["status"])
    event_ids = await add_deliveries(db, receiver.url, 3)
    settings = fast_settings(
        retry_schedule_seconds=[0.01] * 20,
        circuit_failure_threshold=2,
        circuit_open_seconds=60,
        circuit_max_open_seconds=60,
    )
    dispatcher = await dispatchers(db, settings)

    await wait_until(functools.partial(is_paused, db, receiver.url))
    answer["status"] = 200
    async with db.read() as session:
        delivery_id = await session.scalar(
            select(DeliveryRow.id).where(DeliveryRow.event_id == event_ids[0])
        )
    assert delivery_id is not None
    service = DeliveryService(db, endpoint_changed=dispatcher.endpoint_changed)
    await service.redeliver(delivery_id, None)
    await wait_until(lambda: len(receiver.requests) == 5, within=2)
    assert [int(r.json()["seq"]) for r in receiver.requests] == [1, 1, 1, 2, 3]

    async def all_delivered() -> bool:
        rows = await deliveries_by_event(db)
        return {row.status for row in rows.values()} == {"delivered"}

    await wait_until(all_delivered)
    rows = await deliveries_by_event(db)
    assert rows[event_ids[0]].attempts == 1  # counted again from 0


def test_a_table_read_older_than_a_change_made_here_does_not_undo_it() -> None:
    health = EndpointHealth(WebhookSettings(circuit_failure_threshold=2))
    url, stream = "https://example.com/hook", ("https://example.com/hook", "ag_1")
    now = time.time()
    gone = AttemptRecord("dlv_1", "pending", 0, now, 410, GONE_ERROR)
    read_before_the_write = time.monotonic()
    change = health.after_attempt(url, gone, started=now, now=now)
    assert change is not None and change.status == "disabled"
    assert not health.can_send(url, stream, now)

    # A read that began before the change was committed does not know of it: ignored.
    health.refreshed([], read_before_the_write, complete=True)
    assert not health.can_send(url, stream, now)
    health.written([change])
    health.refreshed([], read_before_the_write, complete=True)
    assert not health.can_send(url, stream, now)

    # A read of the rows changed lately that does not return it says nothing of it.
    health.refreshed([], time.monotonic(), complete=False)
    assert not health.can_send(url, stream, now)

    # A complete read after the commit that finds the endpoint healthy: enabled again elsewhere.
    assert health.refreshed([], time.monotonic(), complete=True) == []
    assert health.can_send(url, stream, now) and health.get(url) is None


def test_the_breaker_in_memory_pauses_doubles_and_lets_one_probe_through() -> None:
    settings = WebhookSettings(
        circuit_failure_threshold=2, circuit_open_seconds=10, circuit_max_open_seconds=25
    )
    health = EndpointHealth(settings)
    url = "https://example.com/hook"
    a, b = (url, "ag_a"), (url, "ag_b")
    failed = AttemptRecord("dlv_1", "pending", 1, 0.0, 503, "HTTP 503")
    delivered = AttemptRecord("dlv_1", "delivered", 2, 0.0, 200, None)

    assert health.after_attempt(url, failed, started=999.0, now=1000.0) is not None
    assert health.can_send(url, a, 1000.0)  # one failure: still closed
    change = health.after_attempt(url, failed, started=999.0, now=1000.0)
    assert change is not None and change.paused_until == 1010.0
    assert not health.can_send(url, a, 1009.0)
    # Begun before the pause, ended during it: says nothing new.
    assert health.after_attempt(url, failed, started=999.5, now=1005.0) is None
    assert health.pauses(1005.0) == [1010.0]

    # Half-open: the first stream to claim it probes, the others wait.
    assert health.claim(url, a, 1010.0) and not health.claim(url, b, 1010.0)
    # The probe failed: twice as long.
    change = health.after_attempt(url, failed, started=1010.0, now=1011.0)
    assert change is not None and change.paused_until == 1031.0
    assert health.claim(url, b, 1031.0)
    # Capped at circuit_max_open_seconds.
    change = health.after_attempt(url, failed, started=1031.0, now=1031.0)
    assert change is not None and change.paused_until == 1056.0
    assert health.claim(url, a, 1056.0)
    health.release(url, a)  # gave up its turn: another stream may probe
    assert health.claim(url, b, 1056.0)
    change = health.after_attempt(url, delivered, started=1056.0, now=1056.5)
    assert change is not None
    assert (change.consecutive_failures, change.paused_until) == (0, None)
    assert health.can_send(url, a, 1056.5) and health.can_send(url, b, 1056.5)


async def test_an_enable_in_the_table_reaches_a_dispatcher_woken_for_it(
    db, receivers, add_deliveries, dispatchers, fast_settings, wait_until
) -> None:
    answer = {"status": 410}
    receiver = await receivers(lambda _request: answer["status"])
    await add_deliveries(db, receiver.url, 2)
    dispatcher = await dispatchers(db, fast_settings())

    await wait_until(functools.partial(is_disabled, db, receiver.url))
    await asyncio.sleep(0.05)
    answer["status"] = 200
    async with db.write() as session:
        await session.execute(
            update(WebhookEndpointRow)
            .where(WebhookEndpointRow.url == receiver.url)
            .values(status="active", disabled_reason=None, disabled_at=None)
        )
    woken_at = time.monotonic()
    dispatcher.endpoint_changed(receiver.url)
    await wait_until(lambda: len(receiver.requests) == 3, within=1)
    assert receiver.requests[1].at - woken_at < 0.5  # not the once-a-second read
    assert [int(r.json()["seq"]) for r in receiver.requests] == [1, 1, 2]  # the 410'd one first


def test_circuit_settings_are_validated() -> None:
    assert WebhookSettings().circuit_failure_threshold == 5
    assert WebhookSettings().circuit_open_seconds == 30
    assert WebhookSettings().circuit_max_open_seconds == 600
    assert WebhookSettings().retry_schedule_seconds == [5, 300, 1800, 7200, 18000, 36000, 36000]
    with pytest.raises(ValueError, match="circuit_max_open_seconds"):
        WebhookSettings(circuit_open_seconds=60, circuit_max_open_seconds=30)
    with pytest.raises(ValueError):
        WebhookSettings(circuit_failure_threshold=-1)
    with pytest.raises(ValueError):
        WebhookSettings(circuit_open_seconds=0)


async def test_a_gone_endpoint_holds_every_stream_and_one_redelivery_sends_each_in_order(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    answer = {"status": 410}
    agents = [f"ag_{i}" + "e" * 25 for i in range(4)]
    all_in = asyncio.Event()

    async def respond(_request) -> int:
        if answer["status"] == 410:
            # Every stream's first delivery is under way when the first 410 comes back.
            if len(receiver.requests) >= len(agents):
                all_in.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    await all_in.wait()
        return answer["status"]

    receiver = await receivers(respond)
    ids = {agent: await add_deliveries(db, receiver.url, 3, agent_id=agent) for agent in agents}
    dispatcher = await dispatchers(db, fast_settings())

    async def all_gone() -> bool:
        rows = await deliveries_by_event(db)
        return all(rows[ids[agent][0]].last_status_code == 410 for agent in agents)

    await wait_until(all_gone)
    await asyncio.sleep(0.3)  # six times the retry schedule: nothing more is sent
    assert len(receiver.requests) == len(agents)
    rows = await deliveries_by_event(db)
    for agent in agents:
        first, *rest = (rows[event_id] for event_id in ids[agent])
        # Held like the rest: pending, the 410 recorded, the attempt not counted.
        assert (first.status, first.attempts, first.last_error) == ("pending", 0, GONE_ERROR)
        assert [(r.status, r.attempts, r.last_status_code) for r in rest] == [
            ("pending", 0, None)
        ] * 2
    endpoint = await endpoint_row(db, receiver.url)
    assert endpoint is not None and endpoint.status == "disabled"

    # One redelivery enables the endpoint: every stream follows from its first delivery.
    answer["status"] = 200
    service = DeliveryService(db, endpoint_changed=dispatcher.endpoint_changed)
    await service.redeliver(rows[ids[agents[0]][0]].id, "owner")
    await wait_until(lambda: len(receiver.requests) == 4 * len(agents))
    assert seqs_by_agent(receiver) == {agent: [1, 1, 2, 3] for agent in agents}

    async def all_delivered() -> bool:
        rows = await deliveries_by_event(db)
        return {row.status for row in rows.values()} == {"delivered"}

    await wait_until(all_delivered)
    rows = await deliveries_by_event(db)
    assert {rows[ids[agent][0]].attempts for agent in agents} == {1}


async def test_a_half_open_endpoint_with_more_streams_than_a_scan_holds_up_no_other(
    db,
    receivers,
    add_deliveries,
    deliveries_by_event,
    dispatchers,
    fast_settings,
    wait_until,
    monkeypatch,
) -> None:
    monkeypatch.setattr(dispatcher_module, "SCAN_BATCH", 10)
    hang_from = {"at": float("inf")}  # time.time() from which requests hang: the probe
    probing, release = asyncio.Event(), asyncio.Event()

    async def respond(_request) -> int:
        if time.time() < hang_from["at"]:
            return 503
        probing.set()
        await release.wait()
        return 200

    stuck = await receivers(respond)
    other = await receivers()
    for n in range(30):  # three times the scan batch, and older than the other endpoint's
        await add_deliveries(db, stuck.url, 1, agent_id=f"ag_{n:02}" + "f" * 24)
    settings = fast_settings(
        retry_schedule_seconds=[0.05] * 20,
        timeout_seconds=20,
        circuit_failure_threshold=2,
        circuit_open_seconds=0.5,
        circuit_max_open_seconds=0.5,
    )
    dispatcher = await dispatchers(db, settings)

    async def paused() -> float | None:
        row = await endpoint_row(db, stuck.url)
        return row.paused_until if row is not None else None

    await wait_until(paused)
    hang_from["at"] = await paused() or 0.0
    await wait_until(probing.is_set, within=5)  # half-open: one probe is under way
    probes = len(stuck.requests)

    await add_deliveries(db, other.url, 5)
    for _ in range(4):
        await add_deliveries(db, other.url, 5)
    dispatcher.wake()
    await wait_until(lambda: len(other.requests) == 25, within=5)
    assert len(stuck.requests) == probes and not release.is_set()  # the probe still hangs

    release.set()  # the probe succeeds: the breaker closes and the 30 streams follow

    async def stuck_delivered() -> bool:
        rows = await deliveries_by_event(db)
        return all(r.status == "delivered" for r in rows.values() if r.endpoint_url == stuck.url)

    await wait_until(stuck_delivered, within=10)


async def test_an_enable_after_a_change_made_here_began_wins_in_memory() -> None:
    health = EndpointHealth(WebhookSettings())
    url, stream = "https://example.com/hook", ("https://example.com/hook", "ag_1")
    gone = AttemptRecord("dlv_1", "pending", 0, 0.0, 410, GONE_ERROR)
    assert health.after_attempt(url, gone, started=100.0, now=101.0) is not None
    read_started = time.monotonic()  # the change is not written yet

    # A row enabled before the attempt began is older than the change: the change stands.
    older = EndpointRecord(url, "active", None, None, 0, None, enabled_at=99.0)
    health.refreshed([older], read_started, complete=False)
    assert not health.can_send(url, stream, 102.0)

    # A redelivery enabled it after the attempt began: it wins (its write will not apply).
    newer = EndpointRecord(url, "active", None, None, 0, None, enabled_at=100.5)
    health.refreshed([newer], read_started, complete=False)
    assert health.can_send(url, stream, 102.0) and health.get(url) is None


async def test_a_change_decided_before_a_redelivery_is_not_written_over_it(
    db, add_deliveries
) -> None:
    url = "https://example.com/hook"
    await add_deliveries(db, url, 1)
    outbox = Outbox(db)
    (head,) = await outbox.heads(limit=10, now=time.time())
    delivery = head.delivery
    # An attempt got 410; its outcome and the endpoint's disabling wait in the writer when the
    # delivery is redelivered. The endpoint has no row yet.
    began = time.time()
    gone = AttemptRecord(
        delivery.id,
        "pending",
        0,
        delivery.next_attempt_at,
        410,
        GONE_ERROR,
        generation=delivery.generation,
    )
    disabled = EndpointRecord(
        url,
        "disabled",
        "the endpoint answered HTTP 410 Gone",
        datetime.now(UTC),
        0,
        None,
        observed_at=began,
    )
    assert await endpoint_row(db, url) is None
    await asyncio.sleep(0.01)
    await DeliveryService(db, endpoint_changed=lambda _url: None).redeliver(delivery.id, None)
    await outbox.record([gone], [disabled])

    endpoint = await endpoint_row(db, url)
    assert endpoint is not None and endpoint.status == "active" and endpoint.enabled_at > began
    async with db.read() as session:
        row = await session.get(DeliveryRow, delivery.id)
    assert row is not None
    assert (row.status, row.last_status_code, row.generation) == ("pending", None, 1)

    # A change decided on an attempt begun after the enable is written.
    later = dataclasses.replace(disabled, observed_at=time.time())
    await outbox.record([], [later])
    endpoint = await endpoint_row(db, url)
    assert endpoint is not None and endpoint.status == "disabled"


async def test_endpoint_rows_are_deleted_once_they_hold_nothing_back(
    db,
    receivers,
    add_deliveries,
    deliveries_by_event,
    dispatchers,
    fast_settings,
    wait_until,
    monkeypatch,
) -> None:
    monkeypatch.setattr(dispatcher_module, "ENDPOINT_FULL_READ_SECONDS", 0.1)
    monkeypatch.setattr(dispatcher_module, "ENDPOINT_ROW_TTL_SECONDS", 0.0)
    answered: collections.Counter[str] = collections.Counter()

    def fail_once(request) -> int:
        answered[request.json()["event_id"]] += 1
        return 503 if answered[request.json()["event_id"]] == 1 else 200

    flaky = [await receivers(fail_once) for _ in range(3)]  # healthy again after one failure
    failing = await receivers(lambda _request: 500)  # exhausts its one delivery: nothing waits
    gone = await receivers(lambda _request: 410)  # disabled, its delivery held: kept
    for receiver in [*flaky, failing, gone]:
        await add_deliveries(db, receiver.url, 1)
    await dispatchers(db, fast_settings(retry_schedule_seconds=[0.01]))

    async def settled() -> bool:
        rows = (await deliveries_by_event(db)).values()
        return sorted(r.status for r in rows) == ["delivered"] * 3 + ["exhausted", "pending"]

    await wait_until(settled)

    async def endpoint_urls() -> set[str]:
        async with db.read() as session:
            return set(await session.scalars(select(WebhookEndpointRow.url)))

    async def only_the_gone_one_left() -> bool:
        return await endpoint_urls() == {gone.url}

    await wait_until(only_the_gone_one_left, within=3)
    row = await endpoint_row(db, gone.url)
    assert row is not None and row.status == "disabled"


async def test_the_regular_read_returns_only_rows_changed_since(db) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    async with db.write() as session:
        for n in range(3):
            session.add(
                WebhookEndpointRow(
                    url=f"https://old{n}.example.com/", status="disabled", updated_at=long_ago
                )
            )
        session.add(WebhookEndpointRow(url="https://new.example.com/", consecutive_failures=1))
    since = datetime.now(UTC) - timedelta(seconds=5)
    changed = await Outbox(db).endpoints_changed_since(since)
    assert [row.url for row in changed] == ["https://new.example.com/"]
    assert len(await Outbox(db).unhealthy_endpoints()) == 4


async def test_with_the_breaker_off_a_pause_left_in_the_table_holds_nothing(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    in_flight = {"now": 0, "peak": 0}

    async def slow_failure(_request) -> int:
        in_flight["now"] += 1
        in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
        await asyncio.sleep(0.1)
        in_flight["now"] -= 1
        return 503

    was_half_open = await receivers(slow_failure)
    was_paused = await receivers()
    for n in range(4):
        await add_deliveries(db, was_half_open.url, 1, agent_id=f"ag_{n}" + "g" * 25)
    await add_deliveries(db, was_paused.url, 2)
    async with db.write() as session:  # left by a process that ran with the breaker on
        session.add(
            WebhookEndpointRow(
                url=was_half_open.url, consecutive_failures=5, paused_until=time.time() - 1
            )
        )
        session.add(
            WebhookEndpointRow(
                url=was_paused.url, consecutive_failures=5, paused_until=time.time() + 60
            )
        )
    settings = fast_settings(retry_schedule_seconds=[0.01], circuit_failure_threshold=0)
    await dispatchers(db, settings)

    await wait_until(lambda: len(was_paused.requests) == 2, within=3)  # not held for 60 s
    await wait_until(lambda: len(was_half_open.requests) == 8, within=5)
    assert in_flight["peak"] > 1  # not one probe at a time

    async def cleared() -> bool:
        rows = [await endpoint_row(db, r.url) for r in (was_half_open, was_paused)]
        return all(
            row is None or (row.consecutive_failures, row.paused_until) == (0, None) for row in rows
        )

    await wait_until(cleared)


async def test_the_breaker_pauses_at_least_as_long_as_retry_after_asks(
    db, receivers, add_deliveries, dispatchers, fast_settings, wait_until
) -> None:
    sent: dict[str, float] = {}

    def asking(seconds: str, status: int):
        def respond(request) -> tuple[int, dict[str, str]]:
            sent[request.headers["host"]] = time.time()
            return status, {"Retry-After": seconds}

        return respond

    asks_two = await receivers(asking("2", 503))
    asks_an_hour = await receivers(asking("3600", 429))
    await add_deliveries(db, asks_two.url, 1)
    await add_deliveries(db, asks_an_hour.url, 1)
    settings = fast_settings(
        circuit_failure_threshold=1,
        circuit_open_seconds=0.1,
        circuit_max_open_seconds=0.2,
        max_retry_after_seconds=5,
    )
    await dispatchers(db, settings)

    async def pauses() -> list[float] | None:
        rows = [await endpoint_row(db, r.url) for r in (asks_two, asks_an_hour)]
        if any(row is None or row.paused_until is None for row in rows):
            return None
        return [row.paused_until for row in rows if row and row.paused_until]

    await wait_until(pauses)
    two, hour = await pauses() or []
    host = {r.url: r.url.split("/")[2] for r in (asks_two, asks_an_hour)}
    assert 1.9 <= two - sent[host[asks_two.url]] < 3  # Retry-After, not circuit_open_seconds
    assert 4.9 <= hour - sent[host[asks_an_hour.url]] < 6  # capped at max_retry_after_seconds


def test_an_attempt_begun_before_a_pause_is_not_the_probe() -> None:
    settings = WebhookSettings(
        circuit_failure_threshold=2, circuit_open_seconds=10, circuit_max_open_seconds=100
    )
    health = EndpointHealth(settings)
    url = "https://example.com/hook"
    a, b = (url, "ag_a"), (url, "ag_b")
    failed = AttemptRecord("dlv_1", "pending", 1, 0.0, 503, "HTTP 503")
    health.after_attempt(url, failed, started=999.0, now=1000.0)
    change = health.after_attempt(url, failed, started=999.0, now=1000.0)
    assert change is not None and change.paused_until == 1010.0

    # The pause is over; stream a probes. An attempt of stream b begun at 999.5 (before the
    # pause: a slow timeout) fails now: it is neither the probe's failure nor news.
    assert health.claim(url, a, 1010.0)
    assert health.after_attempt(url, failed, started=999.5, now=1011.0) is None
    state = health.get(url)
    assert state is not None and state.probe == a and state.consecutive_failures == 2
    assert not health.claim(url, b, 1011.0)
    # The probe's own failure counts: paused again, twice as long.
    change = health.after_attempt(url, failed, started=1010.0, now=1012.0)
    assert change is not None and change.paused_until == 1032.0
