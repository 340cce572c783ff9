"""The webhook dispatcher against real SQLite and real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from forge.config import WebhookSettings
from forge.core.deliveries import DeliveryService
from forge.delivery import WebhookDispatcher
from forge.delivery import dispatcher as dispatcher_module
from forge.store.db import Database

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def seqs(receiver) -> list[int]:
    return [int(item["seq"]) for item in receiver.received_json()]


async def test_delivers_signed_events_in_order(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    receiver = await receivers()
    event_ids = await add_deliveries(db, receiver.url, 20, secret=SECRET)
    await dispatchers(db, fast_settings())

    await wait_until(lambda: len(receiver.requests) == 20)
    assert seqs(receiver) == list(range(1, 21))
    for request, event_id in zip(receiver.requests, event_ids, strict=True):
        assert request.method == "POST"
        assert request.path == "/hook"
        assert request.headers["webhook-id"] == event_id
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith("Forge-Webhooks/")
        Webhook(SECRET).verify(request.body, request.headers)
        expected = hmac.new(
            SECRET.encode(),
            request.headers["x-forge-timestamp"].encode() + b"." + request.body,
            hashlib.sha256,
        ).hexdigest()
        assert request.headers["x-forge-signature"] == "sha256=" + expected

    async def all_delivered() -> bool:
        rows = await deliveries_by_event(db)
        return all(row.status == "delivered" for row in rows.values())

    await wait_until(all_delivered)
    for row in (await deliveries_by_event(db)).values():
        assert row.attempts == 1
        assert row.last_status_code == 200
        assert row.last_error is None
        assert row.delivered_at is not None


async def test_unsigned_and_non_json_bodies_are_sent_as_is(
    db, receivers, add_deliveries, dispatchers, fast_settings, wait_until
) -> None:
    receiver = await receivers()
    await add_deliveries(db, receiver.url, 2, body=lambda _id, seq: f"not json {{ {seq} é")
    await dispatchers(db, fast_settings())

    await wait_until(lambda: len(receiver.requests) == 2)
    assert [r.body for r in receiver.requests] == [
        "not json { 1 é".encode(),
        "not json { 2 é".encode(),
    ]
    headers = receiver.requests[0].headers
    assert "webhook-signature" not in headers and "x-forge-signature" not in headers
    assert headers["webhook-id"].startswith("evt_") and headers["webhook-timestamp"].isdigit()


async def test_retries_then_the_rest_of_the_stream_follows_in_order(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    failures = {"left": 2}

    def respond(request) -> int:
        if request.json()["seq"] == 1 and failures["left"] > 0:
            failures["left"] -= 1
            return 500
        return 200

    receiver = await receivers(respond)
    event_ids = await add_deliveries(db, receiver.url, 5)
    await dispatchers(db, fast_settings())

    await wait_until(lambda: len(receiver.requests) == 7)
    assert seqs(receiver) == [1, 1, 1, 2, 3, 4, 5]
    first_ids = {r.headers["webhook-id"] for r in receiver.requests[:3]}
    assert first_ids == {event_ids[0]}
    gaps = [b.at - a.at for a, b in zip(receiver.requests[:2], receiver.requests[1:3], strict=True)]
    assert all(gap >= 0.04 for gap in gaps)  # the retry schedule was waited out

    await wait_until(lambda: _statuses(db, deliveries_by_event, {"delivered"}))
    first = (await deliveries_by_event(db))[event_ids[0]]
    assert first.attempts == 3
    assert first.last_status_code == 200


async def _statuses(db, deliveries_by_event, wanted: set[str]) -> bool:
    rows = await deliveries_by_event(db)
    return {row.status for row in rows.values()} == wanted


async def test_exhausted_after_the_schedule_and_the_stream_moves_on(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    receiver = await receivers(lambda request: 500 if request.json()["seq"] == 1 else 200)
    event_ids = await add_deliveries(db, receiver.url, 3)
    await dispatchers(db, fast_settings())

    await wait_until(lambda: len(receiver.requests) == 6)
    assert seqs(receiver) == [1, 1, 1, 1, 2, 3]  # first try + 3 retries

    async def settled() -> bool:
        rows = await deliveries_by_event(db)
        return all(row.status != "pending" for row in rows.values())

    await wait_until(settled)
    rows = await deliveries_by_event(db)
    first = rows[event_ids[0]]
    assert first.status == "exhausted"
    assert first.attempts == 4
    assert first.last_status_code == 500
    assert first.last_error is not None and first.last_error.startswith("HTTP 500")
    assert first.delivered_at is None
    assert [rows[e].status for e in event_ids[1:]] == ["delivered", "delivered"]


async def test_client_error_fails_at_once_and_the_stream_moves_on(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    receiver = await receivers(
        lambda request: (400, {}, b"bad payload\nfield x") if request.json()["seq"] == 2 else 200
    )
    event_ids = await add_deliveries(db, receiver.url, 4)
    await dispatchers(db, fast_settings())

    await wait_until(lambda: len(receiver.requests) == 4)
    assert seqs(receiver) == [1, 2, 3, 4]
    await wait_until(lambda: _statuses(db, deliveries_by_event, {"delivered", "failed"}))
    failed = (await deliveries_by_event(db))[event_ids[1]]
    assert failed.status == "failed"
    assert failed.attempts == 1
    assert failed.last_status_code == 400
    assert failed.last_error == "HTTP 400: bad payload field x"


async def test_retry_after_is_honoured(
    db, receivers, add_deliveries, dispatchers, fast_settings, wait_until
) -> None:
    answered: collections.Counter[str] = collections.Counter()

    def respond(request) -> int | tuple[int, dict[str, str]]:
        answered[request.headers["host"]] += 1
        if answered[request.headers["host"]] > 1:
            return 200
        if request.json()["seq"] == 1:
            return 429, {"Retry-After": "1"}
        return 503, {"Retry-After": formatdate(time.time() + 1.5, usegmt=True)}

    seconds = await receivers(respond)
    http_date = await receivers(respond)
    await add_deliveries(db, seconds.url, 1, first_seq=1)
    await add_deliveries(db, http_date.url, 1, first_seq=2)
    await dispatchers(db, fast_settings())

    await wait_until(lambda: len(seconds.requests) == 2 and len(http_date.requests) == 2, within=5)
    # Both are later than the 0.05 s of the schedule. An HTTP date has whole seconds only.
    assert seconds.requests[1].at - seconds.requests[0].at >= 0.95
    assert http_date.requests[1].at - http_date.requests[0].at >= 0.45


async def test_redirects_fail_at_once_and_gone_disables_the_endpoint(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    moved = await receivers(lambda _request: (301, {"Location": "http://169.254.169.254/"}))
    gone = await receivers(lambda _request: 410)
    moved_ids = await add_deliveries(db, moved.url, 2)
    gone_ids = await add_deliveries(db, gone.url, 2)
    await dispatchers(db, fast_settings())

    async def settled() -> bool:
        rows = await deliveries_by_event(db)
        statuses = [rows[e].status for e in moved_ids] == ["failed", "failed"]
        return statuses and rows[gone_ids[0]].last_status_code == 410

    await wait_until(settled)
    await asyncio.sleep(0.2)  # longer than the retry schedule: the held ones stay held
    rows = await deliveries_by_event(db)
    assert rows[moved_ids[0]].last_error == (
        "HTTP 301: redirects are not followed; use the final URL"
    )
    # The delivery that got the 410 is held like the rest: pending, its attempt not counted.
    first = rows[gone_ids[0]]
    assert (first.status, first.attempts, first.last_status_code) == ("pending", 0, 410)
    assert first.last_error == (
        "HTTP 410 Gone: endpoint disabled; redeliver a delivery to enable it again"
    )
    # The rest of the endpoint's deliveries wait for it to be enabled again, attempts unused.
    assert (rows[gone_ids[1]].status, rows[gone_ids[1]].attempts) == ("pending", 0)
    assert rows[gone_ids[1]].last_status_code is None
    assert len(moved.requests) == 2 and len(gone.requests) == 1


async def test_retry_after_is_capped(
    db, receivers, add_deliveries, dispatchers, fast_settings, wait_until
) -> None:
    answered = collections.Counter[str]()

    def respond(_request) -> int | tuple[int, dict[str, str]]:
        answered["n"] += 1
        return (429, {"Retry-After": "3600"}) if answered["n"] == 1 else 200

    receiver = await receivers(respond)
    await add_deliveries(db, receiver.url, 1)
    await dispatchers(db, fast_settings(max_retry_after_seconds=0.2))

    await wait_until(lambda: len(receiver.requests) == 2, within=3)
    assert 0.18 <= receiver.requests[1].at - receiver.requests[0].at < 0.9


async def test_timeouts_and_refused_connections_are_retried_until_exhausted(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    async def hang(_request) -> int:
        await asyncio.sleep(30)
        return 200

    hanging = await receivers(hang)
    closed = await receivers()
    await closed.close()  # nothing listens on this port any more
    slow_ids = await add_deliveries(db, hanging.url, 1)
    closed_ids = await add_deliveries(db, closed.url, 1)
    await dispatchers(db, fast_settings(timeout_seconds=0.2, retry_schedule_seconds=[0.01]))

    async def settled() -> bool:
        rows = await deliveries_by_event(db)
        return all(row.status == "exhausted" for row in rows.values())

    await wait_until(settled)
    rows = await deliveries_by_event(db)
    assert rows[slow_ids[0]].attempts == 2
    assert rows[slow_ids[0]].last_error == "timed out after 0.2s"
    assert rows[slow_ids[0]].last_status_code is None
    assert rows[closed_ids[0]].attempts == 2
    assert (rows[closed_ids[0]].last_error or "").startswith("connection failed: ConnectError")
    # The receiver records a request once it has read it all; under load the second attempt
    # may time out before that (the attempts counted above are what the dispatcher made).
    assert 1 <= len(hanging.requests) <= 2


async def test_a_name_that_does_not_resolve_is_retried(
    db, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    event_ids = await add_deliveries(db, "http://no-such-host.invalid/hook", 1)
    await dispatchers(db, fast_settings(retry_schedule_seconds=[0.01]))

    await wait_until(lambda: _statuses(db, deliveries_by_event, {"exhausted"}))
    row = (await deliveries_by_event(db))[event_ids[0]]
    assert row.attempts == 2
    assert "does not resolve" in (row.last_error or "")


async def test_a_hanging_or_failing_stream_holds_up_only_itself(
    db, receivers, add_deliveries, dispatchers, fast_settings, wait_until
) -> None:
    release = asyncio.Event()

    async def hang(_request) -> int:
        await release.wait()
        return 200

    hanging = await receivers(hang)
    failing = await receivers(lambda _request: 503)
    fast = await receivers()
    # The same endpoint serves two agents: each (endpoint, agent) pair is its own stream.
    stuck_agent = "ag_" + "0" * 26

    async def shared_respond(request) -> int:
        if request.json()["agent_id"] == stuck_agent:
            await release.wait()
        return 200

    shared = await receivers(shared_respond)
    await add_deliveries(db, hanging.url, 10)
    await add_deliveries(db, failing.url, 10)
    await add_deliveries(db, shared.url, 10, agent_id=stuck_agent)
    await add_deliveries(db, fast.url, 50)
    await add_deliveries(db, shared.url, 50)
    await dispatchers(db, fast_settings(timeout_seconds=10, retry_schedule_seconds=[60]))

    started = time.monotonic()
    await wait_until(lambda: len(fast.requests) == 50 and len(shared.requests) == 51, within=3)
    assert time.monotonic() - started < 3
    assert seqs(fast) == list(range(1, 51))
    assert [s for s in seqs(shared)[1:]] == list(range(1, 51))
    assert len(hanging.requests) == 1  # still waiting on its first delivery
    assert seqs(failing) == [1]  # waiting for its retry
    release.set()


async def test_in_flight_limits_overall_and_per_stream(
    db, receivers, add_deliveries, dispatchers, fast_settings, wait_until
) -> None:
    in_flight: collections.Counter[str] = collections.Counter()
    peak = {"all": 0, "stream": 0}

    async def respond(request) -> int:
        agent = str(request.json()["agent_id"])
        in_flight[agent] += 1
        peak["all"] = max(peak["all"], sum(in_flight.values()))
        peak["stream"] = max(peak["stream"], in_flight[agent])
        await asyncio.sleep(0.01)
        in_flight[agent] -= 1
        return 200

    receiver = await receivers(respond)
    for _ in range(6):
        await add_deliveries(db, receiver.url, 5)
    await dispatchers(db, fast_settings(max_in_flight=3))

    await wait_until(lambda: len(receiver.requests) == 30)
    assert 1 < peak["all"] <= 3
    assert peak["stream"] == 1


async def test_wake_delivers_new_rows_promptly_and_polling_finds_the_rest(
    db, receivers, add_deliveries, dispatchers, fast_settings, wait_until
) -> None:
    receiver = await receivers()
    dispatcher = await dispatchers(db, fast_settings())
    await asyncio.sleep(0.05)  # the dispatcher is idle now

    await add_deliveries(db, receiver.url, 3)
    woken_at = time.monotonic()
    dispatcher.wake()
    await wait_until(lambda: len(receiver.requests) == 3, within=0.9)
    assert receiver.requests[0].at - woken_at < 0.5  # not the idle second

    # Rows from another process come without wake(); the idle sleep is at most a second.
    await add_deliveries(db, receiver.url, 2)
    await wait_until(lambda: len(receiver.requests) == 5, within=2)


async def test_rows_added_to_a_busy_stream_follow_promptly(
    db, receivers, add_deliveries, dispatchers, fast_settings, wait_until
) -> None:
    async def slow(_request) -> int:
        await asyncio.sleep(0.05)
        return 200

    receiver = await receivers(slow)
    agent = "ag_" + "1" * 26
    await add_deliveries(db, receiver.url, 1, agent_id=agent)
    dispatcher = await dispatchers(db, fast_settings())
    await wait_until(lambda: len(receiver.requests) == 1)
    await add_deliveries(db, receiver.url, 3, agent_id=agent, first_seq=2)
    dispatcher.wake()  # while the stream's worker is busy with the one row it knew of

    await wait_until(lambda: len(receiver.requests) == 4, within=0.8)
    assert seqs(receiver) == [1, 2, 3, 4]


async def test_pending_rows_survive_a_restart(
    tmp_path: Path, db, receivers, add_deliveries, deliveries_by_event, fast_settings, wait_until
) -> None:
    gate = asyncio.Event()

    async def respond(_request) -> int:
        await gate.wait()
        return 200

    receiver = await receivers(respond)
    event_ids = await add_deliveries(db, receiver.url, 5)
    first = WebhookDispatcher(db, fast_settings())
    await first.start()
    await wait_until(lambda: len(receiver.requests) == 1)
    await first.stop(grace_seconds=0.1)  # cancels the attempt that hangs
    rows = await deliveries_by_event(db)
    assert {row.status for row in rows.values()} == {"pending"}
    assert rows[event_ids[0]].attempts == 0

    # A new process: its own Database handle on the same file, a new dispatcher.
    gate.set()
    db2 = Database(db.url)
    second = WebhookDispatcher(db2, fast_settings())
    await second.start()
    try:
        await wait_until(lambda: len(receiver.requests) == 6)
        assert seqs(receiver) == [1, 1, 2, 3, 4, 5]  # at least once: the cancelled one is resent
        assert {r.headers["webhook-id"] for r in receiver.requests[:2]} == {event_ids[0]}
        await wait_until(lambda: _statuses(db2, deliveries_by_event, {"delivered"}))
    finally:
        await second.stop()
        await db2.close()


async def test_url_refused_at_delivery_time_fails_the_delivery(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    receiver = await receivers()
    event_ids = await add_deliveries(db, receiver.url, 2)
    await dispatchers(db, fast_settings(allow_private=False))

    await wait_until(lambda: _statuses(db, deliveries_by_event, {"failed"}))
    row = (await deliveries_by_event(db))[event_ids[0]]
    assert row.attempts == 0
    assert row.last_error is not None
    assert row.last_error.startswith("URL refused: webhook_url host 127.0.0.1 is a loopback")
    assert receiver.requests == []


async def test_an_exception_in_one_attempt_does_not_stop_the_dispatcher(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    broken = await receivers()
    healthy = await receivers()
    raised = {"n": 0}

    class Flaky(WebhookDispatcher):
        async def _post(self, url: str, body: bytes, headers: dict[str, str]):
            if url == broken.url and raised["n"] == 0:
                raised["n"] += 1
                raise RuntimeError("boom")
            return await super()._post(url, body, headers)

    broken_ids = await add_deliveries(db, broken.url, 2)
    await add_deliveries(db, healthy.url, 3)
    await dispatchers(db, fast_settings(), Flaky)

    await wait_until(lambda: len(healthy.requests) == 3 and len(broken.requests) == 2)
    assert seqs(broken) == [1, 2]
    await wait_until(lambda: _statuses(db, deliveries_by_event, {"delivered"}))
    row = (await deliveries_by_event(db))[broken_ids[0]]
    assert row.attempts == 2


async def test_a_burst_of_many_deliveries(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    receiver = await receivers()
    for _ in range(10):
        await add_deliveries(db, receiver.url, 150)
    await add_deliveries(db, receiver.url, 500)  # one long stream
    await dispatchers(db, fast_settings())

    await wait_until(lambda: len(receiver.requests) == 2000, within=15)
    by_agent: dict[str, list[int]] = collections.defaultdict(list)
    for item in receiver.received_json():
        by_agent[str(item["agent_id"])].append(int(item["seq"]))
    assert sorted(len(v) for v in by_agent.values()) == [150] * 10 + [500]
    assert all(v == sorted(v) for v in by_agent.values())
    await wait_until(lambda: _statuses(db, deliveries_by_event, {"delivered"}))


async def test_a_stalled_endpoint_takes_at_most_its_share_of_the_slots(
    db, receivers, add_deliveries, dispatchers, fast_settings, wait_until, monkeypatch
) -> None:
    # Its backlog is also larger than one scan of the outbox.
    monkeypatch.setattr(dispatcher_module, "SCAN_BATCH", 10)
    release = asyncio.Event()

    async def hang(_request) -> int:
        await release.wait()
        return 200

    stalled = await receivers(hang)
    healthy = await receivers()
    for _ in range(30):  # written first: the oldest heads
        await add_deliveries(db, stalled.url, 2)
    for _ in range(5):
        await add_deliveries(db, healthy.url, 10)
    settings = fast_settings(timeout_seconds=30, max_in_flight=8, max_in_flight_per_endpoint=3)
    await dispatchers(db, settings)

    await wait_until(lambda: len(healthy.requests) == 50, within=10)
    await wait_until(lambda: len(stalled.requests) == 3)
    assert not release.is_set() and len(stalled.requests) == 3  # its first wave, still hanging
    by_agent: dict[str, list[int]] = collections.defaultdict(list)
    for item in healthy.received_json():
        by_agent[str(item["agent_id"])].append(int(item["seq"]))
    assert sorted(by_agent.values()) == [list(range(1, 11))] * 5
    release.set()


def test_the_per_endpoint_limit_is_validated() -> None:
    assert WebhookSettings().max_in_flight_per_endpoint == 16
    assert WebhookSettings(max_in_flight=4).max_in_flight_per_endpoint == 4  # the default follows
    assert WebhookSettings(max_in_flight=4, max_in_flight_per_endpoint=4).max_in_flight == 4
    with pytest.raises(ValueError, match="max_in_flight_per_endpoint"):
        WebhookSettings(max_in_flight=4, max_in_flight_per_endpoint=5)
    with pytest.raises(ValueError):
        WebhookSettings(max_in_flight_per_endpoint=0)


async def test_a_redelivery_during_an_attempt_is_not_undone_by_its_outcome(
    db, receivers, add_deliveries, deliveries_by_event, dispatchers, fast_settings, wait_until
) -> None:
    first_in, answer_first = asyncio.Event(), asyncio.Event()

    async def respond(_request) -> int:
        if len(receiver.requests) == 1:
            first_in.set()
            await answer_first.wait()
            return 503  # would be retried in 60 s
        return 200

    receiver = await receivers(respond)
    event_ids = await add_deliveries(db, receiver.url, 1)
    dispatcher = await dispatchers(db, fast_settings(retry_schedule_seconds=[60]))
    await wait_until(first_in.is_set)

    delivery_id = (await deliveries_by_event(db))[event_ids[0]].id
    service = DeliveryService(db, endpoint_changed=dispatcher.endpoint_changed)
    await service.redeliver(delivery_id, None)
    answer_first.set()  # the attempt under way ends after the redelivery

    await wait_until(lambda: len(receiver.requests) == 2, within=3)  # sent again, now
    await wait_until(lambda: _statuses(db, deliveries_by_event, {"delivered"}))
    row = (await deliveries_by_event(db))[event_ids[0]]
    assert (row.attempts, row.last_status_code, row.generation) == (1, 200, 1)
