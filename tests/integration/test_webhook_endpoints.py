"""Endpoint health through the real server: an endpoint that is down for a while gets everything
once it is back (the circuit breaker waits, retries are not used up), 410 disables an endpoint and
holds all its deliveries until a redelivery, the deliveries API, and the URL guard with Forge's
default settings."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from tests.integration.conftest import (
    ForgeServer,
    WebhookReceiver,
    free_port,
    serve_webhooks,
    stop_serving,
)

pytestmark = pytest.mark.integration

CHATTY = (
    '[profiles.chatty]\nexecutor = "command"\ncommand = "for i in 1 2 3 4; do echo line $i; done"\n'
)
# Retries alone would be used up after 1.2 s; the breaker carries a longer outage.
BREAKER_WEBHOOKS = """
allow_private = true
retry_schedule_seconds = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
jitter = 0.0
timeout_seconds = 2
circuit_failure_threshold = 3
circuit_open_seconds = 0.5
circuit_max_open_seconds = 1.0
"""


def deliveries(server: ForgeServer, agent_id: str, **params: Any) -> list[dict[str, Any]]:
    """Every delivery of the agent, page by page."""
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        reply = server.http.get(
            f"/api/v1/agents/{agent_id}/deliveries", params={"after": after, **params}
        )
        assert reply.status_code == 200, reply.text
        page = reply.json()
        items += page["deliveries"]
        if not page["has_more"]:
            return items
        after = page["next_after"]


def wait_for_deliveries(
    server: ForgeServer, agent_id: str, predicate: Any, timeout: float = 20
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        items = deliveries(server, agent_id)
        if predicate(items):
            return items
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries not as expected: {items}\n{server.log()[-3000:]}")
        time.sleep(0.05)


def first_seen(receiver: WebhookReceiver) -> list[int]:
    seqs: list[int] = []
    for request in receiver.requests:
        if request.json["seq"] not in seqs:
            seqs.append(request.json["seq"])
    return seqs


def test_an_endpoint_down_for_a_while_gets_every_event_in_order_once_back(
    forge_server: Any,
) -> None:
    server: ForgeServer = forge_server(CHATTY, webhooks=BREAKER_WEBHOOKS)
    port = free_port()  # nothing listens here yet: connections are refused
    url = f"http://127.0.0.1:{port}/hook"
    agent_id = server.create_agent(profile="chatty")["id"]
    reply = server.http.post(
        f"/api/v1/agents/{agent_id}/messages", json={"content": "go", "webhook_url": url}
    )
    assert reply.status_code == 202
    events = server.wait_final(agent_id, reply.json()["request_id"])

    # The breaker opens: the endpoint is paused and its deliveries wait, still pending.
    paused = wait_for_deliveries(
        server, agent_id, lambda items: any(d["endpoint_status"] == "paused" for d in items)
    )
    assert {d["status"] for d in paused} == {"pending"}
    assert (paused[0]["last_error"] or "").startswith("connection failed")
    time.sleep(2.5)  # twice as long as the retries alone would last

    receiver = WebhookReceiver()
    http = serve_webhooks(receiver, port)
    try:
        seqs = [e["seq"] for e in events]
        receiver.wait_for(lambda reqs: {r.json["seq"] for r in reqs} == set(seqs), timeout=10)
        assert first_seen(receiver) == seqs
        done = wait_for_deliveries(
            server, agent_id, lambda items: all(d["status"] == "delivered" for d in items)
        )
        assert [d["seq"] for d in done] == seqs
        assert {d["endpoint_status"] for d in done} == {"active"}
        assert all(d["attempts"] <= 12 for d in done)
        assert all(d["next_attempt_at"] is None for d in done)
    finally:
        stop_serving(http)
    log = server.log()
    assert "(circuit open)" in log and "(circuit closed)" in log


def test_gone_disables_the_endpoint_until_a_redelivery(
    forge_server: Any, receiver: WebhookReceiver
) -> None:
    receiver.respond = lambda _request: 410
    server: ForgeServer = forge_server(CHATTY)
    agent_id = server.create_agent(profile="chatty")["id"]
    reply = server.http.post(
        f"/api/v1/agents/{agent_id}/messages",
        json={"content": "go", "webhook_url": receiver.url, "webhook_secret": "s3cret"},
    )
    events = server.wait_final(agent_id, reply.json()["request_id"])
    n = len(events)

    held = wait_for_deliveries(
        server, agent_id, lambda items: len(items) == n and items[0]["last_status_code"] == 410
    )
    time.sleep(1.0)  # longer than the whole retry schedule: everything stays held
    held = deliveries(server, agent_id)
    first, last = held[0], held[-1]
    # The delivery that got the 410 is held like the rest: pending, its attempt not counted.
    assert (first["seq"], first["status"], first["attempts"]) == (1, "pending", 0)
    assert first["last_error"].startswith("HTTP 410 Gone: endpoint disabled")
    assert "410" in first["endpoint_disabled_reason"]
    assert first["event_id"] == events[0]["event_id"]
    assert first["endpoint_url"] == receiver.url and "secret" not in first
    assert "s3cret" not in str(held)
    for item in held:
        assert (item["status"], item["attempts"], item["endpoint_status"]) == (
            "pending",
            0,
            "disabled",
        )
        assert item["next_attempt_at"] is None
    assert [item["last_status_code"] for item in held[1:]] == [None] * (n - 1)
    assert len(receiver.requests) == 1
    assert deliveries(server, agent_id, status="failed") == []

    # The endpoint is back: redelivering any of its deliveries (here the last) enables it, and
    # everything held follows in order, from the one that got the 410.
    receiver.respond = lambda _request: 200
    again = server.http.post(
        f"/api/v1/deliveries/{last['id']}/redeliver", params={"user_id": "alice"}
    )
    assert again.status_code == 202, again.text
    body = again.json()
    assert (body["id"], body["status"], body["attempts"]) == (last["id"], "pending", 0)
    assert body["endpoint_status"] == "active"

    receiver.wait_for(lambda reqs: len(reqs) == n + 1, timeout=10)
    assert [r.json["seq"] for r in receiver.requests] == [1, *range(1, n + 1)]
    assert receiver.requests[1].headers["webhook-id"] == events[0]["event_id"]
    done = wait_for_deliveries(
        server, agent_id, lambda items: all(d["status"] == "delivered" for d in items)
    )
    assert {d["endpoint_status"] for d in done} == {"active"}
    assert [d["attempts"] for d in done] == [1] * n
    assert done[0]["delivered_at"] is not None


def test_deliveries_api_answers_404_for_unknown_ids_and_other_owners(
    forge_server: Any, receiver: WebhookReceiver
) -> None:
    server: ForgeServer = forge_server(CHATTY)
    agent_id = server.create_agent(profile="chatty")["id"]  # alice's
    reply = server.http.post(
        f"/api/v1/agents/{agent_id}/messages",
        json={"content": "go", "webhook_url": receiver.url},
    )
    events = server.wait_final(agent_id, reply.json()["request_id"])
    items = wait_for_deliveries(server, agent_id, lambda items: len(items) == len(events))
    delivery_id = items[0]["id"]

    def not_found(response: Any, code: str) -> None:
        assert response.status_code == 404, response.text
        assert response.json()["error"] == code

    http = server.http
    not_found(http.get("/api/v1/agents/ag_nope/deliveries"), "agent_not_found")
    not_found(
        http.get(f"/api/v1/agents/{agent_id}/deliveries", params={"user_id": "mallory"}),
        "agent_not_found",
    )
    not_found(http.post("/api/v1/deliveries/dlv_nope/redeliver"), "delivery_not_found")
    not_found(
        http.post(f"/api/v1/deliveries/{delivery_id}/redeliver", params={"user_id": "mallory"}),
        "delivery_not_found",
    )
    mine = http.get(f"/api/v1/agents/{agent_id}/deliveries", params={"user_id": "alice"})
    assert mine.status_code == 200 and len(mine.json()["deliveries"]) == len(events)
    for params in ({"limit": 0}, {"limit": 501}, {"status": "lost"}, {"after": -1}):
        bad = http.get(f"/api/v1/agents/{agent_id}/deliveries", params=params)
        assert bad.status_code == 422, (params, bad.text)


def test_default_settings_refuse_private_webhook_urls(forge_server: Any) -> None:
    server: ForgeServer = forge_server(webhooks="")  # Forge's defaults: allow_private = false
    agent_id = server.create_agent()["id"]
    hostname = socket.gethostname()
    refused = {
        f"http://127.0.0.1:{free_port()}/hook": "127.0.0.1 is a loopback address",
        "http://10.0.0.1/hook": "10.0.0.1 is a private address",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is the cloud metadata",
        "http://localhost:8080/hook": "localhost (",
        f"http://{hostname}:8080/hook": f"{hostname} (",
        "http://[::1]/hook": "::1 is a loopback address",
    }
    for url, problem in refused.items():
        for path, body in (
            (f"/api/v1/agents/{agent_id}/messages", {"content": "hi", "webhook_url": url}),
            (f"/api/v1/agents/{agent_id}/interrupt", {"webhook_url": url}),
        ):
            reply = server.http.post(path, json=body)
            assert reply.status_code == 422, (url, reply.text)
            error = reply.json()
            assert error["error"] == "invalid_webhook_url", error
            assert problem in error["message"], error
            if "(" in problem:  # a name: the message says what it resolved to
                assert "loopback" in error["message"] or "private" in error["message"], error
            assert "allowed_hosts" in error["message"]
    # Agents take no webhook_url at all.
    created = server.http.post(
        "/api/v1/agents", json={"owner_id": "alice", "webhook_url": "http://10.0.0.1/"}
    )
    assert created.status_code == 422 and "webhook_url" in created.json()["message"]

    # The server keeps serving.
    assert server.http.get("/healthz").status_code == 200
    ok = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "hi"})
    assert ok.status_code == 202
    assert server.wait_final(agent_id, ok.json()["request_id"])[-1]["outcome"] == "succeeded"
