"""Two `forge serve` replicas over one PostgreSQL database behave as one system: live events
cross replicas, a replica killed mid-run has its run adopted by the other, and concurrent work
spread over both keeps every `seq` once, every run once, and `max_concurrent` across both."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.integration.conftest import ForgeServer, WebhookReceiver, wait_for
from tests.support.postgres import create_database, drop_database, require_postgres

pytestmark = pytest.mark.integration

TICKS = 30
WORK_SECONDS = 0.4


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the replicas, dropped after."""
    asyncio.run(require_postgres())
    url = asyncio.run(create_database())
    yield url
    asyncio.run(drop_database(url))


def replica_config(url: str, *, max_concurrent: int = 20, ticks: int = TICKS) -> str:
    return f"""
max_concurrent = {max_concurrent}

[database]
url = "{url}"

[cluster]
lease_seconds = 3

[profiles.ticker]
executor = "command"
command = "for i in $(seq 1 {ticks}); do echo tick $i; sleep 0.1; done"

[profiles.work]
executor = "command"
command = "echo start $FORGE_REQUEST_ID; sleep {WORK_SECONDS}; echo end $FORGE_REQUEST_ID"
"""


def two_replicas(forge_server: Any, tmp_path: Path, config: str) -> tuple[ForgeServer, ForgeServer]:
    shared = tmp_path / "shared-data"
    a: ForgeServer = forge_server(config, data_dir=shared)
    b: ForgeServer = forge_server(config, data_dir=shared)
    return a, b


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [str((e.get("entry") or {}).get("text", "")) for e in events]


def assert_gapless(events: list[dict[str, Any]]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_a_client_of_one_replica_sees_live_what_another_runs(
    pg_url: str, forge_server: Any, tmp_path: Path
) -> None:
    a, b = two_replicas(forge_server, tmp_path, replica_config(pg_url))
    agent_id = a.create_agent(profile="ticker")["id"]
    frames: list[tuple[float, dict[str, Any]]] = []
    with connect(f"ws://127.0.0.1:{b.port}/api/v1/agents/{agent_id}/stream") as ws:
        reply = a.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "go"})
        assert reply.status_code == 202, reply.text
        while not frames or not frames[-1][1]["is_final"]:
            frames.append((time.monotonic(), json.loads(ws.recv(timeout=30))))
    events = [frame for _, frame in frames]
    assert_gapless(events)
    assert [t for t in texts(events) if t.startswith("tick")] == [
        f"tick {i}" for i in range(1, TICKS + 1)
    ]
    assert events[-1]["outcome"] == "succeeded"
    # Live: the first tick reached replica B's client long before the run (3 s) ended.
    first_tick = next(at for at, e in frames if texts([e]) == ["tick 1"])
    assert frames[-1][0] - first_tick > 1.0

    # A message sent to B for the agent A supervises runs too (A's scheduler is told).
    reply = b.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "again"})
    assert reply.status_code == 202, reply.text
    run = b.wait_final(agent_id, reply.json()["request_id"], timeout=30)
    assert run[-1]["outcome"] == "succeeded"
    assert_gapless(b.history(agent_id))


