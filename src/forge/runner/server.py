"""The runner: the small process inside each sandbox that carries out runs for the platform.

    python -m forge.runner --listen unix:/abs/r.sock --workspace /abs/dir --agent-id ag_x \\
        [--token-file PATH] [--log-file PATH]

It serves `Runner.Connect` (proto/forge/runner/v1/runner.proto): one platform stream at a time,
a newer one replacing the older, each write a `RunnerBatch` of whatever messages are ready. Runs
execute one at a time in arrival order. Durable messages (Started, Event, Complete, Error) are
numbered 1, 2, 3, ... and kept until the platform acknowledges them, across disconnects; the
runner outlives any number of platform streams and exits only on `Shutdown` or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import signal
import stat
import sys
from collections import OrderedDict, deque
from collections.abc import Coroutine
from itertools import dropwhile
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from forge.core.events import Outcome, utc_timestamp
from forge.core.redaction import SecretLogFilter
from forge.executors import (
    Attachment,
    Executor,
    ExecutorError,
    ExecutorEvent,
    ExecutorResult,
    InvalidExecutorSpec,
    RunContext,
    get_executor,
)
from forge.executors.base import PERMISSION_MODES, PermissionMode
from forge.executors.permissions import DECISIONS, Decision, Permissions, UnknownPermission
from forge.executors.process import become_subreaper
from forge.runner.client import MAX_MESSAGE_BYTES, grpc_target
from forge.runner.proto import runner_pb2, runner_pb2_grpc

logger = logging.getLogger(__name__)

# Unacknowledged durable messages kept before the runner stops reading executor output.
DEFAULT_MAX_UNACKED = 100_000
# Request ids remembered to ignore resent runs (and reported in `State`).
KNOWN_REQUEST_IDS = 1000
# Seconds between SIGINT, SIGTERM and SIGKILL when the platform does not say.
DEFAULT_GRACE_SECONDS = 3.0
# How long a graceful shutdown waits for the platform to acknowledge the last messages.
DEFAULT_SHUTDOWN_ACK_SECONDS = 10.0
# Bounds of one `RunnerBatch` (one stream write): message count, and the sum of message sizes
# (a single larger message still goes, alone).
BATCH_MAX_MESSAGES = 1000
BATCH_MAX_BYTES = 4 * 1024 * 1024

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Accept the platform's keepalive pings (every 30 s) on an idle stream.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
]


class Outbox:
    """Durable runner messages, numbered 1, 2, 3, ... and kept until the platform acks them."""

    def __init__(self, max_unacked: int = DEFAULT_MAX_UNACKED) -> None:
        self.max_unacked = max_unacked
        self.last_seq = 0
        self.acked_seq = 0
        self._messages: deque[runner_pb2.RunnerMessage] = deque()
        self._room = asyncio.Event()
        self._room.set()
        self._drained = asyncio.Event()
        self._drained.set()

    def __len__(self) -> int:
        return len(self._messages)

    def append(self, message: runner_pb2.RunnerMessage) -> None:
        """Number `message` (sets its runner_seq) and keep it until it is acknowledged."""
        self.last_seq += 1
        message.runner_seq = self.last_seq
        self._messages.append(message)
        self._drained.clear()
        if len(self._messages) >= self.max_unacked:
            self._room.clear()

    def ack(self, runner_seq: int) -> None:
        """Forget every message up to `runner_seq` (cumulative)."""
        runner_seq = min(runner_seq, self.last_seq)
        if runner_seq <= self.acked_seq:
            return
        self.acked_seq = runner_seq
        while self._messages and self._messages[0].runner_seq <= runner_seq:
            self._messages.popleft()
        if len(self._messages) < self.max_unacked:
            self._room.set()
        if not self._messages:
            self._drained.set()

    def after(self, runner_seq: int) -> list[runner_pb2.RunnerMessage]:
        """The kept messages with a runner_seq above `runner_seq`, in order."""
        return list(dropwhile(lambda message: message.runner_seq <= runner_seq, self._messages))

    async def wait_for_room(self) -> None:
        """Wait while `max_unacked` messages are unacknowledged."""
        await self._room.wait()

    async def wait_drained(self) -> None:
        """Wait until every message is acknowledged."""
        await self._drained.wait()


class PlatformConnection:
    """One platform stream as the runner sees it: the messages still to be written, in order."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        max_messages: int = BATCH_MAX_MESSAGES,
        max_bytes: int = BATCH_MAX_BYTES,
    ) -> None:
        self._outbox = outbox
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._pending: asyncio.Queue[runner_pb2.RunnerMessage | None] = asyncio.Queue()
        # A message taken from `_pending` that did not fit in the last batch.
        self._carried: runner_pb2.RunnerMessage | None = None
        self.replaced = False

    def send(self, message: runner_pb2.RunnerMessage) -> None:
        self._pending.put_nowait(message)

    def close(self, *, replaced: bool = False) -> None:
        """End the stream after what is already queued (`replaced`: by a newer one)."""
        self.replaced = self.replaced or replaced
        self._pending.put_nowait(None)

    async def next_batch(self) -> runner_pb2.RunnerBatch | None:
        """The messages to write next, or None when the stream is to end.

        Waits for one message, then takes every other one already queued, up to the batch
        bounds: a lone message goes out at once, and a burst goes out in few writes (while one
        write waits for the platform, the next batch grows).
        """
        batch = runner_pb2.RunnerBatch()
        size = 0
        while True:
            message: runner_pb2.RunnerMessage | None
            if self._carried is not None:
                message, self._carried = self._carried, None
            elif not batch.messages:
                message = await self._pending.get()
            elif not self._pending.empty():
                message = self._pending.get_nowait()
            else:
                return batch
            if message is None:
                self._pending.put_nowait(None)  # every later call ends too
                return batch if batch.messages else None
            # Acknowledged while it waited here (the platform had it from an earlier stream).
            if message.runner_seq and message.runner_seq <= self._outbox.acked_seq:
                continue
            message_size = message.ByteSize()
            if batch.messages and size + message_size > self._max_bytes:
                self._carried = message  # first in the next batch
                return batch
            batch.messages.append(message)
            size += message_size
            if len(batch.messages) >= self._max_messages:
                return batch


