"""The runner protocol alone: how fast a real runner's events reach the platform's client.

    .venv/bin/python bench/runner_stream.py [--events 100000]

Starts `python -m forge.runner` on a unix socket, runs a `command` that prints `--events` lines
as fast as it can, and reads the stream with `RunnerClient` (acknowledging every 5,000), with
no event log and no subscribers: messages/s from the first to the final message, and how many
stream writes (`RunnerBatch`es) carried them. Writes bench/results/runner_stream.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from forge.runner import RunnerClient
from forge.runner.proto import runner_pb2

RESULTS = Path(__file__).parent / "results" / "runner_stream.json"
ACK_EVERY = 5000


def start_runner(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A runner on a unix socket in `directory`, once it listens; and its address."""
    workspace = directory / "ws"
    workspace.mkdir()
    address = f"unix:{directory}/r.sock"
    args = [sys.executable, "-m", "forge.runner", "--listen", address]
    args += ["--workspace", str(workspace), "--agent-id", "ag_bench"]
    args += ["--log-file", str(directory / "runner.log")]
    runner = subprocess.Popen(args, stdout=subprocess.PIPE, start_new_session=True)
    assert runner.stdout is not None
    runner.stdout.readline()  # the runner prints its address once it listens
    return runner, address


async def measure(address: str, events: int) -> dict[str, Any]:
    client = RunnerClient(address)
    try:
        await client.wait_ready(10)
        stream = await client.connect()
        printer = (
            "import sys; w = sys.stdout.write\nfor i in range(int(sys.argv[1])): w(f'line {i}\\n')"
        )
        spec = runner_pb2.ExecutorSpec(
            kind="command", command=f'{sys.executable} -c "{printer}" {events}'
        )
        await stream.run("req_bench", "", spec)
        count, first, acked = 0, 0.0, 0
        async for message in stream:
            kind = message.WhichOneof("kind")
            if kind == "state":
                continue
            count += 1
            if count == 1:
                first = time.perf_counter()
            if message.runner_seq - acked >= ACK_EVERY:
                await stream.ack(message.runner_seq)
                acked = message.runner_seq
            if kind in ("complete", "error"):
                break
        seconds = time.perf_counter() - first
        return {
            "benchmark": "runner_stream",
            "events": events,
            "messages": count,
            "seconds": round(seconds, 3),
            "messages_per_second": round((count - 1) / seconds),
            "stream_writes": stream.batches_received,
        }
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="lines the command prints")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    load = [round(x, 2) for x in os.getloadavg()]
    directory = Path(tempfile.mkdtemp(prefix="frb", dir="/tmp"))  # short: a socket path
    runner, address = start_runner(directory)
    try:
        result = {**asyncio.run(measure(address, args.events)), "load_average_before": load}
    finally:
        runner.kill()
        runner.wait()
        shutil.rmtree(directory, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['messages']:,} messages in {result['seconds']} s: "
        f"{result['messages_per_second']:,} messages/s in {result['stream_writes']:,} stream writes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
