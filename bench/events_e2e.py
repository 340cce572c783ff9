"""Events end to end: runner -> event log -> live subscriber (WebSocket or SSE), on a real
`forge serve`.

    .venv/bin/python bench/events_e2e.py [--transport ws|sse] [--events 50000] [--rate 1000] \
        [--seconds 5] [--mode both|flood|paced] [--py-spy FILE]

Two runs on one server, each on its own agent, each watched by a subscriber that subscribed
before the message was sent: `WS /api/v1/agents/{id}/stream` (the default, one envelope per
frame) or `GET /api/v1/agents/{id}/events` with `Accept: text/event-stream` (`--transport sse`).

- flood: the command prints `--events` lines as fast as it can; the subscriber counts events
  and reports events/s from the first to the final event it saw.
- paced: the command prints one line a millisecond (`--rate` per second) for `--seconds`, each
  carrying the wall-clock time it was printed; the subscriber reports the latency (receive
  time - print time) as p50/p99/max.

Prints a table and writes bench/results/events_e2e.json (events_e2e_sse.json for SSE);
`--py-spy FILE` also records the server and its runner with py-spy (collapsed stacks). The
server and every runner it started are killed at the end (runners live in their own sessions,
so they are found by the temporary data directory on their command line)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect as ws_connect

from forge.sandbox.processes import short_socket_dir

RESULTS_DIR = Path(__file__).parent / "results"
FORGE_SERVE = [sys.executable, "-m", "forge", "serve"]

# The flood: `n` assistant-message lines, written in large blocks.
FLOOD_SCRIPT = """\
import sys
n = int(sys.argv[1])
out = sys.stdout
for start in range(0, n, 1000):
    lines = range(start, min(n, start + 1000))
    out.write("".join(f"flood line {i} of the benchmark\\n" for i in lines))
out.flush()
"""

# Paced: one JSON line per tick carrying the time it was printed.
PACED_SCRIPT = """\
import json, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
n = int(rate * seconds)
start = time.monotonic()
for i in range(n):
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    sys.stdout.write(json.dumps({"type": "tick", "i": i, "t": time.time()}) + "\\n")
    sys.stdout.flush()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A `forge serve` subprocess on a temporary data directory."""

    def __init__(self, root: Path, events: int, rate: float, seconds: float) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        # The scripts go on the command line: the sandbox does not see this temporary directory.
        flood = f"{sys.executable} -c {shlex.quote(FLOOD_SCRIPT)} {events}"
        paced = f"{sys.executable} -c {shlex.quote(PACED_SCRIPT)} {rate} {seconds}"
        self.config = root / "forge.toml"
        self.config.write_text(
            f"""
data_dir = "{self.data_dir}"

[server]
host = "127.0.0.1"
port = {self.port}

[profiles.flood]
executor = "command"
command = {json.dumps(flood)}

