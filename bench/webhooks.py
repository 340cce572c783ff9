"""Webhook deliveries per second to a local receiver, with and without a stalled endpoint.

    .venv/bin/python bench/webhooks.py [--deliveries 20000] [--agents 50] [--stalled 1000] \
        [--stalled-agents 50] [--max-in-flight 64] [--timeout 2] [--repeat 1] [--live RATE] \
        [--json PATH] [--py-spy FILE]

The real `WebhookDispatcher` runs in this process on a SQLite file in a temporary directory; the
receiver is a separate process (a plain asyncio HTTP/1.1 server answering `204` on kept-alive
connections), so it takes no time from the dispatcher's event loop. Each run has a fresh
database and receiver:

- throughput: the outbox is filled through `EventLog.append` (the platform's own write path)
  with `--deliveries` signed deliveries of realistic envelopes (~300-600 bytes) spread over
  `--agents` agents, one run each with the receiver as `webhook_url`; then the dispatcher is
  started and the clock runs until the receiver has every delivery.
- stalled: the same, plus `--stalled` deliveries from `--stalled-agents` other agents to a second
  endpoint whose server accepts connections and never answers (`--timeout` per attempt, the
  default retry schedule), written first (an older backlog). The healthy endpoint's
  deliveries/s, its ratio to throughput, and its rate in the first `--timeout` seconds.
- live (`--live RATE`, optional): the dispatcher runs while events are appended at RATE a second
  (batches every 10 ms, `on_outbox` wakes it as `forge serve` does); reports append → receiver
  latency.

The receiver checks each request's `webhook-id` and both signatures; the run checks that every
delivery arrived (at least once) and that, per agent, first arrivals came in `seq` order.
With `--repeat N` both kinds run N times, alternately; the table shows the median and each run.
Prints a table and writes bench/results/webhooks.json; `--py-spy FILE` also records the first
throughput run (this process: the dispatcher and aiosqlite's thread) with py-spy.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import platform
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from forge.config import WebhookSettings
from forge.core import ids
from forge.core.eventlog import EventBus, EventLog
from forge.core.events import EventDraft
from forge.delivery.dispatcher import WebhookDispatcher
from forge.store.db import Database
from forge.store.tables import AgentRow, DeliveryRow, EventRow, RunRow

RESULTS = Path(__file__).parent / "results" / "webhooks.json"
TARGET_PER_SECOND = 2_000
APPEND_BATCH = 500  # drafts per EventLog.append while filling the outbox
LIVE_TICK_SECONDS = 0.01  # the live run appends one batch this often

# ---- the receiver (a separate process: `webhooks.py _receiver ...`) ------------------------------

NO_CONTENT = b"HTTP/1.1 204 No Content\r\nserver: forge-bench\r\n\r\n"


@dataclass
class Tally:
    """What the healthy endpoint received, in arrival order."""

    expect: int
    key: bytes | None  # Standard Webhooks key; None: signatures are not checked
    secret: bytes | None  # the secret as given (the Go Forge signature's key)
    ids: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # time.time() of each arrival
    seen: set[str] = field(default_factory=set)
    connections: int = 0
    missing_id: int = 0
    bad_signature: int = 0
    first_at: float = 0.0  # time.monotonic() (system-wide clock, comparable across processes)
    done_at: float = 0.0

    def request(self, headers: dict[bytes, bytes], body: bytes) -> None:
        msg_id = headers.get(b"webhook-id")
        if msg_id is None:
            self.missing_id += 1
            return
        now = time.monotonic()
        if not self.ids:
            self.first_at = now
        if self.key is not None and not self._signed(msg_id, headers, body):
            self.bad_signature += 1
        text = msg_id.decode()
        self.ids.append(text)
        self.times.append(time.time())
        if text not in self.seen:
            self.seen.add(text)
            if len(self.seen) == self.expect:
                self.done_at = now
                print(json.dumps({"done": now}), flush=True)

    def _signed(self, msg_id: bytes, headers: dict[bytes, bytes], body: bytes) -> bool:
        assert self.key is not None and self.secret is not None
        timestamp = headers.get(b"webhook-timestamp", b"")
        digest = hmac.digest(self.key, msg_id + b"." + timestamp + b"." + body, "sha256")
        standard = b"v1," + base64.b64encode(digest)
        if standard not in headers.get(b"webhook-signature", b"").split():
            return False
        forge_ts = headers.get(b"x-forge-timestamp", b"")
        forge = hmac.new(self.secret, forge_ts + b"." + body, hashlib.sha256).hexdigest()
        return headers.get(b"x-forge-signature") == b"sha256=" + forge.encode()


class HookProtocol(asyncio.Protocol):
    """One connection to the healthy endpoint: every request is answered 204, kept alive."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._tally.connections += 1

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            headers = {}
            for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            total = end + 4 + int(headers.get(b"content-length", b"0"))
            if len(buffer) < total:
                return
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            self._tally.request(headers, body)
            assert self._transport is not None
            self._transport.write(NO_CONTENT)


