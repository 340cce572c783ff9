"""Fixtures that start the real `forge serve` as a subprocess, real git repositories, and a
webhook receiver on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from forge.sandbox.bwrap import cgroup_instance
from forge.sandbox.cgroups import CgroupManager
from forge.sandbox.processes import short_socket_dir
from tests.support.podman import PodmanEngine, podman_engine


def wait_for(predicate: Callable[[], object], timeout: float = 20) -> None:
    """Poll `predicate` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def runner_pids(text: str) -> list[int]:
    """Live (not zombie) `forge.runner` processes whose command line contains `text` (an agent
    id, or a server's data directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        program = Path(cmdline.split(" ", 1)[0]).name
        # Under `bwrap` the sandbox's own processes carry the runner's command line too.
        if "forge.runner" in cmdline and text in cmdline and state != "Z" and program != "bwrap":
            pids.append(int(entry.name))
    return pids


def host_pid(workspace: Path, sandbox_pid: int) -> int:
    """The host's pid of a process working in `workspace` that saw itself as `sandbox_pid`
    (`echo $$`): under `bwrap`, sandboxes have pid namespaces of their own."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        line = next((ln for ln in status.splitlines() if ln.startswith("NSpid:")), "")
        ids = [int(n) for n in line.split()[1:]]
        if ids and ids[-1] == sandbox_pid and Path(cwd) == workspace.resolve():
            return int(entry.name)
    raise AssertionError(f"no process of {workspace} has pid {sandbox_pid} in its sandbox")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The `[webhooks]` section servers get unless a test gives its own: local receivers allowed,
# quick retries.
TEST_WEBHOOKS = """
allow_private = true
retry_schedule_seconds = [0.2, 0.4, 0.8, 1.6]
jitter = 0.0
timeout_seconds = 5
"""


class ForgeServer:
    """One `forge serve` subprocess with its own config and data directory. `webhooks` replaces
    the body of its `[webhooks]` section ("" for Forge's defaults); `env` is added to its
    environment (from which every other FORGE_ variable is removed)."""

    def __init__(
        self,
        root: Path,
        extra_config: str = "",
        webhooks: str | None = None,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.env = dict(env or {})
        # Replicas share one (as they would share a volume).
        self.data_dir = data_dir or root / "data"
        self.port = free_port()
        self.config_path = root / "forge.toml"
        self.config_path.write_text(
            f"""
data_dir = "{self.data_dir}"

[server]
host = "127.0.0.1"
port = {self.port}

[webhooks]
{TEST_WEBHOOKS if webhooks is None else webhooks}

[sessions]
interrupt_grace_seconds = 1.0
{extra_config}
"""
        )
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.base_url, timeout=30)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
        env.update(self.env)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forge", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"forge serve exited early:\n{self.log()}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"forge serve did not come up:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill_runners(self) -> None:
        """Runners outlive the server by design; tests end them (and their sockets) explicitly."""
        subprocess.run(["pkill", "-KILL", "-f", str(self.data_dir)], check=False)
        shutil.rmtree(short_socket_dir(self.data_dir / "runners"), ignore_errors=True)
        # bwrap sandboxes' cgroups, once the processes in them are gone.
        cgroups = CgroupManager(cgroup_instance(self.data_dir / "runners"))
        for _ in range(50):
            cgroups.remove_empty()
            if not cgroups.available or not any(
                (base / f"forge-{cgroups.instance}").exists() for base in cgroups.bases()
            ):
                break
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        """Stop the server, end its runners (which outlive it by design) and the client."""
        self.stop()
        self.kill_runners()
        self.http.close()

    # ---- helpers ---------------------------------------------------------------------------------

    def create_agent(self, **body: Any) -> dict[str, Any]:
        body.setdefault("owner_id", "alice")
        response = self.http.post("/api/v1/agents", params={"wait": "true"}, json=body)
        assert response.status_code == 201, response.text
        agent: dict[str, Any] = response.json()
        assert agent["status"] == "ready", agent
        return agent

    def wait_final(
        self, agent_id: str, request_id: str, timeout: float = 30
    ) -> list[dict[str, Any]]:
        """The events of one run, once its final event is in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.history(agent_id)
            run = [e for e in events if e["request_id"] == request_id]
            if run and run[-1]["is_final"]:
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {request_id} did not finish; log:\n{self.log()[-4000:]}")

    def history(self, agent_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.http.get(
                f"/api/v1/agents/{agent_id}/events", params={"after": after, "limit": 1000}
            ).json()
            events.extend(page["events"])
            if not page["has_more"]:
                return events
            after = page["next_after"]


@pytest.fixture
def forge_server(tmp_path: Path) -> Iterator[Callable[..., ForgeServer]]:
    """Factory: `forge_server(extra_config="", webhooks=None, env=None)` returns a started
    server."""
    servers: list[ForgeServer] = []

    def make(
        extra_config: str = "",
        webhooks: str | None = None,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> ForgeServer:
        root = tmp_path / f"forge{len(servers)}"
        root.mkdir()
        server = ForgeServer(root, extra_config, webhooks, env, data_dir)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.close()


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def make_repository(repo: Path) -> Path:
    """A new git repository at `repo` with one commit (`hello.txt`) on `main`."""
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    git("config", "user.email", "test@example.com", cwd=repo)
    git("config", "user.name", "Test", cwd=repo)
    (repo / "hello.txt").write_text("hello\n")
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "initial", cwd=repo)
    return repo


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    return make_repository(tmp_path / "repo")


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every request; `respond` picks the status."""

    requests: list[Received] = field(default_factory=list)
    respond: Callable[[Received], int] = lambda _r: 200
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(list(self.requests)):
                    return
            time.sleep(0.05)
        raise AssertionError(f"receiver condition not met; got {len(self.requests)} requests")


def serve_webhooks(state: WebhookReceiver, port: int = 0) -> ThreadingHTTPServer:
    """Start an HTTP server on 127.0.0.1:`port` (0: any free port) that records requests in
    `state` and answers with `state.respond`; sets `state.url`. Stop it with `stop_serving`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            item = Received(
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length),
            )
            with state.lock:
                state.requests.append(item)
            status = state.respond(item)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def stop_serving(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    state = WebhookReceiver()
    server = serve_webhooks(state)
    yield state
    stop_serving(server)


@pytest.fixture(scope="session")
def podman() -> Iterator[PodmanEngine]:
    """podman's Docker-compatible API on a private socket, with the runner image (built once per
    machine); skipped, saying why, where podman cannot run."""
    with podman_engine() as engine:
        yield engine
