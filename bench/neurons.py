"""A neuron's state document over a long log, in process, on a SQLite file: what opening its
stream costs (a cold fold of the whole log), a warm one (from the folded document a replica
keeps), resuming at a version in the middle, and the document's size.

    .venv/bin/python bench/neurons.py [--runs 200] [--events-per-run 50]

The log is `runs` runs of a busy agent: each starts, thinks, edits files, calls tools, updates its
todos and answers in Markdown sections. Best of three rounds each. Writes
bench/results/neurons.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

from forge.config import NeuronSettings
from forge.core.agents import AgentService
from forge.core.eventlog import EventBus, EventLog, StoredEvent
from forge.core.events import EventDraft, Usage
from forge.core.neurons import NeuronService
from forge.store.db import Database
from forge.store.tables import AgentRow, RunRow

RESULTS = Path(__file__).parent / "results" / "neurons.json"


def run_drafts(run: int, events: int) -> list[EventDraft]:
    request_id = f"req_{run}"
    drafts = [EventDraft(event_type="agent.status", status="running", request_id=request_id)]
    for i in range(events - 2):
        kind = i % 5
        if kind == 0:
            entry: dict[str, Any] = {"kind": "thinking", "text": f"considering step {i} " * 8}
        elif kind == 1:
            entry = {
                "kind": "tool_call",
                "tool": "edit",
                "action": "file_edit",
                "status": "success",
                "path": f"src/module_{run % 40}_{i % 7}.py",
            }
        elif kind == 2:
            entry = {"kind": "tool_call", "tool": "bash", "status": "running", "detail": "pytest"}
        elif kind == 3:
            entry = {
                "kind": "todo",
                "items": [{"content": f"task {j}", "status": "pending"} for j in range(6)],
            }
        else:
            entry = {"kind": "assistant_message", "text": f"## Step {i}\nDone.\n\n## Next\nMore."}
        drafts.append(EventDraft(event_type="agent.event", request_id=request_id, entry=entry))
    drafts.append(
        EventDraft(
            event_type="agent.complete",
            outcome="succeeded",
            request_id=request_id,
            usage=Usage(input_tokens=1000, output_tokens=200, cost_usd=0.01),
        )
    )
    return drafts


async def prepare(db: Database, runs: int, events: int) -> EventLog:
    async with db.write() as session:
        session.add(
            AgentRow(
                id="ag_1", owner_id="o", profile="neuron:n", executor="command", status="ready"
            )
        )
        await session.flush()
        for run in range(runs):
            session.add(
                RunRow(
                    agent_id="ag_1",
                    request_id=f"req_{run}",
                    owner_id="o",
                    prompt=f"do part {run}",
                    body_hash="",
                    status="succeeded",
                )
            )
    log = EventLog(db, EventBus())
    for run in range(runs):
        await log.append("ag_1", run_drafts(run, events))
    return log


async def measure(directory: Path, runs: int, events: int) -> dict[str, Any]:
    db = Database(f"sqlite+aiosqlite:///{directory / 'neurons.db'}")
    await db.migrate()
    log = await prepare(db, runs, events)

    async def stored(after: int) -> AsyncIterator[Sequence[StoredEvent]]:
        yield await log.read_stored("ag_1", after=after, limit=1)

    def service() -> NeuronService:
        agents = cast(AgentService, None)  # folding and streaming do not use it
        return NeuronService(NeuronSettings(), db, log, EventBus(), agents, {})

    async def first_frames(neurons: NeuronService, version: int | None) -> tuple[float, int]:
        start = time.perf_counter()
        count = 0
        stream = neurons.stream("n", "ag_1", None, version=version, pages=stored)
        async for step in stream:
            count += len(step)
            break  # the first step: the snapshot, or the operations right after `version`
        await stream.aclose()
        return time.perf_counter() - start, count

    async def best(make: Any, version: int | None) -> float:
        times = []
        for _ in range(3):
            elapsed, _ = await first_frames(make(), version)
            times.append(elapsed)
        return min(times)

    cold = await best(service, None)
    warm_service = service()
    folded = await warm_service.fold("n", "ag_1", None)
    warm = await best(lambda: warm_service, None)
    middle = folded.version // 2
    resume_cold = await best(service, middle)
    snapshot_bytes = len(json.dumps(folded.doc))
    await db.close()
    total = runs * events
    return {
        "runs": runs,
        "events": total,
        "operations": folded.version,
        "cold_open_ms": round(cold * 1000, 1),
        "cold_events_per_s": round(total / cold),
        "warm_open_ms": round(warm * 1000, 2),
        "resume_middle_cold_ms": round(resume_cold * 1000, 1),
        "snapshot_kib": round(snapshot_bytes / 1024, 1),
        "messages_kept": len(folded.doc["messages"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--events-per-run", type=int, default=50)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="forge-bench-neurons-"))
    try:
        result = asyncio.run(measure(directory, args.runs, args.events_per_run))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    rows = [(key, str(value)) for key, value in result.items()]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value:>12}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"python": sys.version.split()[0], **result}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
