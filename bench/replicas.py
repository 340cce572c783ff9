"""Runs per minute and events per second: one replica on SQLite, one and two replicas on
PostgreSQL.

    .venv/bin/python bench/replicas.py [--agents 8] [--runs 10] [--lines 200] \
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--only sqlite-1,postgres-2]

Each setup starts its replicas (`forge serve`, sharing one data directory as replicas share a
volume), creates `--agents` agents spread over them, then sends `--runs` messages to each agent,
each message to the next replica in turn, all at once. Every run is a `command` executor
printing `--lines` lines (so about `--lines` + 2 events). The clock runs from the first message
to the last run's final event; runs/min and events/s are over that time. An agent runs one run
at a time, so at most `--agents` run at once (`max_concurrent` is set above that).

PostgreSQL setups get a fresh database (made through the `--postgres` server and dropped after).
Prints a table and writes bench/results/replicas.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from forge.sandbox.processes import short_socket_dir
from forge.store.db import normalize_url

RESULTS_DIR = Path(__file__).parent / "results"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
SETUPS = ("sqlite-1", "postgres-1", "postgres-2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _admin(server: str, statement: str) -> None:
    engine = create_async_engine(normalize_url(server), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def create_database(server: str) -> str:
    name = f"forge_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    return make_url(normalize_url(server)).set(database=name).render_as_string(False)


def drop_database(server: str, url: str) -> None:
    name = make_url(url).database
    asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Replica:
    def __init__(self, root: Path, data_dir: Path, database_url: str, lines: int) -> None:
        self.port = free_port()
        self.config = root / f"forge-{self.port}.toml"
        self.config.write_text(
            f"""
data_dir = "{data_dir}"

[server]
port = {self.port}

[database]
url = "{database_url}"

[sessions]
max_concurrent = 1000

[profiles.bench]
executor = "command"
command = "seq 1 {lines}"
"""
        )
        self.log = root / f"forge-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "forge", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"forge serve exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if self.http.get("/healthz").status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("forge serve did not come up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()


def run_setup(name: str, args: argparse.Namespace) -> dict[str, Any]:
    backend, count = name.split("-")
    root = Path(tempfile.mkdtemp(prefix="forge-bench-replicas-"))
    data_dir = root / "data"
    database_url = ""
    if backend == "postgres":
        database_url = create_database(args.postgres)
    else:
        database_url = f"sqlite+aiosqlite:///{data_dir / 'forge.db'}"
    replicas = [Replica(root, data_dir, database_url, args.lines) for _ in range(int(count))]
    try:
        for replica in replicas:  # one after the other: the first one migrates
            replica.start()

        def create(i: int) -> str:
            reply = replicas[i % len(replicas)].http.post(
                "/api/v1/agents",
                params={"wait": "true"},
                json={"owner_id": "bench", "profile": "bench"},
            )
            reply.raise_for_status()
            return str(reply.json()["id"])

        with ThreadPoolExecutor(16) as pool:
            agents = list(pool.map(create, range(args.agents)))
            jobs = [(a, n) for n in range(args.runs) for a in agents]

            def send(job: tuple[str, int]) -> None:
                agent_id, n = job
                replica = replicas[(agents.index(agent_id) + n) % len(replicas)]
                reply = replica.http.post(
                    f"/api/v1/agents/{agent_id}/messages", json={"content": f"run {n}"}
                )
                reply.raise_for_status()

            started_wall = time.time()
            list(pool.map(send, jobs))
        total_runs = len(jobs)
        # Read back through one replica; the clock stops at the last final event's timestamp
        # (stored by whichever replica ran it), not when the reader noticed it.
        watcher = replicas[-1].http
        seen: dict[str, int] = dict.fromkeys(agents, 0)
        finals, last_final = 0, started_wall
        deadline = time.monotonic() + args.timeout
        while finals < total_runs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {finals} of {total_runs} runs ended")
            for agent_id in agents:
                while True:
                    page = watcher.get(
                        f"/api/v1/agents/{agent_id}/events",
                        params={"after": seen[agent_id], "limit": 1000},
                    ).json()
                    for event in page["events"]:
                        seen[agent_id] = event["seq"]
                        if event["is_final"]:
                            finals += 1
                            stamp = datetime.fromisoformat(
                                event["timestamp"].replace("Z", "+00:00")
                            )
                            last_final = max(last_final, stamp.timestamp())
                    if not page["has_more"]:
                        break
            if finals < total_runs:
                time.sleep(0.1)
        elapsed = last_final - started_wall
        events = sum(seen.values())
        return {
            "setup": name,
            "replicas": int(count),
            "database": backend,
            "runs": total_runs,
            "events": events,
            "seconds": round(elapsed, 3),
            "runs_per_minute": round(total_runs / elapsed * 60, 1),
            "events_per_second": round(events / elapsed, 1),
        }
    finally:
        for replica in replicas:
            replica.stop()
        subprocess.run(["pkill", "-KILL", "-f", str(data_dir)], check=False)
        shutil.rmtree(short_socket_dir(data_dir / "runners"), ignore_errors=True)
        if backend == "postgres":
            with contextlib.suppress(Exception):
                drop_database(args.postgres, database_url)
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--runs", type=int, default=10, help="messages per agent")
    parser.add_argument("--lines", type=int, default=200, help="lines each run prints")
    parser.add_argument(
        "--postgres", default=os.environ.get("FORGE_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--only", default=",".join(SETUPS), help="comma-separated setups")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "replicas.json")
    args = parser.parse_args()
    results = []
    for name in args.only.split(","):
        results.append(run_setup(name.strip(), args))
        print(f"done: {results[-1]}", file=sys.stderr)
    print(
        f"{'setup':<12} {'runs':>6} {'events':>8} {'seconds':>8} {'runs/min':>10} {'events/s':>10}"
    )
    for r in results:
        values = (r["runs"], r["events"], r["seconds"], r["runs_per_minute"])
        cells = " ".join(f"{v:>10}" for v in (*values, r["events_per_second"]))
        print(f"{r['setup']:<12} {cells}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "benchmark": "replicas",
                "date": datetime.now().isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "parameters": {"agents": args.agents, "runs": args.runs, "lines": args.lines},
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
