"""`EventLog.append` alone, in process, on a SQLite file: events/s and CPU per call by batch size.

    .venv/bin/python bench/eventlog_append.py [--events 10000] [--secrets 10]

For each batch size (1, 10, 100, 500; 500 again with a webhook, so each event also writes a
delivery row) appends drafts like the ones a `command` run makes, best of three rounds.
`--secrets N` redacts N configured secrets (none of which the events hold: the common case). CPU
time covers every thread of the process (aiosqlite works in its own). Writes
bench/results/eventlog_append.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from forge.core.eventlog import EventBus, EventLog
from forge.core.events import EventDraft
from forge.core.redaction import SecretRedactor
from forge.store.db import Database
from forge.store.tables import AgentRow, RunRow

RESULTS = Path(__file__).parent / "results" / "eventlog_append.json"
CASES = [(1, False), (10, False), (100, False), (500, False), (500, True)]


async def prepare(db: Database, webhook: bool) -> None:
    async with db.write() as session:
        session.add(
            AgentRow(id="ag_1", owner_id="o", profile="p", executor="command", status="ready")
        )
        await session.flush()
        session.add(
            RunRow(
                agent_id="ag_1",
                request_id="req_1",
                owner_id="o",
                prompt="",
                body_hash="",
                status="running",
                webhook_url="http://127.0.0.1:9/hook" if webhook else None,
            )
        )


async def measure(
    directory: Path, batch: int, webhook: bool, events: int, secrets: int
) -> dict[str, Any]:
    db = Database(f"sqlite+aiosqlite:///{directory / f'{batch}-{webhook}.db'}")
    await db.migrate()
    await prepare(db, webhook)
    redactor = SecretRedactor(f"secret-value-{i:04d}-{os.urandom(8).hex()}" for i in range(secrets))
    log = EventLog(db, EventBus(), redactor=redactor)
    calls = max(1, events // batch)
    runner_seq = 0
    best: dict[str, Any] = {}
    for _ in range(3):
        wall = cpu = 0.0
        for _ in range(calls):
            drafts = []
            for _ in range(batch):
                runner_seq += 1
                drafts.append(
                    EventDraft(
                        event_type="agent.event",
                        request_id="req_1",
                        runner_seq=runner_seq,
                        executor="command",
                        entry={"kind": "assistant_message", "text": f"line {runner_seq}"},
                    )
                )
            started, started_cpu = time.perf_counter(), time.process_time()
            await log.append("ag_1", drafts, runner_ack=runner_seq)
            wall += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
        rate = calls * batch / wall
        if not best or rate > best["events_per_second"]:
            best = {
                "batch": batch,
                "webhook": webhook,
                "events_per_second": round(rate),
                "cpu_ms_per_append": round(cpu / calls * 1000, 2),
            }
    await db.close()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events a round (at least)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--secrets", type=int, default=0, help="configured secrets to redact")
    args = parser.parse_args()
    load = [round(x, 2) for x in os.getloadavg()]
    directory = Path(tempfile.mkdtemp(prefix="forge-bench-"))
    try:
        rows = [
            asyncio.run(
                measure(directory, batch, webhook, min(args.events, batch * 300), args.secrets)
            )
            for batch, webhook in CASES
        ]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result = {
        "benchmark": "eventlog_append",
        "load_average_before": load,
        "secrets": args.secrets,
        "cases": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'batch':>5}  {'webhook':<7}  {'events/s':>9}  {'CPU ms/append':>13}")
    for row in rows:
        print(
            f"{row['batch']:>5}  {'yes' if row['webhook'] else 'no':<7}  "
            f"{row['events_per_second']:>9,}  {row['cpu_ms_per_append']:>13}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
