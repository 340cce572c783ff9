"""Driving an executor directly (no runner, no platform) and collecting what it yields."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from forge.executors import Executor, ExecutorEvent, ExecutorResult, RunContext


async def run_executor(
    executor: Executor,
    ctx: RunContext,
    *,
    on_event: Callable[[ExecutorEvent], Awaitable[None] | None] | None = None,
    timeout: float = 60,
) -> tuple[list[ExecutorEvent], ExecutorResult]:
    """Every event of one run and its one result; `on_event` sees each event as it comes
    (to answer a permission request or interrupt the run)."""
    events: list[ExecutorEvent] = []
    results: list[ExecutorResult] = []
    async with asyncio.timeout(timeout):
        async for output in executor.run(ctx):
            if isinstance(output, ExecutorResult):
                results.append(output)
                continue
            assert not results, "an event came after the result"
            events.append(output)
            if on_event is not None:
                maybe = on_event(output)
                if maybe is not None:
                    await maybe
    assert len(results) == 1, f"expected one result, got {results}"
    return events, results[0]


def entries_of(events: list[ExecutorEvent], kind: str) -> list[dict[str, object]]:
    return [e.entry for e in events if e.entry is not None and e.entry.get("kind") == kind]


def leftover_processes(workspace: Path, *programs: str) -> list[str]:
    """Live processes (not this one) whose command line names one of `programs` (paths are
    also matched resolved) or whose working directory is in `workspace`; "pid: cmdline" each."""
    names = {name for program in programs for name in (program, os.path.realpath(program))}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, or a zombie
            continue
        in_workspace = cwd == str(workspace) or cwd.startswith(f"{workspace}/")
        if in_workspace or any(name in cmdline for name in names):
            found.append(f"{entry.name}: {cmdline}")
    return found