@dataclass
class StallCount:
    connections: int = 0
    bytes: int = 0


class StalledProtocol(asyncio.Protocol):
    """The stalled endpoint: accepts the connection, reads the request, never answers."""

    def __init__(self, count: StallCount) -> None:
        self._count = count

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._count.connections += 1

    def data_received(self, data: bytes) -> None:
        self._count.bytes += len(data)


async def serve_receiver(expect: int, secret: str) -> dict[str, Any]:
    """Listen on two free ports, say which, and return what arrived once SIGTERM comes."""
    key = None
    if secret:
        raw = secret.removeprefix("whsec_")
        key = base64.b64decode(raw) if secret.startswith("whsec_") else secret.encode()
    tally = Tally(expect, key, secret.encode() if secret else None)
    stalled = StallCount()
    loop = asyncio.get_running_loop()
    healthy_server = await loop.create_server(lambda: HookProtocol(tally), "127.0.0.1", 0)
    stalled_server = await loop.create_server(lambda: StalledProtocol(stalled), "127.0.0.1", 0)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    ports = {
        "healthy": healthy_server.sockets[0].getsockname()[1],
        "stalled": stalled_server.sockets[0].getsockname()[1],
    }
    print(json.dumps(ports), flush=True)
    await stop.wait()
    return {
        "ids": tally.ids,
        "times": tally.times,
        "first_at": tally.first_at,
        "done_at": tally.done_at,
        "connections": tally.connections,
        "missing_id": tally.missing_id,
        "bad_signature": tally.bad_signature,
        "cpu_seconds": time.process_time(),
        "stalled_connections": stalled.connections,
        "stalled_bytes": stalled.bytes,
    }


class Receiver:
    """The receiver subprocess, seen from the benchmark."""

    def __init__(self, proc: asyncio.subprocess.Process, report: Path, ports: dict[str, int]):
        self.proc = proc
        self.report = report
        self.healthy_url = f"http://127.0.0.1:{ports['healthy']}/hooks/forge"
        self.stalled_url = f"http://127.0.0.1:{ports['stalled']}/hooks/stalled"

    @classmethod
    async def start(cls, expect: int, secret: str, report: Path) -> Receiver:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "_receiver",
            str(expect),
            secret,
            str(report),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError("the receiver did not start")
        return cls(proc, report, json.loads(line))

    async def wait_done(self, timeout: float) -> float | None:
        """time.monotonic() when the receiver had every expected delivery; None on timeout."""
        assert self.proc.stdout is not None
        with contextlib.suppress(TimeoutError):
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if line:
                return float(json.loads(line)["done"])
        return None

    async def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.proc.wait(), 30)
        return dict(json.loads(self.report.read_text()))


# ---- filling the outbox --------------------------------------------------------------------------