[profiles.paced]
executor = "command"
command = {json.dumps(paced)}
"""
        )
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.base_url, timeout=60)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*FORGE_SERVE, "--config", str(self.config), "--log-level", "warning"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("forge serve exited early:\n" + self.log())
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("forge serve did not come up:\n" + self.log())

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def create_agent(self, profile: str) -> str:
        response = self.http.post(
            "/api/v1/agents",
            params={"wait": "true"},
            json={"owner_id": "bench", "profile": profile},
        )
        response.raise_for_status()
        agent = response.json()
        assert agent["status"] == "ready", agent
        return str(agent["id"])

    def send(self, agent_id: str) -> None:
        response = self.http.post(
            f"/api/v1/agents/{agent_id}/messages",
            params={"user_id": "bench"},
            json={"content": "go"},
        )
        response.raise_for_status()

    def stop(self) -> None:
        """SIGTERM the server, then SIGKILL whatever still names the data directory."""
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in pids_mentioning(str(self.data_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(short_socket_dir(self.data_dir / "runners"), ignore_errors=True)


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (the runners this benchmark started)."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


@dataclass
class Subscriber:
    """A live SSE subscriber in its own thread; records when each event arrived."""

    base_url: str
    agent_id: str
    parse_data: bool = False
    ready: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    count: int = 0
    first_at: float = 0.0
    final_at: float = 0.0
    last_seq: int = 0
    gaps: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    runner_latencies_ms: list[float] = field(default_factory=list)
    chunks: int = 0
    sent_at: float = 0.0
    final_type: str = ""
    error: BaseException | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()
            self.done.set()

    def _read(self) -> None:
        url = f"{self.base_url}/api/v1/agents/{self.agent_id}/events"
        headers = {"accept": "text/event-stream"}
        timeout = httpx.Timeout(60, read=60)
        with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
            response.raise_for_status()
            buffer = b""
            for chunk in response.iter_raw():
                now = time.time()
                self.chunks += 1
                buffer += chunk
                *frames, buffer = buffer.split(b"\n\n")
                for frame in frames:
                    if self._frame(frame, now):
                        return

    def _frame(self, frame: bytes, now: float) -> bool:
        """Account one SSE frame; True once the run's final event is in."""
        if not frame.startswith(b"id: "):
            self.ready.set()  # the preamble: the subscription is live
            return False
        id_line, event_line, data_line = frame.split(b"\n", 2)
        return self._event(int(id_line[4:]), event_line[7:].decode(), data_line[6:], now)

    def _event(self, seq: int, event_type: str, data: bytes | str, now: float) -> bool:
        """Account one event; True once the run's final event is in."""
        if seq != self.last_seq + 1:
            self.gaps += 1
        self.last_seq = seq
        self.count += 1
        if self.count == 1:
            self.first_at = now
        if self.parse_data and event_type == "agent.event":
            envelope = json.loads(data)
            raw = envelope["event"]
            if isinstance(raw, dict) and "t" in raw:
                self.latencies_ms.append((now - raw["t"]) * 1000)
                # The runner stamps each message (to the millisecond) as it makes it.
                stamped = datetime.fromisoformat(envelope["timestamp"]).timestamp()
                self.runner_latencies_ms.append((stamped - raw["t"]) * 1000)
        if event_type in ("agent.complete", "agent.error"):
            self.final_at = now
            self.final_type = event_type
            return True
        return False


@dataclass
class WsSubscriber(Subscriber):
    """A live WebSocket subscriber (`WS /api/v1/agents/{id}/stream`): one envelope a frame."""

    def _read(self) -> None:
        url = self.base_url.replace("http://", "ws://")
        with ws_connect(f"{url}/api/v1/agents/{self.agent_id}/stream", max_size=None) as ws:
            self.ready.set()  # accepted: the server streams from the log from here on
            for frame in ws:
                now = time.time()
                self.chunks += 1
                head = json.loads(frame)
                if self._event(head["seq"], head["event_type"], frame, now):
                    return


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_mode(
    server: Server, profile: str, *, transport: str, parse_data: bool, timeout: float
) -> Subscriber:
    agent_id = server.create_agent(profile)
    kind = WsSubscriber if transport == "ws" else Subscriber
    subscriber = kind(server.base_url, agent_id, parse_data=parse_data)
    thread = subscriber.start()
    if not subscriber.ready.wait(10):
        raise RuntimeError(f"the {transport} subscription did not start")
    sent_at = time.time()
    server.send(agent_id)
    if not subscriber.done.wait(timeout):
        raise RuntimeError(
            f"{profile}: no final event within {timeout} s ({subscriber.count} seen)"
        )
    thread.join(5)
    if subscriber.error is not None:
        raise subscriber.error
    subscriber.sent_at = sent_at
    return subscriber


