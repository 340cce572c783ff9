"""The platform's side of each runner: one supervised stream per agent.

A `RunnerLink` keeps the gRPC stream to one runner open (reconnecting while the runner lives),
turns runner messages into events, appends them to the log in batches and acknowledges them only
after they are stored. If the runner disappears, the link reports it and ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from forge.core.eventlog import EventLog
from forge.core.events import ErrorInfo, EventDraft, Usage
from forge.runner.client import (
    RunnerClient,
    RunnerDisconnected,
    RunnerStream,
    RunnerUnauthenticated,
    RunnerUnavailable,
)
from forge.runner.proto import runner_pb2 as pb
from forge.sandbox.base import Runtime, Sandbox, is_alive
from forge.store.db import Database
from forge.store.tables import AgentRow

log = logging.getLogger(__name__)

_BATCH = 512
_QUEUE_LIMIT = 4096

FinalHook = Callable[[str, str | None], Awaitable[None]]
LostHook = Callable[[str], Awaitable[None]]
ResendHook = Callable[[str], Awaitable[list[pb.PlatformMessage]]]


def draft_from_runner(msg: pb.RunnerMessage) -> EventDraft | None:
    """The event a durable runner message becomes (None for `State`)."""
    kind = msg.WhichOneof("kind")
    common: dict[str, Any] = {
        "request_id": msg.request_id or None,
        "runner_seq": msg.runner_seq,
    }
    if msg.timestamp:
        common["timestamp"] = msg.timestamp
    if kind == "started":
        return EventDraft(
            event_type="agent.status",
            status="running",
            executor=msg.started.executor or None,
            **common,
        )
    if kind == "event":
        ev = msg.event
        return EventDraft(
            event_type="agent.event",
            executor=ev.executor or None,
            executor_event_type=ev.executor_event_type or None,
            event=_json_or_none(ev.raw_json),
            entry=_json_or_none(ev.entry_json),
            session_id=ev.session_id or None,
            **common,
        )
    if kind == "complete":
        done = msg.complete
        usage = done.usage
        return EventDraft(
            event_type="agent.complete",
            outcome=done.outcome if done.outcome in _OUTCOMES else "failed",
            usage=Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                cost_usd=usage.cost_usd,
            ),
            message=done.message or None,
            session_id=done.session_id or None,
            **common,
        )
    if kind == "error":
        err = msg.error
        return EventDraft(
            event_type="agent.error",
            error=ErrorInfo(
                code=err.code or "RUNNER_ERROR", message=err.message, recoverable=err.recoverable
            ),
            message=err.message or None,
            **common,
        )
    return None


_OUTCOMES = frozenset({"succeeded", "failed", "interrupted", "timed_out"})


def _json_or_none(raw: str) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


class RunnerLink:
    """The supervised stream to one agent's runner."""

    def __init__(
        self,
        *,
        agent_id: str,
        sandbox: Sandbox,
        runtime: Runtime,
        db: Database,
        eventlog: EventLog,
        on_final: FinalHook,
        on_lost: LostHook,
        runs_to_resend: ResendHook,
        connect_timeout: float,
        give_up_after: float = 60.0,
    ) -> None:
        self.agent_id = agent_id
        self.sandbox = sandbox
        self._runtime = runtime
        self._db = db
        self._eventlog = eventlog
        self._on_final = on_final
        self._on_lost = on_lost
        self._runs_to_resend = runs_to_resend
        self._connect_timeout = connect_timeout
        self._give_up_after = give_up_after
        self._client = RunnerClient(sandbox.address, sandbox.token)
        self._stream: RunnerStream | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.state: pb.State | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"runner-link-{self.agent_id}")

    async def wait_connected(self, timeout: float) -> None:
        """Wait for the first stream; `RunnerUnavailable` if it does not come in time."""
        assert self._task is not None
        waiter = asyncio.ensure_future(self._connected.wait())
        done, _ = await asyncio.wait(
            {waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            raise RunnerUnavailable(f"runner of {self.agent_id} did not connect within {timeout}s")

    async def send(self, message: pb.PlatformMessage) -> bool:
        """Send to the runner if connected; False when not (it is resent on reconnect)."""
        stream = self._stream
        if stream is None:
            return False
        try:
            await stream.send(message)
        except (RunnerDisconnected, grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            log.info("send to runner of %s failed: %s", self.agent_id, exc)
            return False
        return True

    async def shutdown(self, *, graceful: bool, timeout: float) -> None:
        """Ask the runner to end, wait for the link to finish (bounded), then stop supervising."""
        self._stopping = True
        await self.send(pb.PlatformMessage(shutdown=pb.Shutdown(graceful=graceful)))
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning(
                    "runner of %s did not shut down within %ss; forcing", self.agent_id, timeout
                )
                # Executors run in their own process groups: have the runner kill them first.
                await self.send(pb.PlatformMessage(shutdown=pb.Shutdown(graceful=False)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._task), 3.0)
        await self.close()

    async def close(self) -> None:
        """Stop supervising without touching the runner (it keeps running)."""
        self._stopping = True
        # Called from the link's own task (its on_lost hook), it must not cancel itself.
        if (
            self._task is not None
            and not self._task.done()
            and self._task is not asyncio.current_task()
        ):
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._client.close()

    # ---- internals -------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = 0.1
        loop = asyncio.get_running_loop()
        # Since when the runner has been alive but unreachable (None while connected).
        unreachable_since: float | None = loop.time()
        while not self._stopping:
            try:
                await self._client.wait_ready(self._connect_timeout)
                stream = await self._client.connect(resume_after=await self._stored_ack())
                self._stream = stream
                self._connected.set()
                backoff = 0.1
                unreachable_since = None
                for message in await self._runs_to_resend(self.agent_id):
                    await stream.send(message)
                await self._pump(stream)
            except asyncio.CancelledError:
                raise
            except RunnerUnauthenticated:
                # Retrying cannot help: this runner is not ours to drive.
                log.error("runner of %s refused our token; giving it up", self.agent_id)
                await self._on_lost(self.agent_id)
                return
            except (RunnerDisconnected, RunnerUnavailable, grpc.aio.AioRpcError) as exc:
                log.info("stream to runner of %s ended: %s", self.agent_id, exc)
            except Exception:
                log.exception("link to runner of %s failed", self.agent_id)
            finally:
                self._connected.clear()
                stream_done, self._stream = self._stream, None
                if stream_done is not None:
                    with contextlib.suppress(Exception):
                        await stream_done.close()
            if self._stopping:
                return
            if not await is_alive(self._runtime, self.sandbox):
                log.warning("runner of %s is gone", self.agent_id)
                await self._on_lost(self.agent_id)
                return
            if unreachable_since is None:
                unreachable_since = loop.time()
            elif loop.time() - unreachable_since > self._give_up_after:
                # Alive but out of reach (socket gone, process hung): its runs would wait forever.
                log.error(
                    "runner of %s unreachable for %.0fs; giving it up",
                    self.agent_id,
                    self._give_up_after,
                )
                await self._on_lost(self.agent_id)
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _stored_ack(self) -> int:
        async with self._db.read() as session:
            agent = await session.get(AgentRow, self.agent_id)
            return agent.runner_ack if agent else 0

    async def _pump(self, stream: RunnerStream) -> None:
        queue: asyncio.Queue[pb.RunnerMessage | None] = asyncio.Queue(_QUEUE_LIMIT)
        reader = asyncio.create_task(self._read(stream, queue))
        try:
            ended = False
            while not ended:
                first = await queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < _BATCH and not queue.empty():
                    item = queue.get_nowait()
                    if item is None:
                        ended = True
                        break
                    batch.append(item)
                await self._store(stream, batch)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        error = reader.result() if not reader.cancelled() else None
        if error is not None:
            raise error

    async def _read(
        self, stream: RunnerStream, queue: asyncio.Queue[pb.RunnerMessage | None]
    ) -> Exception | None:
        """Feed `queue` until the stream ends; return what ended it (None for a clean end)."""
        error: Exception | None = None
        try:
            async for message in stream:
                await queue.put(message)
        except (RunnerDisconnected, grpc.aio.AioRpcError) as exc:
            error = exc
        await queue.put(None)
        return error

    async def _store(self, stream: RunnerStream, batch: list[pb.RunnerMessage]) -> None:
        drafts = []
        highest = 0
        for message in batch:
            if message.WhichOneof("kind") == "state":
                # A copy: the submessage would keep its whole batch alive.
                state = pb.State()
                state.CopyFrom(message.state)
                self.state = state
                continue
            draft = draft_from_runner(message)
            if draft is not None:
                drafts.append(draft)
                highest = max(highest, message.runner_seq)
        if not drafts:
            return
        sealed = await self._eventlog.append(self.agent_id, drafts, runner_ack=highest)
        await stream.send(pb.PlatformMessage(ack=pb.Ack(runner_seq=highest)))
        for envelope in sealed:
            if envelope.is_final:
                await self._on_final(self.agent_id, envelope.request_id)