def draft(i: int, request_id: str, session_id: str) -> EventDraft:
    """The i-th event of a run, shaped like a Claude Code run's (text, tool call, tool result)."""
    call_id = f"toolu_{i:04d}"
    if i % 3 == 0:
        text = f"Step {i}: a test for escaped quotes."
        event: dict[str, Any] = {"type": "assistant", "content": [{"type": "text", "text": text}]}
        entry: dict[str, Any] = {"kind": "assistant_message", "text": text}
    elif i % 3 == 1:
        command = "pytest -q tests/unit"
        use = {"type": "tool_use", "id": call_id, "name": "Bash", "input": {"command": command}}
        event = {"type": "assistant", "content": [use]}
        entry = {"kind": "tool_call", "tool": "Bash", "action": "command_run", "status": "running"}
        entry |= {"call_id": call_id, "command": command}
    else:
        event = {"type": "user", "content": [{"type": "tool_result", "tool_use_id": call_id}]}
        entry = {"kind": "tool_call", "tool": "Bash", "action": "command_run", "status": "failed"}
        entry |= {"call_id": call_id, "output": "1 failed, 3 passed in 0.41s"}
    return EventDraft(
        event_type="agent.event",
        request_id=request_id,
        session_id=session_id,
        executor="claude_code",
        executor_event_type=event["type"],
        event=event,
        entry=entry,
        runner_seq=i,
    )


@dataclass
class Filled:
    """What the outbox holds for one endpoint: event id -> (agent, seq), and body sizes."""

    events: dict[str, tuple[str, int]] = field(default_factory=dict)
    body_bytes: list[int] = field(default_factory=list)


async def add_agents(db: Database, url: str, secret: str, agents: int) -> list[tuple[str, str]]:
    """`agents` agents, each with a running run whose `webhook_url` is `url`."""
    made = []
    async with db.write() as session:
        for _ in range(agents):
            agent_id, request_id = ids.agent_id(), ids.request_id()
            session.add(
                AgentRow(
                    id=agent_id, owner_id="bench", profile="p", executor="command", status="running"
                )
            )
            made.append((agent_id, request_id))
        await session.flush()
        for agent_id, request_id in made:
            session.add(
                RunRow(
                    agent_id=agent_id,
                    request_id=request_id,
                    owner_id="bench",
                    prompt="fix the parser",
                    body_hash="",
                    status="running",
                    webhook_url=url,
                    webhook_secret=secret,
                )
            )
    return made


async def append_events(
    log: EventLog, runs: list[tuple[str, str]], count: int, first: dict[str, int], filled: Filled
) -> list[str]:
    """Append `count` events spread evenly over `runs` (in batches) and note them in `filled`.

    `first` is each agent's next runner_seq (kept between calls); returns the new event ids.
    """
    appended = []
    for index, (agent_id, request_id) in enumerate(runs):
        share = count // len(runs) + (1 if index < count % len(runs) else 0)
        start = first.get(agent_id, 1)
        session_id = f"5d0c7a1e-{index:04d}-4b7e-9a51-6c1f0e2b{index:04d}"
        for batch_start in range(start, start + share, APPEND_BATCH):
            batch_end = min(start + share, batch_start + APPEND_BATCH)
            drafts = [draft(i, request_id, session_id) for i in range(batch_start, batch_end)]
            for envelope in await log.append(agent_id, drafts):
                filled.events[envelope.event_id] = (agent_id, envelope.seq)
                appended.append(envelope.event_id)
        first[agent_id] = start + share
    return appended


async def fill(db: Database, url: str, secret: str, count: int, agents: int) -> Filled:
    """`count` pending deliveries to `url` from `agents` new agents, written by `EventLog`."""
    runs = await add_agents(db, url, secret, agents)
    filled = Filled()
    await append_events(EventLog(db, EventBus()), runs, count, {}, filled)
    async with db.read() as session:
        rows = await session.execute(select(func.length(EventRow.body)).limit(2000))
        filled.body_bytes = [int(n) for (n,) in rows]
    return filled


# ---- checking what arrived -----------------------------------------------------------------------


