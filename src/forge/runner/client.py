"""The platform's side of the runner protocol: a thin client for one runner's `Connect` stream.

    client = RunnerClient("unix:/run/forge/ag_1.sock", token)
    await client.wait_ready(timeout=20)
    stream = await client.connect(resume_after=last_stored_seq)
    spec = runner_pb2.ExecutorSpec(kind="command", command="make test")
    await stream.run("req_1", "fix the tests", spec)
    async for message in stream:          # RunnerDisconnected when the stream drops
        ...
        await stream.ack(message.runner_seq)

Reconnecting, acknowledging and resending runs are the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from forge.runner.proto import runner_pb2, runner_pb2_grpc

# Events carry whole output lines (up to 16 MiB, raw and normalized): allow large messages.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Batches read ahead of the caller; beyond that gRPC flow control holds the runner back (which
# then writes larger batches). A batch holds at most 1000 messages or 4 MiB (see the runner).
_READ_AHEAD = 8
# How long `RunnerStream.close` lets the runner end the stream before cancelling it.
CLOSE_SECONDS = 1.0

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # A runner that is still starting should be found within a fraction of a second.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Notice a runner that vanished without closing its connection (TCP runners).
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


class RunnerError(Exception):
    """Base class of the errors the runner client raises."""


class RunnerUnavailable(RunnerError):
    """Raised by `wait_ready` and `connect` when the runner does not accept connections."""


class RunnerDisconnected(RunnerError):
    """Raised by a `RunnerStream` when its stream has ended or broken (runner gone, replaced)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class RunnerUnauthenticated(RunnerDisconnected):
    """Raised by a `RunnerStream` when the runner refused the token sent in `Hello`."""


def grpc_target(address: str) -> str:
    """The gRPC target for a runner address: `unix:/abs/path.sock` or `tcp:host:port`."""
    scheme, _, rest = address.partition(":")
    if scheme == "unix" and rest.startswith("/"):
        return "unix://" + rest.removeprefix("//")
    if scheme == "tcp":
        host, sep, port = rest.rpartition(":")
        if sep and host and port.isdigit():
            return f"{host}:{port}"
    raise ValueError(
        f"invalid runner address {address!r}: expected unix:/absolute/path or tcp:host:port"
    )