class Runner:
    """Carries out the platform's runs one at a time and keeps their messages until acked."""

    def __init__(
        self,
        *,
        workspace: Path,
        agent_id: str,
        token: str | None = None,
        state_dir: Path | None = None,
        max_unacked: int = DEFAULT_MAX_UNACKED,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        shutdown_ack_seconds: float = DEFAULT_SHUTDOWN_ACK_SECONDS,
        reap_orphans: bool = False,
        log_filter: SecretLogFilter | None = None,
    ) -> None:
        self.workspace = workspace
        self.agent_id = agent_id
        # Private to the sandbox, outside the workspace: the executors' HOME and their state.
        self.state_dir = state_dir
        self.home = state_dir / "home" if state_dir is not None else None
        if self.home is not None:
            self.home.mkdir(parents=True, exist_ok=True)
        # Lives as long as the runner, so an "always" answer holds for the agent's session.
        self.permissions = Permissions()
        self.outbox = Outbox(max_unacked)
        self._token = token
        self._grace_seconds = grace_seconds
        self._shutdown_ack_seconds = shutdown_ack_seconds
        self._reap_orphans = reap_orphans
        # Learns each run's credentials, so nothing logged about the run (an executor's error,
        # its stderr quoted in a message) shows them.
        self._log_filter = log_filter
        self._connection: PlatformConnection | None = None
        self._queue: OrderedDict[str, runner_pb2.Run] = OrderedDict()
        self._queue_changed = asyncio.Event()
        self._known: OrderedDict[str, None] = OrderedDict()
        self._current: runner_pb2.Run | None = None
        self._executor: Executor | None = None
        self._stop_reason: Outcome | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._status = "idle"
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutting_down = False
        self._exit_code = 0
        self._exited = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- the platform's stream -------------------------------------------------------------

    def token_matches(self, token: str) -> bool:
        """Whether `token` is the one the runner was started with (always, if none)."""
        if self._token is None:
            return True
        return hmac.compare_digest(token.encode(), self._token.encode())

    def attach(self, resume_after: int) -> PlatformConnection:
        """A new platform stream: replaces the old one, gets the replay and a `State` queued."""
        if resume_after > self.outbox.last_seq:
            # Numbers from another runner process: replay everything this one still has.
            logger.warning(
                "platform resumes after %d but the last runner_seq is %d; replaying all",
                resume_after,
                self.outbox.last_seq,
            )
            resume_after = 0
        else:
            self.outbox.ack(resume_after)  # the platform has stored these
        connection = PlatformConnection(self.outbox)
        if self._connection is not None:
            logger.info("a new platform stream replaces the current one")
            self._connection.close(replaced=True)
        self._connection = connection
        replay = self.outbox.after(resume_after)
        for message in replay:
            connection.send(message)
        connection.send(self.state_message())
        logger.info("platform connected; replaying %d messages", len(replay))
        return connection

    def end_stream(self) -> None:
        """End the current platform stream after what is queued on it (the runner is exiting)."""
        if self._connection is not None:
            self._connection.close()

    def detach(self, connection: PlatformConnection) -> None:
        if self._connection is connection:
            self._connection = None
            logger.info("platform disconnected")

    def handle(self, message: runner_pb2.PlatformMessage) -> None:
        """Act on one message from the platform (never blocks)."""
        kind = message.WhichOneof("kind")
        if kind == "run":
            self.submit(message.run)
        elif kind == "interrupt":
            self.interrupt(message.interrupt.request_id, message.interrupt.grace_seconds)
        elif kind == "ack":
            self.outbox.ack(message.ack.runner_seq)
        elif kind == "shutdown":
            self.shutdown(graceful=message.shutdown.graceful)
        elif kind == "permission_reply":
            self.answer_permission(message.permission_reply)
        elif kind == "hello":
            logger.warning("ignoring a second Hello on the same stream")

    def state_message(self) -> runner_pb2.RunnerMessage:
        current = self._current.request_id if self._current is not None else ""
        state = runner_pb2.State(
            status=self._status,
            current_request_id=current,
            last_runner_seq=self.outbox.last_seq,
            known_request_ids=list(self._known),
        )
        return runner_pb2.RunnerMessage(
            runner_seq=0, request_id=current, timestamp=utc_timestamp(), state=state
        )

    # ---- what the platform asks for --------------------------------------------------------

    def submit(self, run: runner_pb2.Run) -> None:
        """Queue a run, unless its request_id is already known."""
        request_id = run.request_id
        if not request_id:
            logger.warning("ignoring a Run without request_id")
            return
        if self._knows(request_id):
            logger.info("ignoring Run %s: already known", request_id)
            return
        self._remember(request_id)
        if self._log_filter is not None:
            self._log_filter.add(run.env.values())
        if self._shutting_down:
            self._complete_unstarted(request_id, "the runner is shutting down")
            return
        self._queue[request_id] = run
        self._queue_changed.set()
        logger.info("run %s queued (%d waiting)", request_id, len(self._queue))

    def interrupt(self, request_id: str, grace_seconds: float) -> None:
        """Stop the current run ("" or its id) or drop a queued one."""
        grace = grace_seconds if grace_seconds > 0 else self._grace_seconds
        current = self._current
        if current is not None and request_id in ("", current.request_id):
            logger.info("interrupting run %s", current.request_id)
            self._stop_current("interrupted", grace)
        elif request_id in self._queue:
            del self._queue[request_id]
            logger.info("run %s interrupted while queued", request_id)
            self._complete_unstarted(request_id, "interrupted before it started")
        else:
            logger.info("ignoring Interrupt for %r: not running or queued", request_id)

    def answer_permission(self, reply: runner_pb2.PermissionReply) -> None:
        """Pass the user's answer to the executor waiting for it."""
        current = self._current
        if current is None or reply.request_id not in ("", current.request_id):
            logger.info("ignoring the answer to %s: its run is not running", reply.permission_id)
            return
        if reply.decision not in DECISIONS:
            logger.warning(
                "ignoring the answer to %s: decision %r", reply.permission_id, reply.decision
            )
            return
        decision: Decision = reply.decision
        try:
            self.permissions.answer(reply.permission_id, decision, reply.message)
        except UnknownPermission:
            logger.info("ignoring the answer to %s: nothing waits for it", reply.permission_id)
        else:
            logger.info("permission %s answered: %s", reply.permission_id, decision)

    def shutdown(self, graceful: bool = True) -> None:
        """End the runner: gracefully (stop, flush, wait for acks) or at once."""
        if graceful:
            if not self._shutting_down:
                self._shutting_down = True
                self._spawn(self._shut_down_gracefully())
        else:
            self._shutting_down = True
            self._spawn(self._shut_down_now())

    async def wait_exit(self) -> int:
        """Wait until the runner has been shut down; its exit code."""
        await self._exited.wait()
        return self._exit_code

    # ---- runs ------------------------------------------------------------------------------

    async def process_runs(self) -> None:
        """Execute queued runs one at a time, in arrival order, until cancelled."""
        while True:
            if not self._queue:
                self._queue_changed.clear()
                await self._queue_changed.wait()
                continue
            _, run = self._queue.popitem(last=False)
            await self._execute(run)
            if self._reap_orphans:
                _reap_orphans()

    async def _execute(self, run: runner_pb2.Run) -> None:
        self._current = run
        self._stop_reason = None
        self._idle.clear()
        self._set_status("running")
        logger.info("run %s started (executor %r)", run.request_id, run.executor.kind)
        try:
            await self._carry_out(run)
        finally:
            self._current = None
            self._executor = None
            self._set_status("idle")
            self._idle.set()

    async def _carry_out(self, run: runner_pb2.Run) -> None:
        request_id, kind = run.request_id, run.executor.kind
        try:
            executor = get_executor(run.executor)
            ctx = self._context(run)
        except ExecutorError as exc:
            self._emit_error(request_id, exc)
            return
        self._executor = executor
        self._emit(request_id, started=runner_pb2.Started(executor=kind))
        timer = None
        if run.timeout_seconds > 0:
            timer = asyncio.create_task(self._time_limit(run.timeout_seconds))
        outputs = executor.run(ctx)
        result: ExecutorResult | None = None
        stop_reason: Outcome | None = None
        failure: ExecutorError | None = None
        try:
            async for output in outputs:
                if isinstance(output, ExecutorResult):
                    result, stop_reason = output, self._stop_reason
                    break
                # Backpressure: stop reading the executor while too much is unacknowledged.
                await self.outbox.wait_for_room()
                self._emit_event(request_id, kind, output)
        except ExecutorError as exc:
            failure = exc
        except Exception as exc:
            logger.exception("the %s executor failed in run %s", kind, request_id)
            failure = ExecutorError(f"the {kind} executor failed: {exc}")
        finally:
            if timer is not None:
                timer.cancel()
            try:
                await outputs.aclose()
            finally:
                await asyncio.gather(*self._stopping, return_exceptions=True)
        if failure is not None:
            self._emit_error(request_id, failure)
        elif result is None:
            self._emit_error(request_id, ExecutorError(f"the {kind} executor gave no result"))
        else:
            self._emit_complete(request_id, result, stop_reason, run.timeout_seconds)

    def _context(self, run: runner_pb2.Run) -> RunContext:
        settings: Any = {}
        spec = run.executor
        if spec.settings_json:
            try:
                settings = json.loads(spec.settings_json)
            except ValueError as exc:
                raise InvalidExecutorSpec(f"settings_json is not valid JSON: {exc}") from exc
            if not isinstance(settings, dict):
                raise InvalidExecutorSpec("settings_json must be a JSON object")
        mode = spec.permission_mode or "bypass"
        if mode not in PERMISSION_MODES:
            raise InvalidExecutorSpec(f"unknown permission_mode {mode!r}")
        permission_mode: PermissionMode = mode
        if spec.permission_timeout_seconds:
            self.permissions.timeout_seconds = float(spec.permission_timeout_seconds)
        return RunContext(
            request_id=run.request_id,
            agent_id=self.agent_id,
            workspace=self.workspace,
            prompt=run.prompt,
            env=dict(run.env),
            resume_session_id=run.resume_session_id,
            settings=settings,
            model=spec.model,
            permission_mode=permission_mode,
            permissions=self.permissions,
            attachments=self._write_attachments(run),
            home=self.home,
            state_dir=self.state_dir,
        )

    def _write_attachments(self, run: runner_pb2.Run) -> tuple[Attachment, ...]:
        """Write the run's files to `.forge/attachments/<request_id>/` in the workspace."""
        if not run.attachments:
            return ()
        folder = self.workspace / ".forge" / "attachments"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Never part of the agent's changes.
            (folder / ".gitignore").write_text("*\n")
            folder = folder / _path_safe(run.request_id)
            folder.mkdir(exist_ok=True)
            if folder.is_symlink() or not folder.resolve().is_relative_to(self.workspace.resolve()):
                raise InvalidExecutorSpec("the attachments folder leads out of the workspace")
            written = []
            for item in run.attachments:
                name = Path(item.name).name
                if name in ("", ".", ".."):
                    raise InvalidExecutorSpec(f"attachment name {item.name!r} is not a file name")
                path = folder / name
                path.write_bytes(item.data)
                written.append(Attachment(name=name, media_type=item.media_type, path=path))
        except OSError as exc:
            raise ExecutorError(f"cannot write the attachments: {exc}") from exc
        return tuple(written)

    async def _time_limit(self, seconds: int) -> None:
        await asyncio.sleep(seconds)
        if self._current is not None:
            logger.info("run %s timed out after %d s", self._current.request_id, seconds)
        self._stop_current("timed_out", self._grace_seconds)

    def _stop_current(self, reason: Outcome, grace_seconds: float) -> None:
        if self._current is None or self._stop_reason is not None:
            return
        self._stop_reason = reason
        self._set_status("stopping")
        self.permissions.cancel_all()
        if self._executor is not None:
            task = asyncio.create_task(self._executor.interrupt(grace_seconds))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def _shut_down_gracefully(self) -> None:
        logger.info("shutting down gracefully")
        for request_id in list(self._queue):
            del self._queue[request_id]
            self._complete_unstarted(request_id, "the runner is shutting down")
        self._stop_current("interrupted", self._grace_seconds)
        # Bounded: a run held back by unacknowledged output cannot finish without a platform.
        stop_seconds = 2 * self._grace_seconds + self._shutdown_ack_seconds
        try:
            await asyncio.wait_for(self._idle.wait(), stop_seconds)
        except TimeoutError:
            logger.warning("the current run did not end within %g s; exiting", stop_seconds)
        try:
            await asyncio.wait_for(self.outbox.wait_drained(), self._shutdown_ack_seconds)
        except TimeoutError:
            logger.warning("exiting with %d unacknowledged messages", len(self.outbox))
        self._finish(0)

    async def _shut_down_now(self) -> None:
        logger.info("shutting down now")
        executor = self._executor
        if executor is not None:
            try:
                await asyncio.wait_for(executor.interrupt(0), timeout=2)
            except Exception:
                logger.exception("could not kill the executor")
        self._finish(0)

    def _finish(self, exit_code: int) -> None:
        self._exit_code = exit_code
        self._exited.set()

    # ---- messages --------------------------------------------------------------------------

    def _emit(self, request_id: str, **kind: Any) -> None:
        """Number a durable message, keep it and send it if a platform is connected."""
        message = runner_pb2.RunnerMessage(request_id=request_id, timestamp=utc_timestamp(), **kind)
        self.outbox.append(message)
        if self._connection is not None:
            self._connection.send(message)

    def _emit_event(self, request_id: str, kind: str, event: ExecutorEvent) -> None:
        self._emit(
            request_id,
            event=runner_pb2.Event(
                executor=kind,
                executor_event_type=event.executor_event_type,
                raw_json=_to_json(event.raw),
                entry_json=_to_json(event.entry),
                session_id=event.session_id,
            ),
        )

    def _emit_complete(
        self,
        request_id: str,
        result: ExecutorResult,
        stop_reason: Outcome | None,
        timeout_seconds: int,
    ) -> None:
        outcome = stop_reason or result.outcome
        message = result.message
        if stop_reason == "timed_out":
            message = f"timed out after {timeout_seconds} s; {message}"
        logger.info("run %s completed: %s (%s)", request_id, outcome, message)
        complete = runner_pb2.Complete(
            outcome=outcome,
            exit_code=result.exit_code,
            usage=runner_pb2.Usage(**result.usage.model_dump()),
            message=message,
            session_id=result.session_id,
        )
        self._emit(request_id, complete=complete)

    def _complete_unstarted(self, request_id: str, message: str) -> None:
        complete = runner_pb2.Complete(
            outcome="interrupted", exit_code=0, usage=runner_pb2.Usage(), message=message
        )
        self._emit(request_id, complete=complete)

    def _emit_error(self, request_id: str, error: ExecutorError) -> None:
        logger.warning("run %s failed: %s: %s", request_id, error.code, error)
        self._emit(
            request_id,
            error=runner_pb2.Error(
                code=error.code, message=str(error), recoverable=error.recoverable
            ),
        )

    def _set_status(self, status: str) -> None:
        if status == self._status:
            return
        self._status = status
        if self._connection is not None:
            self._connection.send(self.state_message())

    # ---- bookkeeping -----------------------------------------------------------------------

    def _knows(self, request_id: str) -> bool:
        current = self._current
        return (
            request_id in self._known
            or request_id in self._queue
            or (current is not None and current.request_id == request_id)
        )

    def _remember(self, request_id: str) -> None:
        self._known[request_id] = None
        while len(self._known) > KNOWN_REQUEST_IDS:
            self._known.popitem(last=False)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class RunnerService(runner_pb2_grpc.RunnerServicer):
    """The gRPC face of a `Runner`."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def Connect(self, request_iterator: Any, context: Any) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if first.WhichOneof("kind") != "hello":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "the first message must be Hello"
            )
        if not self._runner.token_matches(first.hello.token):
            logger.warning("refused a platform stream with a wrong token")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong or missing runner token")
        connection = self._runner.attach(first.hello.resume_after)
        reader = asyncio.create_task(self._read(context, connection))
        try:
            while (batch := await connection.next_batch()) is not None:
                await context.write(batch)
        finally:
            reader.cancel()
            self._runner.detach(connection)
        if connection.replaced:
            await context.abort(grpc.StatusCode.ABORTED, "replaced by a newer platform stream")

    async def _read(self, context: Any, connection: PlatformConnection) -> None:
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                self._runner.handle(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.info("platform stream broke: %s", exc)
        connection.close()


# ---- the process ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the runner until it is shut down; the process exit code."""
    parser = _argument_parser()
    args = parser.parse_args(argv)
    try:
        grpc_target(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    workspace = Path(args.workspace).resolve()
    if not workspace.is_dir():
        parser.error(f"workspace {workspace} is not a directory")
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            parser.error(f"cannot read the token file: {exc}")
        if not token:
            parser.error("the token file is empty")
    log_filter = _configure_logging(args.log_file, args.log_level)
    reap_orphans = become_subreaper()
    return asyncio.run(
        serve(
            args.listen,
            Runner(
                workspace=workspace,
                agent_id=args.agent_id,
                token=token,
                state_dir=Path(args.state_dir).resolve() if args.state_dir else None,
                max_unacked=args.max_unacked,
                grace_seconds=args.grace_seconds,
                shutdown_ack_seconds=args.shutdown_ack_seconds,
                reap_orphans=reap_orphans,
                log_filter=log_filter,
            ),
        )
    )


async def serve(listen: str, runner: Runner) -> int:
    """Serve `runner` on `listen` until it is shut down; the exit code.

    Prints the bound address (e.g. `tcp:127.0.0.1:41234` for port 0) as one stdout line once
    the runner accepts connections.
    """
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runner.shutdown, True)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    runner_pb2_grpc.add_RunnerServicer_to_server(RunnerService(runner), server)  # type: ignore[no-untyped-call]
    try:
        port = server.add_insecure_port(grpc_target(listen))
    except RuntimeError as exc:
        logger.error("cannot listen on %s: %s", listen, exc)
        return 1
    await server.start()
    address = _bound_address(listen, port)
    if listen.startswith("unix:"):
        with contextlib.suppress(OSError):
            os.chmod(listen.removeprefix("unix:"), stat.S_IRUSR | stat.S_IWUSR)
    print(address, flush=True)
    logger.info("runner for agent %s listening on %s", runner.agent_id, address)

    runs = asyncio.create_task(runner.process_runs())
    try:
        exit_code = await runner.wait_exit()
    finally:
        runs.cancel()
        await asyncio.wait({runs}, timeout=5)
        runner.end_stream()
        await server.stop(grace=1.0)
    logger.info("runner exiting with code %d", exit_code)
    return exit_code


