"""A real container engine for the `docker` runtime's tests: podman's Docker-compatible API.

    with podman_engine() as engine:         # skips the test, saying why, if podman cannot run
        engine.socket_url                   # unix:///tmp/fpod-.../podman.sock
        engine.image                        # the runner image (scripts/build-runner-image)
        engine.podman("ps", "-a")           # the podman CLI with the same configuration
        engine.remove_containers("forge.agent=ag_1")   # what a test left behind

The image is built once per machine and cached (see `scripts/build-runner-image`); the API
service is a subprocess of the test session, stopped when the `with` block ends.
"""

from __future__ import annotations

import json
import os
import shutil
import socket as socketlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-runner-image"
# Where the image's venv (with Forge's dependencies) puts its interpreter.
IMAGE_PYTHON = "/opt/forge/venv/bin/python"
# podman 4.3 here runs containers with runc only, and fails without explicit ulimits.
CONTAINERS_CONF = """\
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
"""
IMAGE_BUILD_TIMEOUT = 900
SERVICE_START_TIMEOUT = 30


@dataclass(frozen=True)
class PodmanEngine:
    """A running `podman system service` and the runner image it holds."""

    socket_url: str
    image: str
    env: dict[str, str]

    def podman(self, *args: str) -> str:
        """Run the podman CLI with the service's configuration; its stdout."""
        return subprocess.run(
            ["podman", *args], env=self.env, check=True, capture_output=True, text=True
        ).stdout

    def containers(self, label: str) -> list[dict[str, Any]]:
        """Every container (running or not) with `label` (`key=value`), as `podman ps` JSON."""
        out = self.podman("ps", "-a", "--filter", f"label={label}", "--format", "json")
        found: list[dict[str, Any]] = json.loads(out or "[]")
        return found

    def remove_containers(self, label: str) -> None:
        """Force-remove every container with `label`: what a test's sandboxes left."""
        for container in self.containers(label):
            self.podman("rm", "-f", container["Id"])


def podman_environment(directory: Path) -> dict[str, str]:
    """os.environ with CONTAINERS_CONF naming a containers.conf written into `directory`."""
    conf = directory / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def ensure_runner_image(env: dict[str, str]) -> str:
    """The runner image's reference, built (or imported from the cache) if podman lacks it."""
    result = subprocess.run(
        [str(BUILD_SCRIPT), "--engine", "podman"],
        env=env,
        capture_output=True,
        text=True,
        timeout=IMAGE_BUILD_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot build the runner image (scripts/build-runner-image): {result.stderr}")
    return result.stdout.strip().splitlines()[-1]


@contextmanager
def podman_engine() -> Iterator[PodmanEngine]:
    """Podman's Docker-compatible API on a private socket, with the runner image in it."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman runc)")
    # A short directory: the socket path must fit in sun_path (108 bytes).
    directory = Path(tempfile.mkdtemp(prefix="fpod-", dir="/tmp"))
    try:
        env = podman_environment(directory)
        probe = subprocess.run(
            ["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            pytest.skip(f"podman cannot run here: {probe.stderr.strip()}")
        image = ensure_runner_image(env)
        socket = directory / "podman.sock"
        with _service(socket, env, directory / "service.log"):
            yield PodmanEngine(socket_url=f"unix://{socket}", image=image, env=env)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def _service(socket: Path, env: dict[str, str], log_path: Path) -> Iterator[None]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{socket}"],
            env=env,
            # conmon leaves an `oom` marker in its working directory when a container hits its
            # memory limit: keep that out of the checkout.
            cwd=log_path.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SERVICE_START_TIMEOUT
        while not _answers(socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"podman system service did not start: {log_path.read_text()}")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(socket: Path) -> bool:
    """Whether the API answers `GET /_ping` with 200 on `socket`."""
    try:
        with socketlib.socket(socketlib.AF_UNIX) as conn:
            conn.settimeout(2)
            conn.connect(str(socket))
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            return conn.recv(64).split(b" ")[1:2] == [b"200"]
    except OSError:
        return False


def docker_sandbox_config(socket_url: str, image: str) -> str:
    """The `[sandbox]` and `[sandbox.docker]` tables of a `forge serve` config that runs its
    sandboxes on this engine, with Forge itself mounted from this checkout."""
    return f"""
[sandbox]
runtime = "docker"

[sandbox.docker]
base_url = "{socket_url}"
image = "{image}"
forge_source = "{REPO / "src"}"
python = "{IMAGE_PYTHON}"
"""
