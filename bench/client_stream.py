"""How fast an application reads an agent's events through `forge.client`, against reading them
by hand, on a real `forge serve`.

    .venv/bin/python bench/client_stream.py [--events 20000] [--rounds 3]

One agent's run prints `--events` lines (the flood of events_e2e.py); once its final event is in
the log, each reader reads the whole log from seq 0 to that final event, so what is measured is
the reader (transport, parsing, the client's models), not the run:

- raw SSE: httpx streaming `GET /events` with `Accept: text/event-stream`, `json.loads` per event
  (dicts, no models): what a hand-written client does;
- `ForgeClient.stream` over SSE and over WebSocket, and `AsyncForgeClient.stream` over both
  (`EventEnvelope` models, resume bookkeeping);
- `ForgeClient.iter_events`: the history, 1,000 events a page.

Best of `--rounds` for each. Prints a table and writes bench/results/client_stream.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from events_e2e import Server

from forge.client import AsyncForgeClient, ForgeClient, Transport

RESULTS = Path(__file__).parent / "results" / "client_stream.json"


def raw_sse(base_url: str, agent_id: str, last: int) -> int:
    count = 0
    headers = {"Accept": "text/event-stream"}
    with httpx.stream(
        "GET", f"{base_url}/api/v1/agents/{agent_id}/events", headers=headers, timeout=60
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                count += 1
                if event["seq"] == last:
                    return count
    raise RuntimeError("the stream ended early")


def client_stream(transport: Transport) -> Callable[[str, str, int], int]:
    def read(base_url: str, agent_id: str, last: int) -> int:
        count = 0
        with ForgeClient(base_url) as client:
            for event in client.stream(agent_id, transport=transport):
                count += 1
                if event.seq == last:
                    return count
        raise RuntimeError("the stream ended early")

    return read


def async_client_stream(transport: Transport) -> Callable[[str, str, int], int]:
    async def read_async(base_url: str, agent_id: str, last: int) -> int:
        count = 0
        async with (
            AsyncForgeClient(base_url) as client,
            client.stream(agent_id, transport=transport) as events,
        ):
            async for event in events:
                count += 1
                if event.seq == last:
                    return count
        raise RuntimeError("the stream ended early")

    return lambda base_url, agent_id, last: asyncio.run(read_async(base_url, agent_id, last))


def history(base_url: str, agent_id: str, last: int) -> int:
    with ForgeClient(base_url) as client:
        return sum(1 for _ in client.iter_events(agent_id))


READERS: dict[str, Callable[[str, str, int], int]] = {
    "raw SSE (httpx + json.loads)": raw_sse,
    "ForgeClient.stream, SSE": client_stream("sse"),
    "ForgeClient.stream, WebSocket": client_stream("websocket"),
    "AsyncForgeClient.stream, SSE": async_client_stream("sse"),
    "AsyncForgeClient.stream, WebSocket": async_client_stream("websocket"),
    "ForgeClient.iter_events (pages)": history,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="forge-bench-client-") as tmp:
        server = Server(Path(tmp), args.events, rate=1.0, seconds=1.0)
        server.start()
        try:
            agent_id = server.create_agent("flood")
            server.send(agent_id)
            print(f"waiting for the run's {args.events} events...", file=sys.stderr)
            with ForgeClient(server.base_url) as client:
                # Followed once to its end: the run is over, the log complete (and warm).
                last = next(e.seq for e in client.stream(agent_id) if e.is_final)
            rows = []
            for name, read in READERS.items():
                best = float("inf")
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    count = read(server.base_url, agent_id, last)
                    best = min(best, time.perf_counter() - started)
                    if count != last:
                        raise RuntimeError(f"{name} read {count} events, not {last}")
                rows.append({"reader": name, "events": last, "seconds": round(best, 3),
                             "events_per_s": round(last / best)})  # fmt: skip
                print(f"{name}: {last / best:,.0f} events/s", file=sys.stderr)
        finally:
            server.stop()

    width = max(len(r["reader"]) for r in rows)
    print(f"\n{'reader':<{width}}  {'events':>7}  {'seconds':>8}  {'events/s':>9}")
    for r in rows:
        print(
            f"{r['reader']:<{width}}  {r['events']:>7}  {r['seconds']:>8}  {r['events_per_s']:>9,}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "client_stream",
                "events": last,
                "rounds": args.rounds,
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
