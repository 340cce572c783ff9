"""The `command` executor: a shell command line run in the workspace, one event per output line.

The prompt goes to the command's stdin. Each stdout line that is a JSON value passes through as
the raw event (a JSON object may carry its own normalized `entry`); any other stdout line is an
assistant message; each stderr line is a system entry. The command runs in its own session and
process group, and the whole group is gone when the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Self

from forge.core.events import ENTRY_KINDS
from forge.executors.base import (
    Executor,
    ExecutorEvent,
    ExecutorOutput,
    ExecutorResult,
    ExecutorStartFailed,
    InvalidExecutorSpec,
    RunContext,
    executor_environment,
)
from forge.runner.proto import runner_pb2

logger = logging.getLogger(__name__)

# Longest line read in one piece; a longer one is split into pieces of this size.
LINE_LIMIT = 16 * 1024 * 1024
# Lines read ahead of the consumer; when it stops reading, the command blocks on its output.
_READ_AHEAD_LINES = 256
# After the command has exited, how long its pipes may stay open without any output before we
# stop waiting for them (a process that left the process group may hold them forever).
_PIPE_IDLE_AFTER_EXIT_SECONDS = 2.0
# How long to wait for a killed process group to disappear.
_GROUP_EXIT_SECONDS = 2.0

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class _Line:
    stream: Stream
    data: bytes


class CommandExecutor(Executor):
    """Runs `/bin/sh -c <command>` in the workspace with the prompt on stdin."""

    kind = "command"

    def __init__(self, command: str, *, shell: str = "/bin/sh") -> None:
        if not command.strip():
            raise InvalidExecutorSpec("the command executor needs a non-empty command")
        self.command = command
        self.shell = shell
        self._pgid: int | None = None
        self._exited: asyncio.Future[None] | None = None
        self._interrupted = False
        self._grace_seconds = 0.0
        self._stopper: asyncio.Task[None] | None = None
        self._session_id = ""

    @classmethod
    def from_spec(cls, spec: runner_pb2.ExecutorSpec) -> Self:
        return cls(spec.command)

    async def run(self, ctx: RunContext) -> AsyncGenerator[ExecutorOutput, None]:
        if self._interrupted:
            yield ExecutorResult(outcome="interrupted", message="interrupted before it started")
            return
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ShellProtocol(loop),
                self.shell,
                "-c",
                self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=ctx.workspace,
                env=executor_environment(ctx),
                # Its own process group (to signal it and its children as one), but the runner's
                # session, so whatever ends the sandbox's session ends the executor too.
                process_group=0,
            )
        except OSError as exc:
            raise ExecutorStartFailed(
                f"cannot start {self.shell} in {ctx.workspace}: {exc.strerror or exc}"
            ) from exc

        # process_group=0: the shell leads its own process group.
        pgid = transport.get_pid()
        self._pgid = pgid
        self._exited = protocol.exited
        if self._interrupted:  # interrupt() came while the process was being started
            self._stopper = asyncio.create_task(self.interrupt(self._grace_seconds))
        assert protocol.stdin and protocol.stdout and protocol.stderr

        lines: asyncio.Queue[_Line | None] = asyncio.Queue(maxsize=_READ_AHEAD_LINES)
        pumps = [
            _Pump(protocol.stdout, "stdout", lines, loop),
            _Pump(protocol.stderr, "stderr", lines, loop),
        ]
        feeder = asyncio.create_task(_feed_stdin(protocol.stdin, ctx.prompt))
        pump_tasks = [asyncio.create_task(pump.run()) for pump in pumps]
        reaper = asyncio.create_task(_clear_group_after_exit(protocol.exited, pgid))
        closer = asyncio.create_task(_close_idle_pipes(reaper, pumps, transport))
        try:
            open_streams = len(pumps)
            while open_streams:
                line = await lines.get()
                if line is None:
                    open_streams -= 1
                    continue
                event = self._event(line)
                if event is not None:
                    yield event
            await protocol.exited
            await asyncio.shield(reaper)
            returncode = transport.get_returncode()
            yield self._result(returncode if returncode is not None else -1)
        finally:
            for task in (feeder, *pump_tasks, closer):
                task.cancel()
            if not protocol.exited.done():  # closed early: stop the command now
                _signal_group(pgid, signal.SIGKILL)
                await asyncio.wait({protocol.exited}, timeout=_GROUP_EXIT_SECONDS)
            if protocol.exited.done():
                await asyncio.wait({reaper}, timeout=_GROUP_EXIT_SECONDS + 1)
            reaper.cancel()
            transport.close()
            await asyncio.gather(feeder, *pump_tasks, reaper, closer, return_exceptions=True)
            if self._stopper is not None:
                await asyncio.gather(self._stopper, return_exceptions=True)

    async def interrupt(self, grace_seconds: float) -> None:
        self._interrupted = True
        self._grace_seconds = grace_seconds
        pgid, exited = self._pgid, self._exited
        if pgid is None or exited is None:
            return  # not started yet: run() sees the flag
        if grace_seconds > 0:
            for sig in (signal.SIGINT, signal.SIGTERM):
                if exited.done() or not _signal_group(pgid, sig):
                    return
                await asyncio.wait({exited}, timeout=grace_seconds)
        if not exited.done():
            _signal_group(pgid, signal.SIGKILL)

    def _event(self, line: _Line) -> ExecutorEvent | None:
        text = _decode_line(line.data)
        if not text.strip():
            return None
        if line.stream == "stderr":
            entry = {"kind": "system", "text": text, "stream": "stderr"}
            return ExecutorEvent(executor_event_type="stderr", raw=None, entry=entry)
        event = parse_stdout_line(text)
        if event.session_id:
            self._session_id = event.session_id
        return event

    def _result(self, returncode: int) -> ExecutorResult:
        if returncode < 0:
            try:
                how = f"was killed by signal {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with code {returncode}"
        if self._interrupted:
            outcome: Literal["succeeded", "failed", "interrupted"] = "interrupted"
            message = f"interrupted; the command {how}"
        elif returncode == 0:
            outcome, message = "succeeded", f"the command {how}"
        else:
            outcome, message = "failed", f"the command {how}"
        return ExecutorResult(
            outcome=outcome, exit_code=returncode, message=message, session_id=self._session_id
        )


def parse_stdout_line(text: str) -> ExecutorEvent:
    """The event for one stdout line (without its newline) of a `command` executor."""
    value = _json_value(text)
    if value is _NOT_JSON:
        return ExecutorEvent(
            executor_event_type="", raw=None, entry={"kind": "assistant_message", "text": text}
        )
    event_type = ""
    entry: dict[str, Any] | None = None
    session_id = ""
    if isinstance(value, dict):
        if isinstance(value.get("type"), str):
            event_type = value["type"]
        candidate = value.get("entry")
        if isinstance(candidate, dict) and candidate.get("kind") in ENTRY_KINDS:
            entry = candidate
        if isinstance(value.get("session_id"), str):
            session_id = value["session_id"]
    return ExecutorEvent(
        executor_event_type=event_type, raw=value, entry=entry, session_id=session_id
    )


_NOT_JSON = object()


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; a line with them is treated as text.
    raise ValueError(name)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return _NOT_JSON
    except RecursionError:
        return _NOT_JSON


def _decode_line(data: bytes) -> str:
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    return data.decode("utf-8", errors="replace")


class _ShellProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The standard stream protocol plus a future that resolves when the process has exited.

    `Process.wait()` also waits for the pipes to close, which a leftover child can hold open;
    the runner needs the moment the command itself exits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=LINE_LIMIT, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class _Pump:
    """Moves the lines of one output stream into the shared queue, in order."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        stream: Stream,
        lines: asyncio.Queue[_Line | None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.reader = reader
        self.stream = stream
        self.lines = lines
        self.loop = loop
        self.done = False
        # When the queue is full the pump is waiting on the consumer, not on the command.
        self.waiting_on_consumer = False
        self.last_data_at = loop.time()

    async def run(self) -> None:
        try:
            async for data in _read_lines(self.reader):
                self.last_data_at = self.loop.time()
                self.waiting_on_consumer = True
                await self.lines.put(_Line(self.stream, data))
                self.waiting_on_consumer = False
        except Exception:  # a broken pipe must not lose the end-of-stream marker
            logger.exception("reading the command's %s failed", self.stream)
        self.done = True
        await self.lines.put(None)

    def idle_since(self) -> float | None:
        """Since when the pump has waited for the command without getting output, if it is."""
        if self.done or self.waiting_on_consumer:
            return None
        return self.last_data_at


async def _read_lines(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        try:
            yield await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # end of stream
            if exc.partial:
                yield exc.partial
            return
        except asyncio.LimitOverrunError as exc:
            # A line longer than the limit: hand it out in pieces of at most the limit.
            yield await reader.readexactly(min(exc.consumed, LINE_LIMIT))


async def _feed_stdin(writer: asyncio.StreamWriter, prompt: str) -> None:
    try:
        if prompt:
            writer.write(prompt.encode())
            await writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command does not read its stdin
    finally:
        writer.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await writer.wait_closed()


async def _clear_group_after_exit(exited: asyncio.Future[None], pgid: int) -> None:
    """Once the command has exited, kill what is left of its process group."""
    await asyncio.shield(exited)
    await _kill_group(pgid)


async def _close_idle_pipes(
    group_cleared: asyncio.Task[None], pumps: list[_Pump], transport: asyncio.SubprocessTransport
) -> None:
    """Stop waiting for output pipes that only a process outside the group still holds open."""
    await asyncio.shield(group_cleared)
    loop = asyncio.get_running_loop()
    cleared_at = loop.time()
    while not all(pump.done for pump in pumps):
        idle = [pump.idle_since() for pump in pumps if not pump.done]
        if all(since is not None for since in idle):
            latest = max([cleared_at, *(since for since in idle if since is not None)])
            if loop.time() - latest >= _PIPE_IDLE_AFTER_EXIT_SECONDS:
                logger.warning(
                    "a process outside the command's group keeps its output open; closing it"
                )
                transport.close()  # the readers get end-of-stream
                return
        await asyncio.sleep(0.1)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The group id was reused by a process we do not own: ours is gone.
        return False
    return True


async def _kill_group(pgid: int) -> None:
    """Kill whatever is left of the process group and wait until it is gone (bounded)."""
    if not _signal_group(pgid, signal.SIGKILL):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _GROUP_EXIT_SECONDS
    while True:
        _reap_group(pgid)
        if not _signal_group(pgid, 0):
            return
        if loop.time() >= deadline:
            logger.warning("process group %d did not disappear after SIGKILL", pgid)
            return
        await asyncio.sleep(0.01)


def _reap_group(pgid: int) -> None:
    """Reap members of the group that became our children (the runner is a subreaper).

    Killed processes stay zombies, still in their group, until their parent reaps them; the
    command's shell is reaped by asyncio, its orphaned children are reparented to us.
    """
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux), so `_reap_group` can reap them.

    Without it, children the command's shell leaves behind are reparented to the sandbox's
    init, and a killed one stays a zombie in its process group if that init does not reap.
    Returns False where it is not available.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


_PR_SET_CHILD_SUBREAPER = 36
