"""Live streams on a real `forge serve`: WebSocket replay and resume, refusals before the upgrade,
SSE keep-alive, a consumer that stops reading, and a graceful stop with streams open."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.integration.conftest import ForgeServer, runner_pids, wait_for
from tests.support.streams import StreamFollower

pytestmark = pytest.mark.integration

TICKER = """
[profiles.ticker]
executor = "command"
command = "for i in $(seq 1 20); do echo tick $i; sleep 0.1; done"
"""


def _ws_url(server: ForgeServer, agent_id: str, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/api/v1/agents/{agent_id}/stream{query}"


def _send(server: ForgeServer, agent_id: str, content: str = "go") -> str:
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": content})
    assert reply.status_code == 202, reply.text
    request_id: str = reply.json()["request_id"]
    return request_id


def test_websocket_replays_then_follows_live_and_resumes_after_a_seq(forge_server: Any) -> None:
    server: ForgeServer = forge_server(TICKER)
    agent_id = server.create_agent(profile="ticker")["id"]
    first = _send(server, agent_id)
    done = server.wait_final(agent_id, first)
    n = len(done)

    # Connected before the second run: the first run is replayed, the second arrives live.
    with connect(_ws_url(server, agent_id)) as ws:
        replayed = [json.loads(ws.recv(timeout=10)) for _ in range(n)]
        assert replayed == done
        second = _send(server, agent_id)
        live: list[dict[str, Any]] = []
        while not (live and live[-1]["is_final"]):
            live.append(json.loads(ws.recv(timeout=20)))
    assert [e["seq"] for e in live] == list(range(n + 1, n + len(live) + 1))
    assert {e["request_id"] for e in live} == {second}
    assert [e["entry"]["text"] for e in live if e["event_type"] == "agent.event"] == [
        f"tick {i}" for i in range(1, 21)
    ]

    # after= resumes exactly after the seq given.
    # (It stops reading with frames still coming: a short close_timeout keeps the test quick.)
    with connect(_ws_url(server, agent_id, f"?after={n + 3}"), close_timeout=1) as ws:
        assert json.loads(ws.recv(timeout=10))["seq"] == n + 4


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("?after=abc", 422, "after must be a whole number"),
        ("?after=-1", 422, "after must be a whole number"),
        ("?after=99999999999999999999", 422, "after must be a whole number"),
        ("?after=%C2%B2", 422, "after must be a whole number"),  # a superscript two
        ("?user_id=bob", 404, "not found"),
        ("?user_id=%20bad", 422, "user_id must match"),
    ],
)
def test_websocket_refuses_bad_requests_before_the_upgrade(
    forge_server: Any, query: str, status: int, words: str
) -> None:
    server: ForgeServer = forge_server()
    agent_id = server.create_agent()["id"]
    with pytest.raises(InvalidStatus) as refused:
        connect(_ws_url(server, agent_id, query), open_timeout=5)
    response = refused.value.response
    assert response.status_code == status
    assert words in json.loads(response.body)["message"]
    # An unknown agent is a 404 with the REST routes' error body.
    with pytest.raises(InvalidStatus) as missing:
        connect(_ws_url(server, "ag_nope"), open_timeout=5)
    assert missing.value.response.status_code == 404
    assert json.loads(missing.value.response.body)["error"] == "agent_not_found"
    assert server.http.get("/healthz").status_code == 200


def test_sse_sends_keep_alive_comments_while_idle(forge_server: Any) -> None:
    server: ForgeServer = forge_server("[sse]\nkeepalive_seconds = 0.3\n")
    agent_id = server.create_agent()["id"]
    seen = b""
    with server.http.stream(
        "GET", f"/api/v1/agents/{agent_id}/events", headers={"accept": "text/event-stream"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for chunk in response.iter_raw():
            seen += chunk
            if seen.count(b": keep-alive\n\n") >= 2:
                break
    assert seen.startswith(b"retry: 2000\n")


def test_live_streams_of_a_deleted_agent_end(forge_server: Any) -> None:
    server: ForgeServer = forge_server("[sse]\nkeepalive_seconds = 0.3\n")
    agent_id = server.create_agent()["id"]
    events = server.wait_final(agent_id, _send(server, agent_id, "hello"))
    chunks: list[bytes] = []

    def read_sse() -> None:
        with (
            httpx.Client(base_url=server.base_url, timeout=30) as client,
            client.stream(
                "GET", f"/api/v1/agents/{agent_id}/events", headers={"accept": "text/event-stream"}
            ) as response,
        ):
            chunks.extend(response.iter_raw())

    reader = threading.Thread(target=read_sse, daemon=True)
    reader.start()
    wait_for(lambda: f"id: {len(events)}\n".encode() in b"".join(chunks))
    assert server.http.delete(f"/api/v1/agents/{agent_id}").status_code == 204
    # The history was sent; once the stream is idle it sees the agent is gone and ends.
    reader.join(timeout=10)
    assert not reader.is_alive(), "the SSE stream of a deleted agent did not end"


# Each line is 2 KB of random text (compression cannot shrink it); the message says how many.
FLOOD_LINES = 25_000
FLOOD = """
[profiles.flood]
executor = "command"
command = '''python3 -c "import base64, os, sys
for _ in range(int(sys.stdin.read())):
    sys.stdout.write(base64.b64encode(os.urandom(1500)).decode() + chr(10))"'''

