"""Executors that run one process per run and read its output line by line.

`ProcessExecutor` owns the process: it starts it in the workspace in its own process group,
feeds its stdin, reads stdout and stderr as lines (bounded read-ahead, so a slow consumer holds
the process back instead of filling memory), interrupts it with SIGINT, SIGTERM and SIGKILL to
the whole group, and makes sure nothing of the group, nor anything it started in sessions of
its own (`forge.executors.strays`), is left when the run ends. Subclasses say
what to start (`argv`), what to write to stdin (`feed`), how to read a line (`events_for_line`)
and how the run ended (`result`). The agent CLI adapters and the `command` executor are built
on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal

from forge.core.events import Usage
from forge.executors import entries
from forge.executors.base import (
    Executor,
    ExecutorEvent,
    ExecutorOutput,
    ExecutorResult,
    ExecutorStartFailed,
    RunContext,
    executor_environment,
)
from forge.executors.strays import kill_strays

logger = logging.getLogger(__name__)

# Longest line read in one piece; a longer one is split into pieces of this size.
LINE_LIMIT = 16 * 1024 * 1024
# Lines read ahead of the consumer; when it stops reading, the process blocks on its output.
_READ_AHEAD_LINES = 256
# After the process has exited, how long its pipes may stay open without any output before we
# stop waiting for them (a process that left the process group may hold them forever).
_PIPE_IDLE_AFTER_EXIT_SECONDS = 2.0
# How long to wait for a killed process group to disappear.
_GROUP_EXIT_SECONDS = 2.0

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class _Line:
    stream: Stream
    data: bytes


class ProcessExecutor(Executor):
    """One process per run, in the workspace, read line by line; see the module docstring."""

    def __init__(self) -> None:
        self._pgid: int | None = None
        self._exited: asyncio.Future[None] | None = None
        self._interrupted = False
        self._grace_seconds = 0.0
        self._stopper: asyncio.Task[None] | None = None
        # The executor's own session id, once the process has told it.
        self.session_id = ""
        # The process's stdin while `feed` keeps it open (None once closed).
        self.stdin: asyncio.StreamWriter | None = None

    # ---- what subclasses say -------------------------------------------------------------------

    @abstractmethod
    def argv(self, ctx: RunContext) -> list[str]:
        """The program and its arguments."""

    def environment(self, ctx: RunContext) -> dict[str, str]:
        """The process's environment (by default the allowlisted runner environment + run env)."""
        return executor_environment(ctx)

    async def feed(self, stdin: asyncio.StreamWriter, ctx: RunContext) -> None:
        """Write the process's input. By default the prompt (with `append_prompt` and the list of
        attachments), then stdin is closed.

        Runs beside the output loop; an override that keeps stdin open (to answer the process
        later) leaves `self.stdin` set and closes it itself.
        """
        await write_and_close(stdin, ctx.prompt_with_extras().encode())

    @abstractmethod
    def events_for_line(
        self, stream: Stream, text: str, ctx: RunContext
    ) -> AsyncIterator[ExecutorEvent]:
        """The events one output line (without its newline) stands for; may wait (permissions)."""

    @abstractmethod
    def result(self, returncode: int, ctx: RunContext) -> ExecutorResult:
        """How the run ended, once the process has exited and its output is read."""

    # ---- the run -------------------------------------------------------------------------------

    @property
    def interrupted(self) -> bool:
        """Whether `interrupt` was called for this run."""
        return self._interrupted

    async def run(self, ctx: RunContext) -> AsyncGenerator[ExecutorOutput, None]:
        if self._interrupted:
            yield ExecutorResult(outcome="interrupted", message="interrupted before it started")
            return
        argv = self.argv(ctx)
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ProcessProtocol(loop),
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=ctx.workspace,
                env=self.environment(ctx),
                # Its own process group (to signal it and its children as one), but the runner's
                # session, so whatever ends the sandbox's session ends the executor too.
                process_group=0,
            )
        except OSError as exc:
            raise ExecutorStartFailed(
                f"cannot start {argv[0]} in {ctx.workspace}: {exc.strerror or exc}"
            ) from exc

        # process_group=0: the process leads its own process group.
        pgid = transport.get_pid()
        self._pgid = pgid
        self._exited = protocol.exited
        if self._interrupted:  # interrupt() came while the process was being started
            self._stopper = asyncio.create_task(self.interrupt(self._grace_seconds))
        assert protocol.stdin and protocol.stdout and protocol.stderr
        self.stdin = protocol.stdin

        lines: asyncio.Queue[_Line | None] = asyncio.Queue(maxsize=_READ_AHEAD_LINES)
        pumps = [
            _Pump(protocol.stdout, "stdout", lines, loop),
            _Pump(protocol.stderr, "stderr", lines, loop),
        ]
        feeder = asyncio.create_task(self._feed(protocol.stdin, ctx))
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
                text = decode_line(line.data)
                if not text.strip():
                    continue
                async for event in self.events_for_line(line.stream, text, ctx):
                    if event.session_id:
                        self.session_id = event.session_id
                    yield event
            await protocol.exited
            await asyncio.shield(reaper)
            # What the process started in sessions of its own (agent CLIs do) is gone too.
            await asyncio.to_thread(kill_strays, ctx)
            returncode = transport.get_returncode()
            yield self.result(returncode if returncode is not None else -1, ctx)
        finally:
            for task in (feeder, *pump_tasks, closer):
                task.cancel()
            if not protocol.exited.done():  # closed early: stop the process now
                signal_group(pgid, signal.SIGKILL)
                await asyncio.wait({protocol.exited}, timeout=_GROUP_EXIT_SECONDS)
            if protocol.exited.done():
                await asyncio.wait({reaper}, timeout=_GROUP_EXIT_SECONDS + 1)
            reaper.cancel()
            transport.close()
            self.stdin = None
            await asyncio.gather(feeder, *pump_tasks, reaper, closer, return_exceptions=True)
            if self._stopper is not None:
                await asyncio.gather(self._stopper, return_exceptions=True)
            await asyncio.to_thread(kill_strays, ctx)

    async def interrupt(self, grace_seconds: float) -> None:
        self._interrupted = True
        self._grace_seconds = grace_seconds
        pgid, exited = self._pgid, self._exited
        if pgid is None or exited is None:
            return  # not started yet: run() sees the flag
        if grace_seconds > 0:
            for sig in (signal.SIGINT, signal.SIGTERM):
                if exited.done() or not signal_group(pgid, sig):
                    return
                await asyncio.wait({exited}, timeout=grace_seconds)
        if not exited.done():
            signal_group(pgid, signal.SIGKILL)

    def turn_result(
        self,
        returncode: int,
        *,
        program: str,
        completed: bool,
        failure: str = "",
        incomplete: str = "ended without completing the turn",
        usage: Usage | None = None,
        session_id: str = "",
    ) -> ExecutorResult:
        """The result of a CLI that runs one turn per process: interrupted, failed (its stream
        said so, a non-zero exit, or no end of turn seen) or succeeded."""
        outcome: Literal["succeeded", "failed", "interrupted"]
        if self.interrupted:
            outcome, message = "interrupted", f"interrupted; {program} {describe_exit(returncode)}"
        elif failure:
            outcome, message = "failed", failure
        elif returncode != 0:
            outcome, message = "failed", f"{program} {describe_exit(returncode)}"
        elif not completed:
            outcome, message = "failed", f"{program} {incomplete}"
        else:
            outcome, message = "succeeded", "the turn completed"
        return ExecutorResult(
            outcome=outcome,
            exit_code=returncode,
            message=message,
            usage=usage or Usage(),
            session_id=session_id or self.session_id,
        )

    async def _feed(self, stdin: asyncio.StreamWriter, ctx: RunContext) -> None:
        # The process may not read its stdin (any more).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self.feed(stdin, ctx)


