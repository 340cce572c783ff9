"""Create → ready: how long an agent takes to start, per runtime and repository size, with and
without the warm pool, with the git worktree step and the sandbox step shown apart.

    .venv/bin/python bench/cold_start.py [--sizes 100,2000,10000] [--runtimes local,bwrap]
        [--repeat 10] [--docker-url unix:///path/podman.sock --docker-image IMAGE]
        [--json PATH]

For each repository size a repository of that many files (small source-like files, ten a
directory, one commit) is generated once. Then, per runtime:

- steps: Forge's own `WorktreeManager.create` (the `git worktree add` of the agent's branch) and
  the runtime's `provision` until the runner accepts connections, timed apart, in this process;
  each sandbox and worktree is removed (untimed) before the next.
- cold: a real `forge serve` (SQLite, the runtime under test) and `POST /api/v1/agents?wait=true`
  on the repository: the request's wall time, i.e. create → `ready` as an application sees it.
  Each agent is deleted with `purge=true` (untimed) before the next.
- warm: the same server with a `[[sandbox.warm_pool]]` of 2 for that repository; before each
  create the benchmark waits until the pool is full again, so each create claims a ready sandbox.

Prints a table (p50 and p95 in milliseconds) and writes bench/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from forge.config import Settings
from forge.runner.client import RunnerClient
from forge.sandbox import get_runtime
from forge.sandbox.base import SandboxSpec, resource_limits
from forge.sandbox.bwrap import BwrapRuntime
from forge.workspace.worktrees import WorktreeManager

RESULTS = Path(__file__).parent / "results" / "cold_start.json"


def make_repo(root: Path, files: int) -> Path:
    repo = root / f"repo-{files}"
    if (repo / ".git").exists():
        return repo
    repo.mkdir(parents=True)
    for i in range(files):
        # Ten files a directory, twenty directories a package: a source tree's shape.
        path = repo / f"pkg{i // 200:02d}" / f"mod{i // 10 % 20:02d}" / f"file{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'"""Module {i}."""\n\n\ndef f{i}(x: int) -> int:\n    return x + {i}\n')
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@b",
        "GIT_COMMITTER_NAME": "b",
    }
    env["GIT_COMMITTER_EMAIL"] = "b@b"
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "files"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    return repo


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p95_ms": round(percentile(values, 0.95) * 1000, 1),
        "n": len(values),
    }


# ---- steps, in process ---------------------------------------------------------------------


async def measure_steps(settings: Settings, repo: Path, repeat: int) -> dict[str, dict[str, float]]:
    runtime = get_runtime(settings)
    worktrees = WorktreeManager(settings.worktree_base)
    source = await worktrees.resolve(str(repo), None)
    worktree_times: list[float] = []
    sandbox_times: list[float] = []
    for i in range(repeat):
        agent_id = f"ag_bench{i:04d}{int(time.time() * 1000) % 100000:05d}"
        started = time.perf_counter()
        workspace = await worktrees.create(agent_id, source)
        worktree_times.append(time.perf_counter() - started)
        git = await worktrees.git_metadata(workspace)
        spec = SandboxSpec(
            agent_id=agent_id,
            workspace=workspace.path,
            env={"PATH": os.environ.get("PATH", os.defpath)},
            limits=resource_limits(settings),
            git_common_dir=git.common_dir if git else None,
            git_writable=git.writable if git else (),
        )
        started = time.perf_counter()
        sandbox = await runtime.provision(spec)
        client = RunnerClient(sandbox.address, sandbox.token)
        await client.wait_ready(60)
        sandbox_times.append(time.perf_counter() - started)
        await client.close()
        await runtime.destroy(sandbox)
        await worktrees.remove(agent_id, str(repo), delete_branch=True)
    close = getattr(runtime, "close", None)
    if close is not None:
        await close()
    steps = {"worktree": summary(worktree_times), "sandbox": summary(sandbox_times)}
    if isinstance(runtime, BwrapRuntime):
        steps.update(bwrap_overhead(runtime, settings, repeat * 3))
    return steps


def bwrap_overhead(runtime: BwrapRuntime, settings: Settings, repeat: int) -> dict[str, Any]:
    """Forge's bwrap command line (every namespace and mount; not the rlimits and cgroup, which
    cost a few system calls) around `true`, against bare bubblewrap: what the sandbox itself
    costs, apart from the runner's start."""
    workspace = settings.data_dir / "overhead-ws"
    workspace.mkdir(parents=True, exist_ok=True)
    spec = SandboxSpec(
        agent_id="ag_overhead", workspace=workspace, limits=resource_limits(settings)
    )
    agent_dir = settings.runner_state_dir / spec.agent_id
    runtime._prepare_state(agent_dir)
    full = runtime.command_line(spec, agent_dir)
    ours = [*full[: full.index("--")], "--", "true"]
    bare = ["bwrap", "--unshare-all", "--uid", "1000", "--gid", "1000", "--cap-drop", "ALL"]
    bare += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", "true"]
    timings: dict[str, list[float]] = {"bare_bwrap": [], "forge_bwrap": []}
    for _ in range(repeat):
        for name, args in (("bare_bwrap", bare), ("forge_bwrap", ours)):
            started = time.perf_counter()
            subprocess.run(args, check=True, stdin=subprocess.DEVNULL)
            timings[name].append(time.perf_counter() - started)
    shutil.rmtree(agent_dir, ignore_errors=True)
    return {name: summary(values) for name, values in timings.items()}