[websocket]
send_timeout_seconds = {send_timeout}
"""
# Longer than the flood takes here (about 9 s), so the stalled client stays stalled throughout.
SEND_TIMEOUT = 15.0


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _server_has_connection_from(server_port: int, client_port: int) -> bool:
    """Whether the kernel still has an established TCP connection server_port <- client_port."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
                and state == "01"  # ESTABLISHED
            ):
                return True
    return False


def _stalled_sse_client(server: ForgeServer, agent_id: str, after: int) -> socket.socket:
    """An SSE subscriber that sends its request and never reads the answer."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        f"GET /api/v1/agents/{agent_id}/events?after={after} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    return sock


@pytest.mark.timeout(300)
def test_consumers_that_stop_reading_cost_bounded_memory_and_are_closed(
    forge_server: Any,
) -> None:
    server: ForgeServer = forge_server(FLOOD.format(send_timeout=SEND_TIMEOUT))
    assert server.proc is not None
    agent_id = server.create_agent(profile="flood")["id"]
    # Warm up with the same flood and a reader that keeps up: memory settles at what the server
    # needs for a flood; the stalled clients must add little to that.
    warm_up = StreamFollower(server.base_url, agent_id).start()
    warm_up.wait_for_final(_send(server, agent_id, str(FLOOD_LINES)), timeout=120)
    warm_up.stop()
    warm = server.http.get(f"/api/v1/agents/{agent_id}").json()["last_seq"]
    baseline = _rss_bytes(server.proc.pid)

    # Three consumers that take a frame or two and then read nothing more (pings off too, or
    # their own keep-alive would give up first): one WebSocket client reads again once the
    # server gives up on it, one never does, and an SSE client never does either.
    url = _ws_url(server, agent_id, f"?after={warm}")
    sse = _stalled_sse_client(server, agent_id, warm)
    with (
        connect(url, max_queue=1, ping_interval=None) as slow,
        connect(url, max_queue=1, ping_interval=None) as gone,
    ):
        _flood_past_stalled_clients(server, agent_id, warm, baseline, slow)
        # The one that never reads again is dropped by the server (after the close frame's
        # grace), not left holding its socket and unsent data.
        gone_port = gone.local_address[1]
        wait_for(lambda: not _server_has_connection_from(server.port, gone_port), timeout=30)
    assert server.http.get("/healthz").status_code == 200

    # The stalled SSE client would hold a graceful shutdown up; it is aborted instead.
    proc = server.proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=8) in (0, -signal.SIGTERM)
    assert "timeout graceful shutdown exceeded" not in server.log()
    server.proc = None
    sse.close()


def _flood_past_stalled_clients(
    server: ForgeServer, agent_id: str, warm: int, baseline: int, slow: Any
) -> None:
    fast = StreamFollower(server.base_url, agent_id, after=warm).start()
    peak = baseline
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.is_set():
            peak = max(peak, _rss_bytes(server.proc.pid))  # type: ignore[union-attr]
            time.sleep(0.05)

    # After send_timeout_seconds without progress the server gives up on the stalled client.
    # Reading again within the close grace, it gets a gapless prefix, then the close code that
    # says why and where to resume.
    received: list[int] = []
    closes: list[ConnectionClosed] = []

    def read_once_given_up() -> None:
        wait_for(lambda: f"took over {SEND_TIMEOUT:g}s to accept a frame" in server.log(), 90)
        try:
            while True:
                received.append(json.loads(slow.recv(timeout=30))["seq"])
        except ConnectionClosed as exc:
            closes.append(exc)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    reader = threading.Thread(target=read_once_given_up, daemon=True)
    reader.start()
    request_id = _send(server, agent_id, str(FLOOD_LINES))
    try:
        fast.wait_for_final(request_id, timeout=180)
    finally:
        sampling.set()
        sampler.join()
        fast.stop()

    # The other client received every event of the flood, in order, once, while the stalled
    # one held its place in the log.
    last_seq = server.http.get(f"/api/v1/agents/{agent_id}").json()["last_seq"]
    assert last_seq > warm + FLOOD_LINES
    assert [s for s in fast.seqs if s > warm] == list(range(warm + 1, last_seq + 1))
    # The flood was ~50 MB. Held for the stalled clients, it would all stay in memory (several
    # times that as Python objects); read from the log at each client's pace, the server's peak
    # RSS moves by the flood's own transient use: 10-32 MiB in runs on this shared 2-core machine.
    growth = peak - baseline
    assert growth < 40 * 1024 * 1024, f"server RSS grew by {growth / 2**20:.1f} MiB"

    reader.join(timeout=120)
    assert closes, f"the stalled client was not closed; it read {len(received)} events"
    assert received == list(range(warm + 1, warm + 1 + len(received)))
    assert len(received) < FLOOD_LINES
    close = closes[0].rcvd
    assert close is not None and close.code == 4008
    assert f"after={received[-1]}" in close.reason


def test_sigterm_with_streams_open_exits_promptly_and_leaves_the_run_going(
    forge_server: Any,
) -> None:
    server: ForgeServer = forge_server(TICKER.replace("0.1", "0.2"))
    assert server.proc is not None
    agent_id = server.create_agent(profile="ticker")["id"]
    follower = StreamFollower(server.base_url, agent_id).start()
    sse_chunks: list[bytes] = []

    def read_sse() -> None:
        with (
            httpx.Client(base_url=server.base_url, timeout=30) as client,
            client.stream(
                "GET",
                f"/api/v1/agents/{agent_id}/events",
                headers={"accept": "text/event-stream"},
            ) as response,
        ):
            sse_chunks.extend(response.iter_raw())

    sse = threading.Thread(target=read_sse, daemon=True)
    sse.start()
    request_id = _send(server, agent_id)
    wait_for(lambda: len(follower.seqs) >= 4)

    runner_pids_before = runner_pids(str(server.data_dir))
    assert runner_pids_before
    proc = server.proc
    proc.send_signal(signal.SIGTERM)
    # Open streams do not hold the shutdown up: the server ends them and exits by itself.
    # (uvicorn re-raises the signal once it has shut down cleanly: -SIGTERM is a clean exit.)
    assert proc.wait(timeout=8) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log()
    sse.join(timeout=5)
    assert not sse.is_alive(), "the SSE response did not end"
    assert 1012 in follower.close_codes
    # The runner kept running.
    assert all(_alive(pid) for pid in runner_pids_before)

    server.proc = None
    server.start()
    follower.wait_for_final(request_id)
    follower.stop()
    events = server.wait_final(agent_id, request_id)
    assert follower.seqs == [e["seq"] for e in events] == list(range(1, len(events) + 1))
    ticks = [e["entry"]["text"] for e in events if e["event_type"] == "agent.event"]
    assert ticks == [f"tick {i}" for i in range(1, 21)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
