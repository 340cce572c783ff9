"""The `docker` runtime against a real engine: podman's Docker-compatible API, real containers
from the runner image (scripts/build-runner-image), the real runner inside. Start, reach the
runner with its token, the lockdown seen from inside, git in a worktree, destroy, failures, and
a whole `forge serve` on top."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge.config import DockerSettings, SandboxSettings, Settings
from forge.core.errors import ProvisioningFailed
from forge.runner import RunnerClient
from forge.sandbox.base import ResourceLimits, Sandbox, SandboxSpec
from forge.sandbox.docker import DockerRuntime, container_name
from tests.integration.conftest import ForgeServer, git, wait_for
from tests.support.podman import (
    IMAGE_PYTHON,
    REPO,
    PodmanEngine,
    docker_sandbox_config,
)
from tests.support.sandboxes import assert_refuses_a_wrong_token, run_command

# The first test also builds the runner image when this machine has not cached it (~100 s).
pytestmark = pytest.mark.timeout(300)

AGENT = "ag_01JZ8K2M3N4P5Q6R7S8T9V0W1X"
UID = 1000
LIMITS = ResourceLimits(
    processes=256,
    memory_bytes=512 * 1024 * 1024,
    cpu_seconds=600,
    cpus=1.5,
    file_size_bytes=64 * 1024 * 1024,
    open_files=1024,
)


@pytest.fixture
def leftovers(podman: PodmanEngine) -> Iterator[list[str]]:
    """Agent ids whose containers a failed test may have left: removed afterwards."""
    agent_ids: list[str] = []
    yield agent_ids
    for agent_id in agent_ids:
        podman.remove_containers(f"forge.agent={agent_id}")


def runtime_for(tmp_path: Path, engine: PodmanEngine, **options: Any) -> DockerRuntime:
    docker = {
        "base_url": engine.socket_url,
        "image": engine.image,
        "forge_source": str(REPO / "src"),
        "python": IMAGE_PYTHON,
        **options,
    }
    settings = Settings(
        data_dir=tmp_path / "data",
        sandbox=SandboxSettings(runtime="docker", docker=DockerSettings(**docker)),
    )
    return DockerRuntime(settings)


def kept_state(agent_dir: Path) -> set[str]:
    """What destroy left of a sandbox's host directory besides the executors' home (`state`,
    kept for the session's next sandbox)."""
    return {p.name for p in agent_dir.iterdir()} - {"state"} if agent_dir.exists() else set()


def containers_of(engine: PodmanEngine, agent_id: str) -> list[dict[str, Any]]:
    """Every container (running or not) labelled with the agent."""
    return engine.containers(f"forge.agent={agent_id}")


def worktree(tmp_path: Path, agent_id: str) -> tuple[Path, Path, tuple[Path, ...]]:
    """A repository and a worktree of it on `forge/<agent>`: (worktree, common dir, writable)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "hello.txt").write_text("hello\n")
    git("add", ".", cwd=repo)
    git("-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-qm", "one", cwd=repo)
    path = tmp_path / "worktrees" / agent_id
    git("worktree", "add", "-q", "-b", f"forge/{agent_id}", str(path), cwd=repo)
    common = repo / ".git"
    writable = (
        common / "worktrees" / agent_id,
        common / "objects",
        common / "refs" / "heads" / "forge",
        common / "logs" / "refs" / "heads" / "forge",
    )
    return path, common, writable


def owner_and_mode(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_uid, stat.S_IMODE(info.st_mode)


# What the sandbox looks like from inside, one `key=value` line each.
PROBE = r"""
echo "uid=$(id -u)"
grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status | tr -d '\t' | tr ':' '='
grep -E '^(CapEff|NoNewPrivs):' /proc/1/status | tr -d '\t' | sed 's/^/runner/' | tr ':' '='
echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ',')"
touch /probe 2>/dev/null && echo rootfs=writable || echo rootfs=read-only
touch /tmp/probe && echo tmp=writable
touch "$HOME/probe" && echo home=writable
echo "nofile=$(ulimit -n) fsize=$(ulimit -f) cpu=$(ulimit -t)"
echo "pids=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)"
echo "from the container" > made-inside.txt && echo workspace=writable
git add made-inside.txt && git -c user.name=A -c user.email=a@example.com commit -qm inside \
  && echo git=committed