# ---- end to end, through forge serve --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, root: Path, sandbox_config: str) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.port = free_port()
        config = root / "forge.toml"
        config.write_text(
            f'data_dir = "{root / "data"}"\n\n[server]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f"{sandbox_config}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
        self.log = open(root / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forge", "serve", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"forge serve did not start; see {root / 'server.log'}")

    def pool_full(self, size: int) -> bool:
        counts = self.http.get("/health").json()["sandbox"]["warm_pool"]
        return bool(counts) and all(n >= size for n in counts.values())

    def create(self, repo: Path) -> tuple[float, str]:
        started = time.perf_counter()
        response = self.http.post(
            "/api/v1/agents", params={"wait": "true"}, json={"owner_id": "bench", "repo": str(repo)}
        )
        elapsed = time.perf_counter() - started
        agent = response.json()
        if response.status_code != 201 or agent.get("status") != "ready":
            raise RuntimeError(f"create failed: {response.status_code} {response.text}")
        return elapsed, agent["id"]

    def delete(self, agent_id: str) -> None:
        self.http.delete(
            f"/api/v1/agents/{agent_id}", params={"purge": "true", "graceful": "false"}
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.http.close()
        self.log.close()
        subprocess.run(["pkill", "-KILL", "-f", str(self.root)], check=False)


def measure_e2e(
    root: Path, sandbox_config: str, repo: Path, repeat: int, pool: int
) -> dict[str, float]:
    config = sandbox_config
    if pool:
        config += f'\n[[sandbox.warm_pool]]\nprofile = "default"\nsize = {pool}\nrepo = "{repo}"\n'
    server = Server(root, config)
    times: list[float] = []
    try:
        for _ in range(repeat):
            if pool:
                deadline = time.monotonic() + 120
                while not server.pool_full(pool):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the warm pool did not fill")
                    time.sleep(0.05)
            elapsed, agent_id = server.create(repo)
            times.append(elapsed)
            server.delete(agent_id)
    finally:
        server.stop()
    return summary(times)


def sandbox_config(runtime: str, args: argparse.Namespace) -> str:
    config = f'[sandbox]\nruntime = "{runtime}"\n'
    if runtime == "docker":
        config += (
            f'[sandbox.docker]\nbase_url = "{args.docker_url}"\nimage = "{args.docker_image}"\n'
            f'forge_source = "{Path(__file__).resolve().parents[1] / "src"}"\n'
        )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,2000,10000")
    parser.add_argument("--runtimes", default="local,bwrap")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--docker-url", default="")
    parser.add_argument("--docker-image", default="forge-runner-test:latest")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    runtimes = args.runtimes.split(",")
    work = Path(tempfile.mkdtemp(prefix="forge-cold-start-"))
    rows: list[dict[str, Any]] = []
    try:
        for files in sizes:
            repo = make_repo(work / "repos", files)
            for runtime in runtimes:
                config_text = sandbox_config(runtime, args)
                data = work / f"steps-{runtime}-{files}"
                settings = Settings.model_validate(
                    {"data_dir": str(data), "sandbox": _sandbox_dict(runtime, args)}
                )
                steps = asyncio.run(measure_steps(settings, repo, args.repeat))
                cold = measure_e2e(
                    work / f"cold-{runtime}-{files}", config_text, repo, args.repeat, 0
                )
                warm = measure_e2e(
                    work / f"warm-{runtime}-{files}", config_text, repo, args.repeat, 2
                )
                row = {"files": files, "runtime": runtime, **steps, "cold": cold, "warm": warm}
                rows.append(row)
                print_row(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "cold_start",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "repeat": args.repeat,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")


def _sandbox_dict(runtime: str, args: argparse.Namespace) -> dict[str, Any]:
    sandbox: dict[str, Any] = {"runtime": runtime}
    if runtime == "docker":
        sandbox["docker"] = {
            "base_url": args.docker_url,
            "image": args.docker_image,
            "forge_source": str(Path(__file__).resolve().parents[1] / "src"),
        }
    return sandbox


HEADER = (
    f"{'files':>6} {'runtime':<8} | {'worktree p50/p95':>17} | {'sandbox p50/p95':>16} | "
    f"{'cold create p50/p95':>20} | {'warm create p50/p95':>20}"
)


def print_row(row: dict[str, Any]) -> None:
    if not getattr(print_row, "header_done", False):
        print(HEADER)
        print("-" * len(HEADER))
        print_row.header_done = True  # type: ignore[attr-defined]

    def cell(key: str) -> str:
        return f"{row[key]['p50_ms']:>7.1f} / {row[key]['p95_ms']:>7.1f}"

    print(
        f"{row['files']:>6} {row['runtime']:<8} | {cell('worktree'):>17} | {cell('sandbox'):>16} | "
        f"{cell('cold'):>20} | {cell('warm'):>20}",
        flush=True,
    )
    if "bare_bwrap" in row:
        print(
            f"{'':>6} {'':<8}   bwrap around `true`: bare {cell('bare_bwrap')}, "
            f"Forge's {cell('forge_bwrap')}",
            flush=True,
        )


if __name__ == "__main__":
    main()