def stderr_event(text: str) -> ExecutorEvent:
    """A line the process wrote to stderr: a `system` entry."""
    entry = entries.system(text, stream="stderr")
    return ExecutorEvent(executor_event_type="stderr", raw=None, entry=entry)


def describe_exit(returncode: int) -> str:
    """ "exited with code N" or "was killed by signal NAME"."""
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def decode_line(data: bytes) -> str:
    """One output line as text, without its line end; invalid UTF-8 is replaced, not fatal."""
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    return data.decode("utf-8", errors="replace")


async def write_and_close(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write `data` (if any) and close the stream; a reader that went away is not an error."""
    try:
        if data:
            writer.write(data)
            await writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await writer.wait_closed()


def child_environment(base: Mapping[str, str], **extra: str) -> dict[str, str]:
    """`base` plus `extra`, leaving out the names whose value in `extra` is empty."""
    env = dict(base)
    for name, value in extra.items():
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    return env


class _ProcessProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The standard stream protocol plus a future that resolves when the process has exited.

    `Process.wait()` also waits for the pipes to close, which a leftover child can hold open;
    the runner needs the moment the process itself exits.
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
        # When the queue is full the pump is waiting on the consumer, not on the process.
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
            logger.exception("reading the process's %s failed", self.stream)
        self.done = True
        await self.lines.put(None)

    def idle_since(self) -> float | None:
        """Since when the pump has waited for the process without getting output, if it is."""
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


async def _clear_group_after_exit(exited: asyncio.Future[None], pgid: int) -> None:
    """Once the process has exited, kill what is left of its process group."""
    await asyncio.shield(exited)
    await kill_group(pgid)


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
                    "a process outside the process's group keeps its output open; closing it"
                )
                transport.close()  # the readers get end-of-stream
                return
        await asyncio.sleep(0.1)


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The group id was reused by a process we do not own: ours is gone.
        return False
    return True


async def kill_group(pgid: int) -> None:
    """Kill whatever is left of the process group and wait until it is gone (bounded)."""
    if not signal_group(pgid, signal.SIGKILL):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _GROUP_EXIT_SECONDS
    while True:
        _reap_group(pgid)
        if not signal_group(pgid, 0):
            return
        if loop.time() >= deadline:
            logger.warning("process group %d did not disappear after SIGKILL", pgid)
            return
        await asyncio.sleep(0.01)


def _reap_group(pgid: int) -> None:
    """Reap members of the group that became our children (the runner is a subreaper).

    Killed processes stay zombies, still in their group, until their parent reaps them; the
    executor's process is reaped by asyncio, its orphaned children are reparented to us.
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

    Without it, children the process's shell leaves behind are reparented to the sandbox's
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