class RunnerClient:
    """One gRPC channel to one runner."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self._token = token or ""
        self._channel = grpc.aio.insecure_channel(grpc_target(address), options=CHANNEL_OPTIONS)
        self._stub = runner_pb2_grpc.RunnerStub(self._channel)  # type: ignore[no-untyped-call]

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the runner accepts connections; `RunnerUnavailable` after `timeout` s."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise RunnerUnavailable(
                f"runner at {self.address} not ready after {timeout:g} s"
            ) from None

    async def connect(self, resume_after: int = 0) -> RunnerStream:
        """Open the stream (replacing any older one at the runner) and say `Hello`.

        The runner first replays its unacknowledged messages after `resume_after`, then sends a
        `State`. A wrong token shows as `RunnerUnauthenticated` when reading the stream.
        """
        call = self._stub.Connect()
        stream = RunnerStream(call)
        hello = runner_pb2.Hello(resume_after=resume_after, token=self._token)
        try:
            await stream.send(runner_pb2.PlatformMessage(hello=hello))
        except RunnerDisconnected as exc:
            await stream.close()
            if exc.code == grpc.StatusCode.UNAVAILABLE:
                raise RunnerUnavailable(f"runner at {self.address}: {exc}") from exc
            raise
        return stream

    async def close(self) -> None:
        """Close the channel and every stream on it."""
        await self._channel.close()


class RunnerStream:
    """One `Connect` stream: send `PlatformMessage`s, iterate `RunnerMessage`s.

    The runner writes its messages in `RunnerBatch`es; iteration yields them one at a time, in
    order. Iteration raises `RunnerDisconnected` when the stream drops and stops after
    `close()`. Cancelling a read (e.g. with `asyncio.wait_for`) does not harm the stream.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._closed = False
        self._write_lock = asyncio.Lock()
        self._inbox: asyncio.Queue[
            Sequence[runner_pb2.RunnerMessage] | RunnerDisconnected | None
        ] = asyncio.Queue(maxsize=_READ_AHEAD)
        # The rest of the batch being iterated.
        self._current: deque[runner_pb2.RunnerMessage] = deque()
        # Stream messages (batches) read so far: how well the runner's writes are batched.
        self.batches_received = 0
        self._reader = asyncio.create_task(self._read_all())

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, message: runner_pb2.PlatformMessage) -> None:
        """Send one message; `RunnerDisconnected` when the stream has ended."""
        if self._closed:
            raise RunnerDisconnected("the stream is closed")
        # Shielded: a cancelled send must not cancel the whole call (grpc.aio would).
        await asyncio.shield(self._write(message))

    async def run(
        self,
        request_id: str,
        prompt: str,
        executor: runner_pb2.ExecutorSpec,
        *,
        env: Mapping[str, str] | None = None,
        timeout_seconds: int = 0,
        resume_session_id: str = "",
    ) -> None:
        """Ask for a run (ignored by the runner if it already knows `request_id`)."""
        run = runner_pb2.Run(
            request_id=request_id,
            prompt=prompt,
            executor=executor,
            env=dict(env or {}),
            timeout_seconds=timeout_seconds,
            resume_session_id=resume_session_id,
        )
        await self.send(runner_pb2.PlatformMessage(run=run))

    async def interrupt(self, request_id: str = "", grace_seconds: float = 0.0) -> None:
        """Stop a run ("" = the current one); `grace_seconds` 0 = the runner's default."""
        interrupt = runner_pb2.Interrupt(request_id=request_id, grace_seconds=grace_seconds)
        await self.send(runner_pb2.PlatformMessage(interrupt=interrupt))

    async def ack(self, runner_seq: int) -> None:
        """Say that every durable message up to `runner_seq` is stored."""
        await self.send(runner_pb2.PlatformMessage(ack=runner_pb2.Ack(runner_seq=runner_seq)))

    async def shutdown(self, graceful: bool = True) -> None:
        """Ask the runner to exit (gracefully: after the current run's final message is acked)."""
        shutdown = runner_pb2.Shutdown(graceful=graceful)
        await self.send(runner_pb2.PlatformMessage(shutdown=shutdown))

    async def close(self) -> None:
        """End the stream from this side; the runner keeps running and keeps its messages.

        Messages already sent are delivered first (the stream is half-closed and the runner
        ends it); after `CLOSE_SECONDS` the call is cancelled. Iteration then stops.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_SECONDS):
                async with self._write_lock:
                    await self._call.done_writing()
                await asyncio.shield(self._reader)
        self._call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._current.clear()
        self._end_reads(None)

    def __aiter__(self) -> RunnerStream:
        return self

    async def __anext__(self) -> runner_pb2.RunnerMessage:
        if self._closed:
            raise StopAsyncIteration
        if not self._current:
            item = await self._inbox.get()
            if item is None or isinstance(item, RunnerDisconnected):
                self._end_reads(item)  # every later read ends the same way
                if item is None:
                    raise StopAsyncIteration
                raise item
            self._current.extend(item)
        return self._current.popleft()

    def _end_reads(self, item: RunnerDisconnected | None) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(item)

    async def _write(self, message: runner_pb2.PlatformMessage) -> None:
        async with self._write_lock:
            try:
                await self._call.write(message)
            except grpc.aio.AioRpcError as exc:
                raise _disconnected(exc) from exc
            except asyncio.InvalidStateError as exc:
                raise RunnerDisconnected(f"the stream has ended: {exc}") from exc

    async def _read_all(self) -> None:
        try:
            while True:
                batch = await self._call.read()
                if batch is grpc.aio.EOF:
                    code = await self._call.code()
                    details = await self._call.details()
                    raise RunnerDisconnected(
                        f"the runner ended the stream ({code.name}: {details})", code
                    )
                self.batches_received += 1
                if batch.messages:
                    await self._inbox.put(batch.messages)
        except grpc.aio.AioRpcError as exc:
            if not self._closed:
                await self._inbox.put(_disconnected(exc))
        except RunnerDisconnected as exc:
            if not self._closed:
                await self._inbox.put(exc)
        except asyncio.CancelledError:
            if not self._closed:  # cancelled from outside, not by close()
                self._end_reads(RunnerDisconnected("the stream was cancelled"))
            raise


def _disconnected(exc: grpc.aio.AioRpcError) -> RunnerDisconnected:
    code = exc.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return RunnerUnauthenticated(f"the runner refused the token: {exc.details()}", code)
    return RunnerDisconnected(f"runner stream failed ({code.name}: {exc.details()})", code)