def start_py_spy(server: Server, output: Path) -> subprocess.Popen[bytes]:
    """py-spy recording the server and its children (the runner, the command) until SIGINT."""
    assert server.proc is not None
    py_spy = Path(sys.executable).with_name("py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    # --gil: only samples holding the GIL, i.e. where Python time goes, not idle waits.
    options = ["--subprocesses", "--gil", "--format", "raw", "--rate", "100"]
    profiler = subprocess.Popen(
        [str(py_spy), "record", "--pid", str(server.proc.pid), *options, "--output", str(output)]
    )
    time.sleep(1)  # let it attach
    return profiler


def flood_result(flood: Subscriber, lines: int) -> dict[str, Any]:
    span = flood.final_at - flood.first_at
    return {
        "lines": lines,
        "events": flood.count,
        "final": flood.final_type,
        "gaps": flood.gaps,
        "seconds_first_to_final": round(span, 3),
        "events_per_second": round((flood.count - 1) / span) if span > 0 else None,
        "seconds_message_to_final": round(flood.final_at - flood.sent_at, 3),
        # HTTP body chunks (SSE) or frames (WebSocket) the subscriber read.
        "chunks": flood.chunks,
    }


def paced_result(paced: Subscriber, rate: float, seconds: float) -> dict[str, Any]:
    def stat(values: list[float], q: float | None) -> float | None:
        if not values:
            return None
        return round(percentile(values, q) if q is not None else max(values), 2)

    latencies, runner = paced.latencies_ms, paced.runner_latencies_ms
    return {
        "rate": rate,
        "seconds": seconds,
        "events": paced.count,
        "final": paced.final_type,
        "gaps": paced.gaps,
        "samples": len(latencies),
        "latency_ms_p50": stat(latencies, 50),
        "latency_ms_p99": stat(latencies, 99),
        "latency_ms_max": stat(latencies, None),
        "latency_ms_mean": round(statistics.fmean(latencies), 2) if latencies else None,
        # Print -> the runner's timestamp on its message (1 ms resolution): the part of the
        # latency spent before the runner protocol.
        "runner_latency_ms_p50": stat(runner, 50),
        "runner_latency_ms_p99": stat(runner, 99),
    }


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    if f := result.get("flood"):
        rows += [
            ("flood events (subscriber saw)", f"{f['events']:,} ({f['gaps']} gaps, {f['final']})"),
            ("flood first -> final", f"{f['seconds_first_to_final']} s"),
            ("flood throughput", f"{f['events_per_second']:,} events/s"),
            ("flood message -> final", f"{f['seconds_message_to_final']} s"),
        ]
    if p := result.get("paced"):
        rows += [
            (f"paced {p['rate']:g}/s events", f"{p['events']:,} ({p['gaps']} gaps, {p['final']})"),
            ("paced latency p50", f"{p['latency_ms_p50']} ms"),
            ("paced latency p99", f"{p['latency_ms_p99']} ms"),
            ("paced latency max", f"{p['latency_ms_max']} ms"),
            (
                "paced print -> runner p50/p99",
                f"{p['runner_latency_ms_p50']} / {p['runner_latency_ms_p99']} ms",
            ),
        ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="lines the flood prints")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced lines per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the paced run is")
    parser.add_argument(
        "--mode", choices=["both", "flood", "paced"], default="both", help="which runs to make"
    )
    parser.add_argument(
        "--transport", choices=["ws", "sse"], default="ws", help="how the subscriber listens"
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="per run, in seconds")
    parser.add_argument(
        "--output",
        type=Path,
        help="where the JSON goes (default results/events_e2e.json, or events_e2e_sse.json)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="record the server and its runners with py-spy during the runs (collapsed stacks)",
    )
    args = parser.parse_args()
    if args.output is None:
        suffix = "" if args.transport == "ws" else f"_{args.transport}"
        args.output = RESULTS_DIR / f"events_e2e{suffix}.json"

    root = Path(tempfile.mkdtemp(prefix="forge-bench-"))
    server = Server(root, args.events, args.rate, args.seconds)
    result: dict[str, Any] = {
        "benchmark": "events_e2e",
        "transport": args.transport,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
        },
    }
    try:
        server.start()
        profiler = start_py_spy(server, args.py_spy) if args.py_spy else None
        if args.mode in ("both", "flood"):
            flood = run_mode(
                server, "flood", transport=args.transport, parse_data=False, timeout=args.timeout
            )
            result["flood"] = flood_result(flood, args.events)
        if args.mode in ("both", "paced"):
            paced = run_mode(
                server, "paced", transport=args.transport, parse_data=True, timeout=args.timeout
            )
            result["paced"] = paced_result(paced, args.rate, args.seconds)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
    except BaseException:
        print(server.log()[-4000:], file=sys.stderr)
        raise
    finally:
        server.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    rows = table(result)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
