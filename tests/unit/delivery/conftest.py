"""Fixtures for webhook delivery: outbox rows, real HTTP receivers, dispatchers.

The migrated database (`db`, SQLite and PostgreSQL) comes from tests/unit/conftest.py.

Everything is offered as a fixture (no imports from this file), so test modules work under any
pytest import mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from forge.config import WebhookSettings
from forge.core import ids
from forge.delivery import WebhookDispatcher
from forge.store.db import Database
from forge.store.tables import AgentRow, DeliveryRow, EventRow


def fast_settings(**overrides: object) -> WebhookSettings:
    """Settings for tests: loopback allowed, tiny retry schedule, no jitter."""
    values: dict[str, object] = {
        "retry_schedule_seconds": [0.05, 0.05, 0.05],
        "jitter": 0.0,
        "timeout_seconds": 2.0,
        "allow_private": True,
    }
    values.update(overrides)
    return WebhookSettings.model_validate(values)


@pytest.fixture(name="fast_settings")
def fast_settings_fixture() -> Callable[..., WebhookSettings]:
    """`fast_settings(**overrides)`: loopback allowed, schedule [0.05] * 3, no jitter."""
    return fast_settings


async def add_deliveries(
    db: Database,
    url: str,
    count: int,
    *,
    agent_id: str | None = None,
    secret: str | None = None,
    first_seq: int = 1,
    body: Callable[[str, int], str] | None = None,
) -> list[str]:
    """Append `count` events to an agent (made if needed) with one delivery each to `url`.

    Returns the event ids in seq order. The default body is {"event_id", "agent_id", "seq"}.
    """
    agent = agent_id or ids.agent_id()
    now = time.time()
    async with db.write() as session:
        if await session.get(AgentRow, agent) is None:
            agent_row = AgentRow(
                id=agent, owner_id="owner", profile="default", executor="command", status="ready"
            )
            session.add(agent_row)
            await session.flush()
        events = []
        for seq in range(first_seq, first_seq + count):
            event_id = ids.event_id()
            text = (
                body(event_id, seq)
                if body
                else json.dumps({"event_id": event_id, "agent_id": agent, "seq": seq})
            )
            events.append(
                EventRow(id=event_id, agent_id=agent, seq=seq, event_type="agent.event", body=text)
            )
        session.add_all(events)
        await (
            session.flush()
        )  # events before deliveries (foreign key); no ORM relationship orders them
        session.add_all(
            DeliveryRow(
                id=ids.delivery_id(),
                event_id=event.id,
                agent_id=agent,
                request_id=None,
                seq=event.seq,
                endpoint_url=url,
                secret=secret,
                status="pending",
                attempts=0,
                next_attempt_at=now,
            )
            for event in events
        )
        event_ids = [event.id for event in events]
    return event_ids


@pytest.fixture(name="add_deliveries")
def add_deliveries_fixture() -> Callable[..., Awaitable[list[str]]]:
    """`await add_deliveries(db, url, count, agent_id=..., secret=..., first_seq=..., body=...)`."""
    return add_deliveries


async def deliveries_by_event(db: Database) -> dict[str, DeliveryRow]:
    async with db.read() as session:
        rows = (await session.execute(select(DeliveryRow))).scalars().all()
    return {row.event_id: row for row in rows}


@pytest.fixture(name="deliveries_by_event")
def deliveries_by_event_fixture() -> Callable[[Database], Awaitable[dict[str, DeliveryRow]]]:
    """`await deliveries_by_event(db)`: every delivery row, keyed by event id."""
    return deliveries_by_event


async def wait_until(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool], within: float = 5.0
) -> None:
    """Poll `predicate` until it is true; fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Awaitable[None]]:
    """`await wait_until(predicate, within=5.0)`; the predicate may be async."""
    return wait_until


# ---- a real HTTP/1.1 receiver on 127.0.0.1 -------------------------------------------------------


@dataclass
class Received:
    """One request a receiver got."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float

    def json(self) -> dict[str, object]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


# What a responder returns: a status, (status, headers) or (status, headers, body).
Reply = int | tuple[int, dict[str, str]] | tuple[int, dict[str, str], bytes]
Responder = Callable[[Received], Awaitable[Reply] | Reply]


class Receiver:
    """An asyncio HTTP server that records requests and answers with `respond` (200 by default)."""

    def __init__(self, respond: Responder | None = None) -> None:
        self.respond: Responder = respond or (lambda _request: 200)
        self.requests: list[Received] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    def received_json(self) -> list[dict[str, object]]:
        return [request.json() for request in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Received(method, path, headers, body, time.monotonic())
                self.requests.append(request)
                reply = self.respond(request)
                if inspect.isawaitable(reply):
                    reply = await reply
                status, extra, content = _unpack(reply)
                out = [f"HTTP/1.1 {status} X", f"content-length: {len(content)}"]
                out += [f"{name}: {value}" for name, value in extra.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + content)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _unpack(reply: object) -> tuple[int, dict[str, str], bytes]:
    if isinstance(reply, int):
        return reply, {}, b"ok"
    assert isinstance(reply, tuple)
    if len(reply) == 2:
        return reply[0], reply[1], b"ok"
    return reply[0], reply[1], reply[2]


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    """Make receivers with `await receivers(respond)`; all are closed after the test."""
    made: list[Receiver] = []

    async def make(respond: Responder | None = None) -> Receiver:
        receiver = await Receiver(respond).start()
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        await receiver.close()


@pytest.fixture
async def dispatchers() -> AsyncIterator[Callable[..., Awaitable[WebhookDispatcher]]]:
    """Start dispatchers with `await dispatchers(db, settings)`; all are stopped after the test."""
    started: list[WebhookDispatcher] = []

    async def make(
        database: Database, settings: WebhookSettings, cls: type[WebhookDispatcher] | None = None
    ) -> WebhookDispatcher:
        dispatcher = (cls or WebhookDispatcher)(database, settings)
        await dispatcher.start()
        started.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in started:
        await dispatcher.stop(grace_seconds=0.1)
