"""10,000 sessions: `SessionService` on SQLite against a file-based JSON state of the same.

    .venv/bin/python bench/sessions.py [--sessions 10000] [--calls 200] [--json-calls 50]

Writes the sessions (agents with 3 runs each, spread over a year, several owners, profiles and
statuses) with bulk inserts, then times in process, each operation `--calls` times:

- list: `list_sessions(None)`, the first page of 50;
- filter: `status="stopped", profile=...`, first page;
- date range: `created_after`/`created_before` spanning a month, first page;
- get: `get(id)` of random ids.

The JSON side is what a file-based tool does per operation: read `sessions.json` and parse it,
then sort and slice (list), filter, sort and slice (filter, date range: ISO strings compared as
strings, which favours it), or scan for the id (get); and, for get, reading one per-session file
`sessions/<id>.json` instead. Writes bench/results/sessions.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, insert

from forge.core.sessions import SessionService
from forge.store.db import Database
from forge.store.tables import AgentRow, RunRow

RESULTS = Path(__file__).parent / "results" / "sessions.json"
PROFILES = ["default", "claude", "codex", "gemini", "reviewer"]
STATUSES = ["ready", "stopped", "stopped", "stopped", "failed", "running"]
OWNERS = [f"user{n}" for n in range(20)]
RUNS_PER_SESSION = 3
START = datetime(2024, 1, 1, tzinfo=UTC)
_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghjkmnpqrstvwxyz"
)


def agent_id_at(moment: datetime) -> str:
    """An `ag_` id as `forge.core.ids` makes it, for a session created at `moment` (so ids sort
    by creation time, as they do in a real database)."""
    raw = int(moment.timestamp() * 1000).to_bytes(6, "big") + os.urandom(10)
    return "ag_" + base64.b32encode(raw)[:26].translate(_TO_CROCKFORD).decode()


def make_sessions(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """The sessions as plain data: one dict each, with its runs."""
    sessions = []
    for n in range(count):
        created = START + timedelta(seconds=n * 365 * 86400 / count + rng.random())
        runs = [
            {
                "request_id": f"req-{r}",
                "prompt": f"Do task {n}.{r}: " + "lorem ipsum " * 8,
                "status": "succeeded",
                "usage": {"input_tokens": 1200 + r, "output_tokens": 300, "cost_usd": 0.012},
                "created_at": created + timedelta(minutes=r),
            }
            for r in range(RUNS_PER_SESSION)
        ]
        sessions.append(
            {
                "id": agent_id_at(created),
                "owner_id": rng.choice(OWNERS),
                "profile": rng.choice(PROFILES),
                "executor": "claude_code",
                "status": rng.choice(STATUSES),
                "repo": f"/home/dev/repo{n % 40}",
                "branch": f"forge/task-{n}",
                "workspace_path": f"/home/dev/.forge/worktrees/task-{n}",
                "executor_session_id": f"sess-{n:06d}",
                "metadata": {"title": f"Task {n}"},
                "created_at": created,
                "updated_at": created + timedelta(minutes=RUNS_PER_SESSION),
                "runs": runs,
            }
        )
    return sessions


async def fill_database(db: Database, sessions: list[dict[str, Any]]) -> float:
    """Insert the sessions in bulk; the seconds it took."""
    agents_table = cast(Table, AgentRow.__table__)
    runs_table = cast(Table, RunRow.__table__)
    began = time.perf_counter()
    for chunk_start in range(0, len(sessions), 2000):
        chunk = sessions[chunk_start : chunk_start + 2000]
        agents = [
            {
                **{k: v for k, v in s.items() if k != "runs"},
                "last_seq": 0,
                "runner_ack": 0,
            }
            for s in chunk
        ]
        runs = [
            {
                "agent_id": s["id"],
                "owner_id": s["owner_id"],
                "body_hash": "",
                "priority": 0,
                "interrupt_requested": False,
                "outcome": "succeeded",
                **run,
            }
            for s in chunk
            for run in s["runs"]
        ]
        async with db.write() as session:
            conn = await session.connection()
            await conn.execute(insert(agents_table), agents)
            await conn.execute(insert(runs_table), runs)
    return time.perf_counter() - began


def write_json_state(directory: Path, sessions: list[dict[str, Any]]) -> int:
    """`sessions.json` (the index a file-based tool keeps) and `sessions/<id>.json`; the
    index's size in bytes."""

    def plain(session: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(session, default=lambda v: v.isoformat()))

    items = [plain(s) for s in sessions]
    index = directory / "sessions.json"
    index.write_text(json.dumps({"sessions": items}, indent=2))
    per_session = directory / "sessions"
    per_session.mkdir()
    for item in items:
        (per_session / f"{item['id']}.json").write_text(json.dumps(item, indent=2))
    return index.stat().st_size


