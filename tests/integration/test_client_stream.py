"""`stream()` of both clients, over SSE and WebSocket, against a real `forge serve` that is killed
(SIGKILL) and restarted twice mid-run: each stream yields every seq of the log exactly once, in
order, and reconnects by itself."""

from __future__ import annotations

import asyncio
import gc
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from forge.client import (
    AsyncForgeClient,
    AuthenticationError,
    ForgeClient,
    NotFoundError,
    StreamLostError,
    Transport,
)
from forge.client.models import EventEnvelope
from tests.integration.conftest import ForgeServer, free_port

# Ticks until the test creates `go` in the workspace, then one last line.
GATED = """
[profiles.gated]
executor = "command"
command = "i=0; while [ ! -e go ]; do i=$((i+1)); echo tick $i; sleep 0.1; done; echo done"
"""
QUICK = """
[profiles.quick]
executor = "command"
command = "echo one; echo two"
"""
WAIT_SECONDS = 60


class Consumer:
    """One client stream read to its end in a thread (sync) or a task (async); what it yielded."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[EventEnvelope] = []
        self.connections = 0
        self.error: BaseException | None = None
        self.done = threading.Event()

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    def record(self, event: EventEnvelope, connections: int) -> None:
        self.events.append(event)
        self.connections = connections


def _read_sync(server: ForgeServer, agent_id: str, request_id: str, consumer: Consumer) -> None:
    transport: Transport = "websocket" if "websocket" in consumer.name else "sse"
    try:
        with ForgeClient(server.base_url) as client:
            stream = client.stream(agent_id, request_id=request_id, transport=transport)
            for event in stream:
                consumer.record(event, stream.connections)
    except BaseException as exc:  # reported by the test
        consumer.error = exc
    finally:
        consumer.done.set()


async def _read_async(
    server: ForgeServer, agent_id: str, request_id: str, consumer: Consumer
) -> None:
    transport: Transport = "websocket" if "websocket" in consumer.name else "sse"
    try:
        async with AsyncForgeClient(server.base_url) as client:
            stream = client.stream(agent_id, request_id=request_id, transport=transport)
            async for event in stream:
                consumer.record(event, stream.connections)
    except BaseException as exc:
        consumer.error = exc
    finally:
        consumer.done.set()


def _wait(condition: Any, what: str, server: ForgeServer) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting: {what}\n{server.log()[-3000:]}"
        time.sleep(0.05)


def test_streams_yield_every_seq_once_while_the_server_is_killed_twice(
    forge_server: Any,
) -> None:
    server: ForgeServer = forge_server(GATED)
    agent = server.create_agent(profile="gated")
    agent_id, workspace = agent["id"], Path(agent["workspace_path"])
    request_id = server.http.post(
        f"/api/v1/agents/{agent_id}/messages", json={"content": "go"}
    ).json()["request_id"]

    consumers = [
        Consumer(f"{kind} {t}") for kind in ("sync", "async") for t in ("sse", "websocket")
    ]
    threads = [
        threading.Thread(target=_read_sync, args=(server, agent_id, request_id, c), daemon=True)
        for c in consumers[:2]
    ]

    async def read_async() -> None:
        await asyncio.gather(*(_read_async(server, agent_id, request_id, c) for c in consumers[2:]))

    threads.append(threading.Thread(target=asyncio.run, args=(read_async(),), daemon=True))
    for thread in threads:
        thread.start()

    for kill in range(2):
        # Every stream is live and has seen events this server wrote: then kill the server.
        floor = max(len(server.history(agent_id)), 3)
        _wait(
            lambda floor=floor: all(c.last_seq >= floor or c.done.is_set() for c in consumers),
            f"every stream past seq {floor} before kill {kill + 1}",
            server,
        )
        assert not any(c.done.is_set() for c in consumers), [c.error for c in consumers]
        server.stop(signal.SIGKILL)
        time.sleep(0.5)  # the runner keeps ticking into its own log while nobody listens
        server.start()

    # The streams catch up with what was written while the server was down, then the run ends.
    floor = len(server.history(agent_id))
    _wait(
        lambda: all(c.last_seq >= floor or c.done.is_set() for c in consumers),
        "the streams to catch up after the second restart",
        server,
    )
    (workspace / "go").touch()
    for consumer in consumers:
        assert consumer.done.wait(WAIT_SECONDS), f"{consumer.name} did not end"
    for thread in threads:
        thread.join(timeout=10)

    log = server.wait_final(agent_id, request_id)
    seqs = [e["seq"] for e in log]
    assert seqs == list(range(1, len(seqs) + 1)) and log[-1]["is_final"]
    assert log[-1]["outcome"] == "succeeded"
    for consumer in consumers:
        assert consumer.error is None, f"{consumer.name}: {consumer.error!r}"
        assert [e.seq for e in consumer.events] == seqs, consumer.name
        assert [e.event_id for e in consumer.events] == [e["event_id"] for e in log]
        assert consumer.events[-1].is_final and consumer.events[-1].request_id == request_id
        # One connection before the kills and one after each at least.
        assert consumer.connections >= 3, (consumer.name, consumer.connections)

    # Each stream asked the server for the log from the start once, and after that resumed
    # where it was (`after=<last seq>`), rather than reading it again and dropping repeats.
    pattern = rf"/api/v1/agents/{agent_id}/(?:events|stream)\?after=(\d+)[\" ]"
    afters = [int(after) for after in re.findall(pattern, server.log())]
    assert afters.count(0) == len(consumers), afters
    assert len([after for after in afters if after > 0]) >= 2 * len(consumers), afters


def test_a_stream_ends_when_its_agent_is_deleted_and_refuses_an_unknown_one(
    forge_server: Any,
) -> None:
    server: ForgeServer = forge_server(GATED)
    agent_id = server.create_agent(profile="gated")["id"]
    server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "go"})
    with ForgeClient(server.base_url) as client:
        for transport in ("sse", "websocket"):
            with pytest.raises(NotFoundError) as refused:
                next(iter(client.stream("ag_unknown", transport=transport)))
            assert refused.value.code == "agent_not_found"

        seen: list[int] = []
        stream = client.stream(agent_id, transport="websocket")
        for event in stream:
            seen.append(event.seq)
            if len(seen) == 3:
                client.delete_agent(agent_id, graceful=False)
        # The loop ended by itself once the agent was gone: every seq once, in order.
        assert seen == list(range(1, len(seen) + 1)) and len(seen) >= 3


def test_a_stream_gives_up_after_reconnect_for_seconds_without_a_server() -> None:
    with ForgeClient(f"http://127.0.0.1:{free_port()}", max_retries=0) as client:
        stream = client.stream("ag_x", transport="sse", reconnect_for=0.5)
        with pytest.raises(StreamLostError) as lost:
            list(stream)
    assert lost.value.code == "stream_lost" and "ag_x" in lost.value.message


def test_a_stream_left_early_gives_its_connection_back_at_once(forge_server: Any) -> None:
    """With one connection in the pool and the garbage collector off, a request right after a
    stream the caller stopped reading (at its run's final event, or mid-way) gets that
    connection: the stream closed it when it was dropped."""
    server: ForgeServer = forge_server(QUICK)
    agent_id = server.create_agent(profile="quick")["id"]
    one_connection = httpx.HTTPTransport(limits=httpx.Limits(max_connections=1))
    gc.disable()
    try:
        with ForgeClient(
            server.base_url, timeout=5, max_retries=0, transport=one_connection
        ) as client:
            run = client.send_message(agent_id, "go")
            for event in client.stream(agent_id, request_id=run.request_id):
                if event.is_final:
                    break
            assert client.get_agent(agent_id).last_seq == event.seq
            assert next(iter(client.stream(agent_id, after=1))).seq == 2
            assert client.get_agent(agent_id).id == agent_id
    finally:
        gc.enable()


async def test_an_async_stream_left_early_gives_its_connection_back_at_once(
    forge_server: Any,
) -> None:
    """The same with the async client: its connection is closed when the stream is closed,
    not later when the event loop gets round to finalizing the generators inside it (which
    would also free it for the next request, so the pool itself is looked at right away)."""
    server: ForgeServer = forge_server(QUICK)
    agent_id = server.create_agent(profile="quick")["id"]
    one_connection = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
    async with AsyncForgeClient(
        server.base_url, timeout=5, max_retries=0, transport=one_connection
    ) as client:
        run = await client.send_message(agent_id, "go")
        async with client.stream(agent_id, request_id=run.request_id) as stream:
            async for event in stream:
                if event.is_final:
                    break
        assert not _busy(one_connection)
        assert (await client.get_agent(agent_id)).last_seq == event.seq
        async with client.stream(agent_id, after=1) as stream:
            second = await anext(aiter(stream))
        assert not _busy(one_connection)
        assert second.seq == 2
        assert (await client.get_agent(agent_id)).id == agent_id


def _busy(transport: httpx.AsyncHTTPTransport) -> list[Any]:
    """The pool's connections still serving a request (httpcore's pool, behind the transport)."""
    pool = transport._pool
    return [c for c in pool.connections if not (c.is_idle() or c.is_closed())]


def test_a_stream_whose_key_is_revoked_raises_authentication_error(forge_server: Any) -> None:
    """The server ends the streams of a revoked key (at their next idle check); the client
    asks about the agent, is refused, and raises rather than reconnecting or ending quietly."""
    admin_key = "a" * 32
    server: ForgeServer = forge_server(
        QUICK + "\n[auth]\nenabled = true\n\n[sse]\nkeepalive_seconds = 0.5\n",
        env={"FORGE_API_KEY": admin_key},
    )
    with ForgeClient(server.base_url, admin_key) as admin:
        key = admin.create_key("alice")
        with ForgeClient(server.base_url, key.key) as alice:
            agent = alice.create_agent(profile="quick", wait=True)
            alice.send_message(agent.id, "go")
            streams = [iter(alice.stream(agent.id, transport=t)) for t in ("sse", "websocket")]
            for events in streams:
                while not next(events).is_final:
                    pass
            admin.revoke_key(key.key_id)
            for events in streams:
                with pytest.raises(AuthenticationError) as refused:
                    next(events)
                assert refused.value.code == "invalid_api_key", refused.value