def test_a_run_survives_its_replica_being_killed(
    pg_url: str, forge_server: Any, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    ticks = 60
    a, b = two_replicas(forge_server, tmp_path, replica_config(pg_url, ticks=ticks))
    agent_id = a.create_agent(profile="ticker")["id"]
    reply = a.http.post(
        f"/api/v1/agents/{agent_id}/messages",
        json={"content": "go", "webhook_url": receiver.url, "webhook_secret": "whsec_replicas"},
    )
    assert reply.status_code == 202, reply.text
    request_id = reply.json()["request_id"]
    receiver.wait_for(lambda got: len(got) >= 5)
    a.stop(signal.SIGKILL)

    # B adopts the agent once A's lease lapses, reattaches to the runner, and the run ends.
    run = b.wait_final(agent_id, request_id, timeout=90)
    assert run[-1]["outcome"] == "succeeded", run[-1]
    events = b.history(agent_id)
    assert_gapless(events)
    assert [e["seq"] for e in events if e["is_final"]] == [events[-1]["seq"]]
    assert [t for t in texts(events) if t.startswith("tick")] == [
        f"tick {i}" for i in range(1, ticks + 1)
    ]
    # The webhook receiver has every seq (some perhaps twice: at least once across a crash).
    last = events[-1]["seq"]
    receiver.wait_for(lambda got: {r.json["seq"] for r in got} >= set(range(1, last + 1)), 60)
    assert "adopting" in b.log()


def _interval(events: list[dict[str, Any]], request_id: str) -> tuple[datetime, datetime]:
    stamps = [
        datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        for e in events
        if e["request_id"] == request_id
    ]
    return min(stamps), max(stamps)


def test_concurrent_work_over_both_replicas_keeps_every_seq_and_run_once_within_limits(
    pg_url: str, forge_server: Any, tmp_path: Path
) -> None:
    limit, agents_n, messages_n = 3, 8, 3
    a, b = two_replicas(forge_server, tmp_path, replica_config(pg_url, max_concurrent=limit))
    replicas = [a, b]

    def create(i: int) -> str:
        agent: dict[str, Any] = replicas[i % 2].create_agent(profile="work")
        return str(agent["id"])

    sent: dict[str, list[str]] = {}
    lock = threading.Lock()

    def send(job: tuple[int, str, int]) -> None:
        i, agent_id, n = job
        server = replicas[(i + n) % 2]
        reply = server.http.post(
            f"/api/v1/agents/{agent_id}/messages", json={"content": f"job {n}"}
        )
        assert reply.status_code == 202, reply.text
        with lock:
            sent.setdefault(agent_id, []).append(reply.json()["request_id"])

    with ThreadPoolExecutor(8) as pool:
        agent_ids = list(pool.map(create, range(agents_n)))
        jobs = [(i, agent_id, n) for i, agent_id in enumerate(agent_ids) for n in range(messages_n)]
        list(pool.map(send, jobs))

    def all_done() -> bool:
        for agent_id, request_ids in sent.items():
            finals = {e["request_id"] for e in a.history(agent_id) if e["is_final"]}
            if not set(request_ids) <= finals:
                return False
        return True

    wait_for(all_done, timeout=120)
    intervals = []
    for agent_id, request_ids in sent.items():
        events = b.history(agent_id)
        assert_gapless(events)
        for request_id in request_ids:
            run = [e for e in events if e["request_id"] == request_id]
            finals = [e for e in run if e["is_final"]]
            assert len(finals) == 1 and finals[0]["outcome"] == "succeeded", run
            # Executed once: one start and one end line.
            assert texts(run).count(f"start {request_id}") == 1, texts(run)
            assert texts(run).count(f"end {request_id}") == 1
            intervals.append(_interval(events, request_id))
    assert len(intervals) == agents_n * messages_n
    # The most runs at once, from their recorded times, across both replicas.
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert most <= limit
    assert most >= 2  # they did run side by side, so the limit was what held them


def test_an_interrupt_sent_to_the_other_replica_reaches_the_runner(
    pg_url: str, forge_server: Any, tmp_path: Path
) -> None:
    a, b = two_replicas(forge_server, tmp_path, replica_config(pg_url, ticks=200))
    agent_id = a.create_agent(profile="ticker")["id"]
    reply = a.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "go"})
    request_id = reply.json()["request_id"]
    wait_for(lambda: any(t.startswith("tick") for t in texts(a.history(agent_id))))
    # B does not supervise the agent: it records the interrupt and tells A, which sends it.
    interrupted = b.http.post(f"/api/v1/agents/{agent_id}/interrupt", json={})
    assert interrupted.status_code == 202, interrupted.text
    run = b.wait_final(agent_id, request_id, timeout=30)
    assert run[-1]["outcome"] == "interrupted"
    assert len([t for t in texts(run) if t.startswith("tick")]) < 200


def test_a_replica_with_a_fixed_id_takes_its_agents_back_when_restarted(
    pg_url: str, forge_server: Any, tmp_path: Path
) -> None:
    config = replica_config(pg_url, ticks=60).replace(
        "lease_seconds = 3", 'lease_seconds = 600\nreplica_id = "forge-0"'
    )
    server: ForgeServer = forge_server(config, data_dir=tmp_path / "shared-data")
    agent_id = server.create_agent(profile="ticker")["id"]
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "go"})
    request_id = reply.json()["request_id"]
    wait_for(lambda: any(t.startswith("tick") for t in texts(server.history(agent_id))))
    server.stop(signal.SIGKILL)
    # Its leases would last ten minutes: only taking back its own lets the run end now.
    server.start()
    run = server.wait_final(agent_id, request_id, timeout=60)
    assert run[-1]["outcome"] == "succeeded"
    events = server.history(agent_id)
    assert_gapless(events)
    assert [t for t in texts(events) if t.startswith("tick")] == [f"tick {i}" for i in range(1, 61)]