def check(report: dict[str, Any], expected: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Missing, duplicate, unknown and out-of-order deliveries (a correct run has 0 of each but
    duplicates, which at-least-once delivery allows)."""
    seen: set[str] = set()
    highest: dict[str, int] = {}
    duplicates = unknown = out_of_order = 0
    for msg_id in report["ids"]:
        if msg_id in seen:
            duplicates += 1
            continue
        seen.add(msg_id)
        where = expected.get(msg_id)
        if where is None:
            unknown += 1
            continue
        agent_id, seq = where
        if seq < highest.get(agent_id, 0):
            out_of_order += 1  # a later event of this agent arrived first
        highest[agent_id] = max(seq, highest.get(agent_id, 0))
    return {
        "received": len(report["ids"]),
        "missing": sum(1 for msg_id in expected if msg_id not in seen),
        "duplicates": duplicates,
        "unknown": unknown,
        "out_of_order": out_of_order,
        "missing_webhook_id": report["missing_id"],
        "bad_signature": report["bad_signature"],
    }


async def undelivered(db: Database, url: str) -> int:
    """Deliveries to `url` not recorded as delivered in the outbox."""
    async with db.read() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(DeliveryRow)
            .where(DeliveryRow.endpoint_url == url, DeliveryRow.status != "delivered")
        )
    return int(count or 0)


async def wait_recorded(db: Database, url: str, timeout: float) -> float | None:
    """time.monotonic() once every delivery to `url` is recorded as delivered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await undelivered(db, url) == 0:
            return time.monotonic()
        await asyncio.sleep(0.02)
    return None


def window_rate(report: dict[str, Any], start: float, seconds: float) -> int:
    """Distinct deliveries/s that arrived in [start, start + seconds] (wall clock)."""
    arrived = {
        msg_id
        for msg_id, at in zip(report["ids"], report["times"], strict=True)
        if start <= at <= start + seconds
    }
    return round(len(arrived) / seconds)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# ---- one run -------------------------------------------------------------------------------------


@dataclass
class Options:
    deliveries: int
    agents: int
    stalled: int
    stalled_agents: int
    max_in_flight: int
    timeout: float
    live_rate: float
    live_seconds: float
    run_timeout: float


async def start_py_spy(output: Path) -> asyncio.subprocess.Process:
    """py-spy recording this process (every thread) until SIGINT."""
    py_spy = Path(sys.executable).with_name("py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    # --gil: only samples holding the GIL, i.e. where Python time goes, not idle waits.
    options = ["--gil", "--threads", "--format", "raw", "--rate", "200", "--output", str(output)]
    profiler = await asyncio.create_subprocess_exec(
        str(py_spy), "record", "--pid", str(os.getpid()), *options
    )
    await asyncio.sleep(1)  # let it attach
    return profiler


def settings_for(options: Options) -> WebhookSettings:
    # Loopback receiver; otherwise the defaults (retry schedule, jitter) but the attempt timeout.
    return WebhookSettings(
        allow_private=True,
        timeout_seconds=options.timeout,
        max_in_flight=options.max_in_flight,
    )


async def run_prefilled(
    options: Options, with_stalled: bool, py_spy: Path | None = None
) -> dict[str, Any]:
    """Fill the outbox, start the dispatcher, time until the receiver has every delivery.

    With `py_spy`, this process is recorded by py-spy from the start to the final delivery.
    """
    root = Path(tempfile.mkdtemp(prefix="forge-bench-webhooks-"))
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    db = Database(f"sqlite+aiosqlite:///{root / 'forge.db'}")
    receiver: Receiver | None = None
    try:
        await db.migrate()
        receiver = await Receiver.start(options.deliveries, secret, root / "receiver.json")
        fill_started = time.monotonic()
        if with_stalled:
            # Its backlog first: older, as when an endpoint has been down a while. The dispatcher
            # starts the oldest heads first, so this is the worse order for the healthy endpoint.
            await fill(db, receiver.stalled_url, secret, options.stalled, options.stalled_agents)
        healthy = await fill(db, receiver.healthy_url, secret, options.deliveries, options.agents)
        fill_seconds = time.monotonic() - fill_started

        dispatcher = WebhookDispatcher(db, settings_for(options))
        profiler = await start_py_spy(py_spy) if py_spy else None
        cpu_started, started = time.process_time(), time.monotonic()
        wall_started = time.time()
        await dispatcher.start()
        done_at = await receiver.wait_done(options.run_timeout)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            await profiler.wait()
        recorded_at = await wait_recorded(db, receiver.healthy_url, 30) if done_at else None
        cpu = time.process_time() - cpu_started
        await dispatcher.stop(grace_seconds=0.5)
        unrecorded = await undelivered(db, receiver.healthy_url)
        report = await receiver.stop()
        receiver = None
        seconds = (done_at or time.monotonic()) - started
        delivered = len(set(report["ids"]) & healthy.events.keys())
        result: dict[str, Any] = {
            "deliveries": options.deliveries,
            "delivered": delivered,
            "complete": done_at is not None,
            "seconds": round(seconds, 3),
            "deliveries_per_second": round(delivered / seconds) if seconds > 0 else None,
            "first_delivery_ms": round((report["first_at"] - started) * 1000, 1),
            # The first `--timeout` seconds: while a stalled endpoint's first attempts are open.
            "first_window_per_second": window_rate(report, wall_started, options.timeout),
            "seconds_until_recorded": (
                round(recorded_at - started, 3) if recorded_at is not None else None
            ),
            "dispatcher_cpu_seconds": round(cpu, 2),  # this process, every thread
            "dispatcher_cpu_us_per_delivery": round(cpu / max(1, delivered) * 1e6),
            "receiver_cpu_seconds": round(report["cpu_seconds"], 2),
            "receiver_connections": report["connections"],
            "fill_seconds": round(fill_seconds, 2),
            "body_bytes_mean": round(statistics.fmean(healthy.body_bytes)),
            "checks": check(report, healthy.events) | {"unrecorded": unrecorded},
        }
        if with_stalled:
            result["stalled"] = {
                "deliveries": options.stalled,
                "agents": options.stalled_agents,
                "connections": report["stalled_connections"],  # one per attempt
            }
        return result
    finally:
        if receiver is not None:
            receiver.proc.kill()
            await receiver.proc.wait()
        await db.close()
        shutil.rmtree(root, ignore_errors=True)


async def run_live(options: Options) -> dict[str, Any]:
    """Append events at a steady rate while the dispatcher runs; append -> receiver latency."""
    root = Path(tempfile.mkdtemp(prefix="forge-bench-webhooks-"))
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    db = Database(f"sqlite+aiosqlite:///{root / 'forge.db'}")
    ticks = round(options.live_seconds / LIVE_TICK_SECONDS)
    per_tick = [
        int(options.live_rate * LIVE_TICK_SECONDS * (t + 1))
        - int(options.live_rate * LIVE_TICK_SECONDS * t)
        for t in range(ticks)
    ]
    receiver: Receiver | None = None
    try:
        await db.migrate()
        receiver = await Receiver.start(sum(per_tick), secret, root / "receiver.json")
        runs = await add_agents(db, receiver.healthy_url, secret, options.agents)
        dispatcher = WebhookDispatcher(db, settings_for(options))
        # As in `forge serve`: committing deliveries wakes the dispatcher.
        log = EventLog(db, EventBus(), on_outbox=dispatcher.wake)
        await dispatcher.start()
        filled, appended_at, first = Filled(), dict[str, float](), dict[str, int]()
        started = time.monotonic()
        for tick, count in enumerate(per_tick):
            # Each tick one agent's runner hands over a batch, round robin over the agents.
            if count:
                run = runs[tick % len(runs)]
                for event_id in await append_events(log, [run], count, first, filled):
                    appended_at[event_id] = time.time()
            await asyncio.sleep(
                max(0.0, started + (tick + 1) * LIVE_TICK_SECONDS - time.monotonic())
            )
        done_at = await receiver.wait_done(options.run_timeout)
        await dispatcher.stop(grace_seconds=0.5)
        unrecorded = await undelivered(db, receiver.healthy_url)
        report = await receiver.stop()
        receiver = None
        arrived: dict[str, float] = {}
        for msg_id, at in zip(report["ids"], report["times"], strict=True):
            arrived.setdefault(msg_id, at)
        latencies = [(at - appended_at[i]) * 1000 for i, at in arrived.items() if i in appended_at]
        return {
            "rate": options.live_rate,
            "seconds": options.live_seconds,
            "events": sum(per_tick),
            "complete": done_at is not None,
            "latency_ms_p50": round(percentile(latencies, 50), 1) if latencies else None,
            "latency_ms_p99": round(percentile(latencies, 99), 1) if latencies else None,
            "latency_ms_max": round(max(latencies), 1) if latencies else None,
            "checks": check(report, filled.events) | {"unrecorded": unrecorded},
        }
    finally:
        if receiver is not None:
            receiver.proc.kill()
            await receiver.proc.wait()
        await db.close()
        shutil.rmtree(root, ignore_errors=True)


# ---- report --------------------------------------------------------------------------------------


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [run["deliveries_per_second"] or 0 for run in runs]
    return {"median_deliveries_per_second": round(statistics.median(rates)), "runs": runs}


def checks_line(runs: list[dict[str, Any]]) -> str:
    """The checks summed over `runs`: every count but duplicates must be 0."""
    total = {key: sum(run["checks"][key] for run in runs) for key in runs[0]["checks"]}
    return (
        f"{total['missing']} missing, {total['out_of_order']} out of order, "
        f"{total['unknown'] + total['missing_webhook_id']} unknown, "
        f"{total['bad_signature']} badly signed, {total['unrecorded']} unrecorded "
        f"({total['duplicates']} duplicates)"
    )


def each(summary: dict[str, Any], key: str) -> str:
    return ", ".join(f"{run[key]:,}" for run in summary["runs"])


def median(summary: dict[str, Any], key: str) -> float:
    return float(statistics.median(run[key] for run in summary["runs"]))


def table(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, value, target) rows."""
    options = result["options"]
    rows: list[tuple[str, str, str]] = []
    timeout = f"first {options['timeout_seconds']:g} s"
    if throughput := result.get("throughput"):
        rows += [
            (
                f"throughput, {options['deliveries']:,} over {options['agents']} streams",
                f"{throughput['median_deliveries_per_second']:,}/s "
                f"(runs: {each(throughput, 'deliveries_per_second')})",
                f">= {TARGET_PER_SECOND:,}/s",
            ),
            (
                f"  {timeout}",
                f"{median(throughput, 'first_window_per_second'):,.0f}/s "
                f"(runs: {each(throughput, 'first_window_per_second')})",
                "",
            ),
            (
                "  dispatcher CPU per delivery",
                f"{median(throughput, 'dispatcher_cpu_us_per_delivery'):,.0f} us",
                "",
            ),
            ("  checks", checks_line(throughput["runs"]), "0"),
        ]
    if stalled := result.get("stalled"):
        rows += [
            (
                f"with a stalled endpoint ({options['stalled']:,} over "
                f"{options['stalled_agents']} streams)",
                f"{stalled['median_deliveries_per_second']:,}/s "
                f"(runs: {each(stalled, 'deliveries_per_second')})",
                "no slower",
            ),
            (
                f"  {timeout}",
                f"{median(stalled, 'first_window_per_second'):,.0f}/s "
                f"(runs: {each(stalled, 'first_window_per_second')})",
                "",
            ),
        ]
        rows += [
            ("  ratio to throughput", f"{stalled['ratio_to_throughput']}", "1.0"),
            ("  seconds lost (median)", f"{stalled['median_seconds_lost']} s", "0"),
            ("  checks", checks_line(stalled["runs"]), "0"),
        ]
    if live := result.get("live"):
        rows += [
            (
                f"live {live['rate']:g} events/s: append -> receiver p50 / p99",
                f"{live['latency_ms_p50']} / {live['latency_ms_p99']} ms",
                "",
            ),
            ("  checks", checks_line([live]), "0"),
        ]
    return rows


async def bench(options: Options, repeat: int, py_spy: Path | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    throughput: list[dict[str, Any]] = []
    stalled: list[dict[str, Any]] = []
    for index in range(repeat):
        # Alternate, so both kinds see the same drift in the machine's load.
        profile = py_spy if index == 0 else None
        throughput.append(await run_prefilled(options, with_stalled=False, py_spy=profile))
        print(f"run {index + 1}: throughput {throughput[-1]['deliveries_per_second']:,}/s")
        if options.stalled > 0:
            stalled.append(await run_prefilled(options, with_stalled=True))
            print(f"run {index + 1}: with stalled {stalled[-1]['deliveries_per_second']:,}/s")
    result["throughput"] = summary(throughput)
    if stalled:
        result["stalled"] = summary(stalled)
        ratio = (
            result["stalled"]["median_deliveries_per_second"]
            / result["throughput"]["median_deliveries_per_second"]
        )
        result["stalled"]["ratio_to_throughput"] = round(ratio, 2)
        seconds = [statistics.median(r["seconds"] for r in runs) for runs in (stalled, throughput)]
        result["stalled"]["median_seconds_lost"] = round(seconds[0] - seconds[1], 2)
    if options.live_rate > 0:
        result["live"] = await run_live(options)
    return result


def code_state() -> dict[str, Any]:
    """The commit measured, and uncommitted changes to the delivery code (it moves fast)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.rstrip()

    changed = git("status", "--porcelain", "--", "src/forge/delivery", "src/forge/core/eventlog.py")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted": changed.splitlines()}


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "_receiver":
        report = asyncio.run(serve_receiver(int(sys.argv[2]), sys.argv[3]))
        Path(sys.argv[4]).write_text(json.dumps(report))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=20_000, help="to the healthy endpoint")
    parser.add_argument("--agents", type=int, default=50, help="streams to the healthy endpoint")
    parser.add_argument(
        "--stalled", type=int, default=1_000, help="deliveries to the stalled endpoint (0: none)"
    )
    parser.add_argument(
        "--stalled-agents", type=int, default=50, help="streams to the stalled endpoint"
    )
    parser.add_argument("--max-in-flight", type=int, default=64, help="WebhookSettings value")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind; median shown")
    parser.add_argument(
        "--live", type=float, default=0.0, metavar="RATE", help="also a live run at RATE events/s"
    )
    parser.add_argument("--live-seconds", type=float, default=5.0, help="length of the live run")
    parser.add_argument("--run-timeout", type=float, default=120.0, help="per run, in seconds")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="record the first throughput run with py-spy (collapsed stacks; pip install py-spy)",
    )
    args = parser.parse_args()

    options = Options(
        deliveries=args.deliveries,
        agents=args.agents,
        stalled=args.stalled,
        stalled_agents=args.stalled_agents,
        max_in_flight=args.max_in_flight,
        timeout=args.timeout,
        live_rate=args.live,
        live_seconds=args.live_seconds,
        run_timeout=args.run_timeout,
    )
    result: dict[str, Any] = {
        "benchmark": "webhooks",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
        },
        "code": code_state(),
        "options": {
            "deliveries": args.deliveries,
            "agents": args.agents,
            "stalled": args.stalled,
            "stalled_agents": args.stalled_agents,
            "max_in_flight": args.max_in_flight,
            "timeout_seconds": args.timeout,
            "repeat": args.repeat,
        },
    }
    result.update(asyncio.run(bench(options, args.repeat, args.py_spy)))

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    rows = [("measure", "value", "target"), *table(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
