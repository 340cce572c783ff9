"""Retries keep one webhook-id and the order; a restart keeps agents, runs and history."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer, Received, WebhookReceiver
from tests.support.streams import StreamFollower

pytestmark = pytest.mark.integration

CHATTY = (
    '[profiles.chatty]\nexecutor = "command"\ncommand = "for i in 1 2 3 4; do echo line $i; done"\n'
)


def test_failed_deliveries_are_retried_with_one_webhook_id_in_order(
    forge_server: Any, receiver: WebhookReceiver
) -> None:
    failures = {"left": 2}

    def respond(request: Received) -> int:
        if request.json["seq"] == 1 and failures["left"] > 0:
            failures["left"] -= 1
            return 500
        return 200

    receiver.respond = respond
    server: ForgeServer = forge_server(CHATTY)
    agent_id = server.create_agent(profile="chatty")["id"]
    reply = server.http.post(
        f"/api/v1/agents/{agent_id}/messages",
        json={"content": "go", "webhook_url": receiver.url, "webhook_secret": "s3cret"},
    )
    assert reply.status_code == 202
    events = server.wait_final(agent_id, reply.json()["request_id"])
    n = len(events)
    receiver.wait_for(lambda reqs: len(reqs) >= n + 2)
    seqs = [r.json["seq"] for r in receiver.requests]
    # Event 1 three times (500, 500, 200), then the rest in order, each once.
    assert seqs == [1, 1, 1, *range(2, n + 1)]
    first_ids = {r.headers["webhook-id"] for r in receiver.requests[:3]}
    assert first_ids == {events[0]["event_id"]}
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == n


def test_restart_keeps_agents_runs_and_history(
    forge_server: Any, receiver: WebhookReceiver
) -> None:
    server: ForgeServer = forge_server(CHATTY)
    agent_id = server.create_agent(profile="chatty", metadata={"k": "v"})["id"]
    first = server.http.post(
        f"/api/v1/agents/{agent_id}/messages", json={"content": "one", "request_id": "run-1"}
    )
    assert first.status_code == 202
    before = server.wait_final(agent_id, "run-1")
    agent_before = server.http.get(f"/api/v1/agents/{agent_id}").json()

    server.stop()
    server.start()

    agent_after = server.http.get(f"/api/v1/agents/{agent_id}").json()
    assert agent_after["id"] == agent_id and agent_after["metadata"] == {"k": "v"}
    assert agent_after["last_seq"] == agent_before["last_seq"] == len(before)
    assert server.history(agent_id) == before
    listed = server.http.get("/api/v1/agents", params={"user_id": "alice"}).json()
    assert [a["id"] for a in listed["agents"]] == [agent_id] and listed["total"] == 1
    # The run is remembered: the same request_id and body is recognised, not run again.
    again = server.http.post(
        f"/api/v1/agents/{agent_id}/messages", json={"content": "one", "request_id": "run-1"}
    )
    assert again.status_code == 202
    conflict = server.http.post(
        f"/api/v1/agents/{agent_id}/messages", json={"content": "two", "request_id": "run-1"}
    )
    assert conflict.status_code == 409

    # The agent keeps working after the restart; its log continues without a gap.
    second = server.http.post(
        f"/api/v1/agents/{agent_id}/messages",
        json={"content": "two", "request_id": "run-2", "webhook_url": receiver.url},
    )
    assert second.status_code == 202
    run2 = server.wait_final(agent_id, "run-2")
    assert run2[-1]["outcome"] == "succeeded"
    everything = server.history(agent_id)
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    receiver.wait_for(lambda reqs: len(reqs) >= len(run2))
    assert [r.json["seq"] for r in receiver.requests] == [e["seq"] for e in run2]


def test_pending_webhooks_survive_a_restart(forge_server: Any, receiver: WebhookReceiver) -> None:
    server: ForgeServer = forge_server(CHATTY)
    receiver.respond = lambda _r: 503
    agent_id = server.create_agent(profile="chatty")["id"]
    reply = server.http.post(
        f"/api/v1/agents/{agent_id}/messages", json={"content": "go", "webhook_url": receiver.url}
    )
    events = server.wait_final(agent_id, reply.json()["request_id"])
    receiver.wait_for(lambda reqs: len(reqs) >= 1)
    server.stop()
    receiver.respond = lambda _r: 200
    server.start()
    receiver.wait_for(
        lambda reqs: (
            [r.json["seq"] for r in reqs if r.json["seq"] > 1] == list(range(2, len(events) + 1))
        )
    )
    delivered = [r.json["seq"] for r in receiver.requests]
    # Only the head of the stream was tried while the endpoint failed; order held throughout.
    assert delivered == sorted(delivered)
    assert set(delivered) == set(range(1, len(events) + 1))


TICKER = """
[profiles.ticker]
executor = "command"
command = "for i in $(seq 1 30); do echo tick $i; sleep 0.1; done"
"""


def test_platform_crash_mid_run_loses_nothing(forge_server: Any, receiver: WebhookReceiver) -> None:
    server: ForgeServer = forge_server(TICKER)
    agent_id = server.create_agent(profile="ticker")["id"]
    reply = server.http.post(
        f"/api/v1/agents/{agent_id}/messages",
        json={"content": "go", "webhook_url": receiver.url, "webhook_secret": "s"},
    )
    request_id = reply.json()["request_id"]
    deadline = time.monotonic() + 20
    while len(server.history(agent_id)) < 5:
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)

    server.stop(signal.SIGKILL)
    time.sleep(1.0)  # the runner keeps working, and keeps its events, while nobody listens
    server.start()

    events = server.wait_final(agent_id, request_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    ticks = [e["entry"]["text"] for e in events if e["event_type"] == "agent.event"]
    assert ticks == [f"tick {i}" for i in range(1, 31)]
    assert events[-1]["outcome"] == "succeeded"
    assert [e["is_final"] for e in events].count(True) == 1
    # Every event reaches the webhook, in order; one sent just before the crash may come twice
    # (at-least-once, with the same webhook-id).
    receiver.wait_for(lambda reqs: {r.json["seq"] for r in reqs} == {e["seq"] for e in events})
    first_seen: list[int] = []
    for request in receiver.requests:
        seq = request.json["seq"]
        if seq not in first_seen:
            first_seen.append(seq)
    assert first_seen == [e["seq"] for e in events]


STEADY = """
[profiles.steady]
executor = "command"
command = "for i in $(seq 1 90); do echo tick $i; sleep 0.1; done"
"""


def test_repeated_platform_crashes_lose_nothing(
    forge_server: Any, receiver: WebhookReceiver
) -> None:
    """SIGKILL the platform three times during one run that emits steadily, restarting it each
    time: the log, the webhook receiver and a WebSocket client that resumes with `after=` all
    end with every event, in order."""
    server: ForgeServer = forge_server(STEADY)
    agent_id = server.create_agent(profile="steady")["id"]
    follower = StreamFollower(server.base_url, agent_id).start()
    reply = server.http.post(
        f"/api/v1/agents/{agent_id}/messages",
        json={"content": "go", "webhook_url": receiver.url, "webhook_secret": "s3cret"},
    )
    request_id = reply.json()["request_id"]

    for crash in range(3):
        # Let the run get further each time, then kill the platform mid-stream.
        target = 5 + 12 * crash
        deadline = time.monotonic() + 30
        while len(so_far := server.history(agent_id)) < target:
            assert time.monotonic() < deadline, f"the run stalled before crash {crash + 1}"
            time.sleep(0.05)
        assert not any(e["is_final"] for e in so_far), "the run ended before the crash"
        server.stop(signal.SIGKILL)
        time.sleep(0.7)  # the runner keeps working while nobody listens
        server.start()

    events = server.wait_final(agent_id, request_id, timeout=60)
    follower.wait_for_final(request_id)
    follower.stop()
    n = len(events)
    assert [e["seq"] for e in events] == list(range(1, n + 1))
    ticks = [e["entry"]["text"] for e in events if e["event_type"] == "agent.event"]
    assert ticks == [f"tick {i}" for i in range(1, 91)]
    assert [e["is_final"] for e in events].count(True) == 1 and events[-1]["is_final"]
    assert events[-1]["outcome"] == "succeeded"

    # The WebSocket client reconnected (after each crash it caught the server up) and saw
    # each event exactly once.
    assert follower.connects >= 2
    assert follower.seqs == list(range(1, n + 1))

    # The webhook receiver has every seq; a repeat is only a retry of the same message.
    receiver.wait_for(lambda reqs: {r.json["seq"] for r in reqs} == set(range(1, n + 1)))
    event_ids = {e["seq"]: e["event_id"] for e in events}
    for request in receiver.requests:
        assert request.headers["webhook-id"] == event_ids[request.json["seq"]]
    first_seen: list[int] = []
    for request in receiver.requests:
        if request.json["seq"] not in first_seen:
            first_seen.append(request.json["seq"])
    assert first_seen == list(range(1, n + 1))