def _bound_address(listen: str, port: int) -> str:
    if listen.startswith("tcp:"):
        host = listen.removeprefix("tcp:").rpartition(":")[0]
        return f"tcp:{host}:{port}"
    return listen


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forge runner", description="Serve the Forge runner protocol inside a sandbox."
    )
    parser.add_argument(
        "--listen", required=True, help="unix:/absolute/path.sock or tcp:host:port (port 0: any)"
    )
    parser.add_argument("--workspace", required=True, help="directory the executors run in")
    parser.add_argument("--agent-id", required=True, help="the agent this sandbox belongs to")
    parser.add_argument("--token-file", help="file holding the token the platform must present")
    parser.add_argument(
        "--state-dir",
        help="private directory outside the workspace: the executors' HOME and their state",
    )
    parser.add_argument("--log-file", help="append logs here instead of stderr")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=DEFAULT_GRACE_SECONDS,
        help="default time between SIGINT, SIGTERM and SIGKILL when stopping a run",
    )
    parser.add_argument(
        "--max-unacked",
        type=int,
        default=DEFAULT_MAX_UNACKED,
        help="unacknowledged messages kept before executor output is paused",
    )
    parser.add_argument(
        "--shutdown-ack-seconds",
        type=float,
        default=DEFAULT_SHUTDOWN_ACK_SECONDS,
        help="how long a graceful shutdown waits for the last acknowledgements",
    )
    return parser


def _path_safe(request_id: str) -> str:
    """A request id as one harmless path component (ids may contain '/' and '.')."""
    safe = re.sub(r"[^A-Za-z0-9_:@-]", "_", request_id)
    return safe or "_"


def _configure_logging(log_file: str | None, level: str) -> SecretLogFilter:
    """Log to `log_file` (else stderr) through a filter that redacts the runs' credentials."""
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log_filter = SecretLogFilter()
    handler.addFilter(log_filter)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return log_filter


def _reap_orphans() -> None:
    """Reap exited processes the runner adopted as subreaper (left behind by an executor).

    Only called between runs, when no executor process is alive for asyncio to wait for.
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _to_json(value: Any) -> str:
    # ASCII escapes: a lone surrogate in executor output (a cut emoji) stays valid JSON text
    # instead of failing to encode into the protobuf string.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))