class JsonState:
    """The file-based tool's reads: everything from disk, every time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load(self) -> list[dict[str, Any]]:
        sessions: list[dict[str, Any]] = json.loads((self.directory / "sessions.json").read_text())[
            "sessions"
        ]
        return sessions

    def list(self) -> list[dict[str, Any]]:
        sessions = self.load()
        sessions.sort(key=lambda s: s["created_at"], reverse=True)
        return sessions[:50]

    def filter(self, status: str, profile: str) -> list[dict[str, Any]]:
        found = [s for s in self.load() if s["status"] == status and s["profile"] == profile]
        found.sort(key=lambda s: s["created_at"], reverse=True)
        return found[:50]

    def date_range(self, after: str, before: str) -> list[dict[str, Any]]:
        found = [s for s in self.load() if after <= s["created_at"] < before]
        found.sort(key=lambda s: s["created_at"], reverse=True)
        return found[:50]

    def get(self, session_id: str) -> dict[str, Any]:
        return next(s for s in self.load() if s["id"] == session_id)

    def get_file(self, session_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.directory / "sessions" / f"{session_id}.json").read_text()
        )
        return data


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return {"p50": round(statistics.median(ordered), 3), "p95": round(p95, 3)}


async def time_async(
    calls: int, make: Callable[[int], Awaitable[object]], check: Callable[[Any], bool]
) -> dict[str, float]:
    for n in range(3):
        await make(n)
    samples = []
    for n in range(calls):
        began = time.perf_counter()
        result = await make(n)
        samples.append((time.perf_counter() - began) * 1000)
        assert check(result)
    return percentiles(samples)


def time_sync(calls: int, make: Callable[[int], object]) -> dict[str, float]:
    make(0)
    samples = []
    for n in range(calls):
        began = time.perf_counter()
        make(n)
        samples.append((time.perf_counter() - began) * 1000)
    return percentiles(samples)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json-calls", type=int, default=50, help="calls per JSON-index op")
    args = parser.parse_args()
    rng = random.Random(7)
    directory = Path(tempfile.mkdtemp(prefix="forge-bench-sessions-"))
    try:
        sessions = make_sessions(args.sessions, rng)
        db = Database(f"sqlite+aiosqlite:///{directory / 'forge.db'}")
        await db.migrate()
        fill_seconds = await fill_database(db, sessions)
        index_bytes = write_json_state(directory, sessions)
        print(
            f"{args.sessions} sessions ({args.sessions * RUNS_PER_SESSION} runs) inserted in "
            f"{fill_seconds:.1f} s; sessions.json is {index_bytes / 1e6:.1f} MB",
            flush=True,
        )
        service = SessionService(db)
        files = JsonState(directory)
        ids = [s["id"] for s in sessions]
        picks = [rng.choice(ids) for _ in range(max(args.calls, args.json_calls))]
        month_after = START + timedelta(days=150)
        month_before = month_after + timedelta(days=30)
        after_iso, before_iso = month_after.isoformat(), month_before.isoformat()

        forge = {
            "list": await time_async(
                args.calls,
                lambda n: service.list_sessions(None, limit=50),
                lambda page: len(page.sessions) == 50,
            ),
            "filter status+profile": await time_async(
                args.calls,
                lambda n: service.list_sessions(None, status="stopped", profile="codex"),
                lambda page: len(page.sessions) == 50,
            ),
            "date range": await time_async(
                args.calls,
                lambda n: service.list_sessions(
                    None, created_after=month_after, created_before=month_before
                ),
                lambda page: len(page.sessions) == 50,
            ),
            "get": await time_async(
                args.calls,
                lambda n: service.get(picks[n], None),
                lambda session: session.runs == RUNS_PER_SESSION,
            ),
        }
        await db.close()
        print("forge done", flush=True)
        json_state = {
            "list": time_sync(args.json_calls, lambda n: files.list()),
            "filter status+profile": time_sync(
                args.json_calls, lambda n: files.filter("stopped", "codex")
            ),
            "date range": time_sync(
                args.json_calls, lambda n: files.date_range(after_iso, before_iso)
            ),
            "get": time_sync(args.json_calls, lambda n: files.get(picks[n])),
            "get (per-session file)": time_sync(args.calls, lambda n: files.get_file(picks[n])),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    rows = []
    for name, timing in json_state.items():
        forge_timing = forge["get" if name.startswith("get") else name]
        rows.append(
            {
                "operation": name,
                "forge_ms": forge_timing,
                "json_ms": timing,
                "speedup_p50": round(timing["p50"] / forge_timing["p50"], 1),
            }
        )
    print(f"\n{'operation':<24} {'forge p50/p95 ms':>18} {'json p50/p95 ms':>18} {'x p50':>8}")
    for row in rows:
        f, j = row["forge_ms"], row["json_ms"]
        print(
            f"{row['operation']:<24} {f['p50']:>8.2f} / {f['p95']:<7.2f} "
            f"{j['p50']:>8.2f} / {j['p95']:<7.2f} {row['speedup_p50']:>8.1f}"
        )
    p50_met = all(t["p50"] <= 20 for t in forge.values())
    speedup_met = all(row["speedup_p50"] >= 100 for row in rows)
    print(f"\ntarget p50 <= 20 ms: {'met' if p50_met else 'NOT met'}")
    print(f"target >= 100x faster than JSON files: {'met' if speedup_met else 'NOT met'}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "sessions": args.sessions,
                "runs_per_session": RUNS_PER_SESSION,
                "calls": args.calls,
                "json_calls": args.json_calls,
                "insert_seconds": round(fill_seconds, 2),
                "sessions_json_bytes": index_bytes,
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
                "operations": rows,
                "target_p50_met": p50_met,
                "target_speedup_met": speedup_met,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