"""


async def test_container_is_locked_down_serves_the_runner_and_is_destroyed(
    tmp_path: Path, podman: PodmanEngine, leftovers: list[str]
) -> None:
    leftovers.append(AGENT)
    runtime = runtime_for(tmp_path, podman)
    path, common, writable = worktree(tmp_path, AGENT)
    spec = SandboxSpec(
        agent_id=AGENT,
        workspace=path,
        env={"TZ": "Europe/Paris", "PATH": "/host/only/bin"},
        owner_id="alice@example.com",
        profile="default",
        network="none",
        limits=LIMITS,
        git_common_dir=common,
        git_writable=writable,
    )
    started = time.monotonic()
    sandbox = await runtime.provision(spec)
    provisioned = time.monotonic() - started
    name = container_name(AGENT)
    assert name == "forge-ag_01jz8k2m3n4p5q6r7s8t9v0w1x"
    assert sandbox.handle["container"] == name
    assert sandbox.address.startswith("unix:/")
    assert await runtime.status(sandbox) == "running"
    # A restarted platform finds it again from the stored handle.
    assert await runtime_for(tmp_path, podman).status(Sandbox.from_json(sandbox.to_json())) == (
        "running"
    )

    # The runner answers with its token, on the host's end of the socket.
    output, outcome = await run_command(sandbox, PROBE + "cat; echo env=$TZ:$PATH")
    print(f"provision {provisioned:.2f} s; probe output:\n{output}")
    assert outcome == "succeeded", output
    assert "uid=1000" in output
    for line in ("CapEff=0000000000000000", "CapPrm=0000000000000000", "CapBnd=0000000000000000"):
        assert line in output
    assert "NoNewPrivs=1" in output
    assert "runnerCapEff=0000000000000000" in output and "runnerNoNewPrivs=1" in output
    assert "ifaces=lo," in output  # network none: loopback and nothing else
    assert "rootfs=read-only" in output
    assert "tmp=writable" in output and "home=writable" in output
    assert "nofile=1024 fsize=131072 cpu=600" in output  # fsize in 512-byte blocks
    assert "pids=256" in output
    assert "workspace=writable" in output and "git=committed" in output
    assert "env=Europe/Paris:/opt/forge/venv/bin:" in output  # not the host's PATH

    # What the container made is on the host; the commit is on the agent's branch.
    assert (path / "made-inside.txt").read_text() == "from the container\n"
    assert git("log", "-1", "--format=%s", f"forge/{AGENT}", cwd=common.parent).strip() == "inside"
    assert (common.parent / "hello.txt").exists() and not (
        common.parent / "made-inside.txt"
    ).exists()

    # The token file: 0600, the container user's, in a 0700 directory of that user.
    agent_dir = Path(sandbox.handle["state_dir"])
    assert owner_and_mode(agent_dir / "token") == (UID, 0o600)
    assert owner_and_mode(agent_dir) == (UID, 0o700)

    # Nobody else gets in.
    await assert_refuses_a_wrong_token(sandbox)

    # The engine's view: labels, limits, lockdown.
    (listed,) = containers_of(podman, AGENT)
    assert listed["Labels"]["forge.owner"] == "alice@example.com"
    assert listed["Labels"]["forge.profile"] == "default"
    assert listed["Labels"]["forge.managed-by"] == "forge"
    inspected = json.loads(podman.podman("inspect", name))[0]
    host_config = inspected["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["Memory"] == LIMITS.memory_bytes
    assert host_config["NanoCpus"] == 1_500_000_000
    assert inspected["Config"]["User"] == "1000:1000"

    await runtime.destroy(sandbox)
    assert await runtime.status(sandbox) == "missing"
    assert containers_of(podman, AGENT) == []
    assert await asyncio.to_thread(kept_state, agent_dir) == set()
    await runtime.destroy(sandbox)  # idempotent


async def test_host_network_an_exited_runner_and_the_orphan_sweep(
    tmp_path: Path, podman: PodmanEngine, leftovers: list[str]
) -> None:
    runtime = runtime_for(tmp_path, podman)
    agent_id = "ag_host_network"
    leftovers.append(agent_id)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    sandbox = await runtime.provision(
        SandboxSpec(agent_id=agent_id, workspace=workspace, network="host")
    )
    output, outcome = await run_command(
        sandbox, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ,"
    )
    assert outcome == "succeeded"
    host_interfaces = sorted(os.listdir("/sys/class/net"))
    assert ",".join(host_interfaces) + "," in output

    # A runner that shut down leaves an exited container until it is destroyed or swept.
    client = RunnerClient(sandbox.address, sandbox.token)
    stream = await client.connect()
    await stream.shutdown(graceful=False)
    await stream.close()
    await client.close()
    deadline = time.monotonic() + 20
    while await runtime.status(sandbox) != "exited":
        assert time.monotonic() < deadline, "the container did not exit"
        await asyncio.sleep(0.1)

    # The sweep spares live agents, young containers and other installations' containers.
    assert await runtime.sweep_orphans({agent_id}, min_age_seconds=0) == []
    assert await runtime.sweep_orphans(set()) == []
    other = runtime_for(tmp_path / "other", podman)
    assert await other.sweep_orphans(set(), min_age_seconds=0) == []
    assert await runtime.status(sandbox) == "exited"
    swept = await runtime.sweep_orphans(set(), min_age_seconds=0)
    assert swept == [container_name(agent_id)]
    assert await runtime.status(sandbox) == "missing"
    assert await asyncio.to_thread(kept_state, Path(sandbox.handle["state_dir"])) == set()
    await runtime.destroy(sandbox)
    await runtime.close()


async def test_provisioning_failures_say_what_to_fix(
    tmp_path: Path, podman: PodmanEngine, leftovers: list[str]
) -> None:
    leftovers.append("ag_fails")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    spec = SandboxSpec(agent_id="ag_fails", workspace=workspace)
    state_dir = tmp_path / "data" / "runners" / "ag_fails"

    missing = runtime_for(tmp_path, podman, image="localhost/forge-no-such-image:1")
    with pytest.raises(ProvisioningFailed, match="build-runner-image"):
        await missing.provision(spec)
    assert containers_of(podman, "ag_fails") == []
    assert kept_state(state_dir) == set()

    unreachable = runtime_for(tmp_path, podman, base_url=f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(ProvisioningFailed, match="cannot reach the container engine"):
        await unreachable.provision(spec)
    assert kept_state(state_dir) == set()

    as_root = runtime_for(tmp_path, podman, user="0:0")
    with pytest.raises(ProvisioningFailed, match="must not be root"):
        await as_root.provision(spec)

    # The runner cannot start (no such interpreter in the image): the engine says so.
    no_python = runtime_for(tmp_path, podman, python="/no/such/python")
    with pytest.raises(ProvisioningFailed, match="refused the sandbox"):
        await no_python.provision(spec)
    assert containers_of(podman, "ag_fails") == []
    assert kept_state(state_dir) == set()


def test_forge_serve_runs_a_message_in_a_container(
    forge_server: Any, git_repo: Path, podman: PodmanEngine, leftovers: list[str]
) -> None:
    server: ForgeServer = forge_server(docker_sandbox_config(podman.socket_url, podman.image))
    agent = server.create_agent(repo=str(git_repo))
    agent_id = agent["id"]
    leftovers.append(agent_id)
    (container,) = containers_of(podman, agent_id)
    assert container["State"] == "running"
    assert container["Labels"]["forge.owner"] == "alice"
    # The worktree's git metadata: the repository's .git read-only, the agent's parts writable.
    mounts = json.loads(podman.podman("inspect", container["Id"]))[0]["Mounts"]
    writable = {m["Destination"]: m["RW"] for m in mounts}
    assert writable[str(git_repo / ".git")] is False
    assert writable[str(git_repo / ".git" / "objects")] is True
    assert writable[agent["workspace_path"]] is True

    reply = server.http.post(
        f"/api/v1/agents/{agent_id}/messages", json={"content": "hello from a container"}
    )
    assert reply.status_code == 202, reply.text
    events = server.wait_final(agent_id, reply.json()["request_id"])
    final = events[-1]
    assert final["event_type"] == "agent.complete" and final["outcome"] == "succeeded"
    assert any("hello from a container" in json.dumps(e.get("entry")) for e in events)

    assert server.http.delete(f"/api/v1/agents/{agent_id}").status_code == 204
    wait_for(lambda: containers_of(podman, agent_id) == [], timeout=20)
