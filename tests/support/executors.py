"""Driving an executor directly (no runner, no platform) and collecting what it yields."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

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
