"""`docker` runtime: one container per agent through the Docker Engine API (podman's
Docker-compatible service too).

The runner listens on a Unix socket in a per-agent host directory, `<runner_state_dir>/<id>/`,
bind-mounted at `/run/forge`: the platform reaches it whatever the container's network, and
the token file beside it never passes through the engine's API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import resource
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forge.core.errors import ProvisioningFailed, Unavailable
from forge.sandbox.base import ResourceLimits, Sandbox, SandboxSpec, SandboxState
from forge.sandbox.processes import (
    MAX_SOCKET_PATH,
    UnsafeSocketDirectory,
    check_private_dir,
    remove_sandbox_state,
    short_socket_dir,
    write_private,
)

if TYPE_CHECKING:
    from forge.config import DockerSettings, Settings

try:
    import docker
    import docker.errors
    from docker.types import Mount, Ulimit
except ImportError:  # pragma: no cover - the `docker` extra is not installed
    docker = None

log = logging.getLogger(__name__)

# Where the agent's host directory appears inside the container.
RUN_DIR = "/run/forge"
SOCKET_NAME = "runner.sock"
TOKEN_NAME = "token"
LOG_NAME = "runner.log"
STATE_NAME = "state"
# The runner's HOME (a tmpfs; executors get the runner's state directory as theirs).
HOME_DIR = "/home/forge"
# Where `forge_source` is mounted and put on PYTHONPATH.
SOURCE_DIR = "/opt/forge/src"
MANAGED_BY_LABEL = "forge.managed-by"
MANAGED_BY = "forge"
AGENT_LABEL = "forge.agent"
# Which Forge made a container (a digest of its runner state directory): installations sharing
# one engine never sweep each other's containers.
INSTALLATION_LABEL = "forge.installation"
# Containers younger than this are spared by the sweep: their agent may be newer than the list.
SWEEP_MIN_AGE_SECONDS = 120.0
# Seconds between SIGTERM and SIGKILL when destroying (the runner ends at SIGTERM at once).
STOP_TIMEOUT = 3
# /tmp is a tmpfs counted against the container's memory; this size when memory is unlimited.
UNLIMITED_TMP_BYTES = 1024 * 1024 * 1024
# Variables of the platform's environment that describe the host, not the container.
_HOST_ONLY_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR"})
# Agent ids as they may appear in a path (a label is only as trustworthy as the engine's users).
_SAFE_ID = re.compile(r"[A-Za-z0-9_.-]+")
_ENGINE_STATES: dict[str, SandboxState] = {
    "created": "starting",
    "configured": "starting",
    "initialized": "starting",
    "restarting": "starting",
    "running": "running",
    "paused": "running",
    "removing": "exited",
    "stopped": "exited",
    "exited": "exited",
    "dead": "exited",
}


class DockerRuntime:
    """Runs each agent's runner in a container of `[sandbox.docker] image`.

    The container runs as the non-root `user`, with no capabilities, no-new-privileges, a
    read-only root filesystem (tmpfs /tmp and HOME), the `[sandbox.limits]` of the spec as cgroup
    limits and rlimits, and the network the spec names. The workspace (and a worktree's git
    metadata) is bind-mounted at the same path, so the worktree's `.git` file resolves.
    """

    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self.settings: DockerSettings = settings.sandbox.docker
        self.state_dir = settings.runner_state_dir
        self.installation = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
        self._client: Any = None
        self._client_lock = threading.Lock()

    # ---- Runtime -----------------------------------------------------------------------------

    async def provision(self, spec: SandboxSpec) -> Sandbox:
        uid, gid = self._container_ids()
        name = container_name(spec.agent_id)
        agent_dir = self.state_dir / spec.agent_id
        token = secrets.token_urlsafe(32)
        work = asyncio.ensure_future(
            asyncio.to_thread(self._create, spec, name, agent_dir, token, uid, gid)
        )
        try:
            address, container_id = await asyncio.shield(work)
        except BaseException as exc:
            if not work.done():
                # Cancelled while the engine works: let it finish, then undo what it made.
                with contextlib.suppress(BaseException):
                    await work
            # Nothing half-made stays behind: not the container, not the token.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._remove_container, name)
            await asyncio.to_thread(self._remove_host_state, agent_dir, spec.agent_id)
            if isinstance(exc, ProvisioningFailed) or not isinstance(exc, Exception):
                raise
            raise self._provisioning_error(exc, spec.agent_id) from exc
        return Sandbox(
            address=address,
            token=token,
            handle={
                "runtime": self.name,
                "container": name,
                "container_id": container_id,
                "state_dir": str(agent_dir),
            },
        )

    async def status(self, sandbox: Sandbox) -> SandboxState:
        """The container's state. When the engine cannot be asked, `starting`: the caller keeps
        trying the runner's socket (which works without the engine) until it gives up."""
        ref = _container_ref(sandbox)
        if not ref:
            return "missing"
        try:
            state = await asyncio.to_thread(self._container_state, ref)
        except Exception as exc:
            log.warning("cannot ask the container engine about %s: %s", sandbox.handle, exc)
            return "starting"
        if state is None:
            return "missing"
        return _ENGINE_STATES.get(state, "starting")

    async def destroy(self, sandbox: Sandbox) -> None:
        ref = _container_ref(sandbox)
        try:
            if ref:
                await asyncio.to_thread(self._remove_container, ref)
        except Exception as exc:
            raise Unavailable(
                f"cannot remove container {ref} through the container engine "
                f"({self._engine_name()}): {exc}"
            ) from exc
        state_dir = sandbox.handle.get("state_dir")
        if state_dir:
            await asyncio.to_thread(self._remove_host_state, Path(state_dir), Path(state_dir).name)

    async def sweep_orphans(
        self, live_agent_ids: set[str], *, min_age_seconds: float = SWEEP_MIN_AGE_SECONDS
    ) -> list[str]:
        """Remove this installation's containers whose agent is not in `live_agent_ids` (left by
        a platform that died while creating or deleting one), with their host directories; the
        containers' names. Containers younger than `min_age_seconds` are spared."""
        orphans = await asyncio.to_thread(self._orphans, live_agent_ids, min_age_seconds)
        for name, agent_id in orphans:
            log.info("removing container %s: its agent %s no longer exists", name, agent_id)
            await asyncio.to_thread(self._remove_container, name)
            await asyncio.to_thread(self._remove_host_state, self.state_dir / agent_id, agent_id)
        return [name for name, _ in orphans]

    async def close(self) -> None:
        """Release the engine client's connections."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.close)

    # ---- the engine (called in threads) --------------------------------------------------------

    def _engine(self) -> Any:
        with self._client_lock:
            if self._client is None:
                if docker is None:
                    raise ProvisioningFailed(
                        "the docker runtime needs the `docker` package: "
                        "pip install 'forge-agents[docker]'"
                    )
                if self.settings.base_url:
                    self._client = docker.DockerClient(base_url=self.settings.base_url)
                else:
                    self._client = docker.from_env()
            return self._client

    def _engine_name(self) -> str:
        return self.settings.base_url or os.environ.get("DOCKER_HOST", "the default socket")

    def _create(
        self, spec: SandboxSpec, name: str, agent_dir: Path, token: str, uid: int, gid: int
    ) -> tuple[str, str]:
        """Prepare the host side and start the container: (the runner's address, its id)."""
        address = self._prepare_host(spec, agent_dir, token, uid, gid)
        client = self._engine()
        self._remove_leftover(name)
        container = client.containers.create(**self._container_options(spec, name, agent_dir))
        container.start()
        return address, str(container.id)

    def _container_options(self, spec: SandboxSpec, name: str, agent_dir: Path) -> dict[str, Any]:
        """The arguments of `containers.create` for one agent's sandbox."""
        workspace = str(spec.workspace)
        mounts = [
            Mount(RUN_DIR, str(agent_dir), type="bind"),
            Mount(workspace, workspace, type="bind"),
        ]
        if spec.git_common_dir is not None:
            # Engines mount parents before children: the writable parts go on top.
            common = str(spec.git_common_dir)
            mounts.append(Mount(common, common, type="bind", read_only=True))
            mounts += [Mount(str(p), str(p), type="bind") for p in spec.git_writable]
            # New objects may be added, but the packs (most of the history) stay read-only.
            packs = spec.git_common_dir / "objects" / "pack"
            if packs.is_dir():
                mounts.append(Mount(str(packs), str(packs), type="bind", read_only=True))
        environment = {k: v for k, v in spec.env.items() if k not in _HOST_ONLY_ENV}
        environment["HOME"] = HOME_DIR
        if self.settings.forge_source:
            source = str(Path(self.settings.forge_source).expanduser().resolve())
            mounts.append(Mount(SOURCE_DIR, source, type="bind", read_only=True))
            environment["PYTHONPATH"] = SOURCE_DIR
        limits = spec.limits
        tmp_bytes = limits.memory_bytes or UNLIMITED_TMP_BYTES
        options: dict[str, Any] = {
            "image": self.settings.image,
            "name": name,
            "entrypoint": [self.settings.python, "-m", "forge.runner"],
            "command": [
                "--listen",
                f"unix:{RUN_DIR}/{SOCKET_NAME}",
                "--workspace",
                workspace,
                "--agent-id",
                spec.agent_id,
                "--token-file",
                f"{RUN_DIR}/{TOKEN_NAME}",
                "--log-file",
                f"{RUN_DIR}/{LOG_NAME}",
                "--state-dir",
                f"{RUN_DIR}/{STATE_NAME}",
            ],
            "user": self.settings.user,
            "working_dir": workspace,
            "environment": environment,
            "labels": {
                AGENT_LABEL: spec.agent_id,
                "forge.owner": spec.owner_id or "",
                "forge.profile": spec.profile,
                MANAGED_BY_LABEL: MANAGED_BY,
                INSTALLATION_LABEL: self.installation,
            },
            "mounts": mounts,
            "network_mode": spec.network,
            "read_only": True,
            # mode=1777 as HOME's owner cannot be named portably (docker and podman differ);
            # the container user is the only one inside.
            "tmpfs": {
                "/tmp": f"rw,nosuid,nodev,size={tmp_bytes},mode=1777",
                HOME_DIR: "rw,nosuid,nodev,size=64m,mode=1777",
            },
            "security_opt": ["no-new-privileges"],
            "cap_drop": ["ALL"],
            "ulimits": _ulimits(limits),
            "detach": True,
        }
        if limits.processes:
            options["pids_limit"] = limits.processes
        if limits.memory_bytes:
            options["mem_limit"] = limits.memory_bytes
            options["memswap_limit"] = limits.memory_bytes  # no swap on top
        if limits.cpus:
            options["nano_cpus"] = int(limits.cpus * 1e9)
        return options

    def _orphans(self, live_agent_ids: set[str], min_age_seconds: float) -> list[tuple[str, str]]:
        filters = {
            "label": [
                f"{MANAGED_BY_LABEL}={MANAGED_BY}",
                f"{INSTALLATION_LABEL}={self.installation}",
            ]
        }
        now = time.time()
        found = []
        for container in self._engine().api.containers(all=True, filters=filters):
            agent_id = (container.get("Labels") or {}).get(AGENT_LABEL, "")
            names = container.get("Names") or []
            if not _SAFE_ID.fullmatch(agent_id) or agent_id in live_agent_ids or not names:
                continue
            if now - float(container.get("Created") or 0) < min_age_seconds:
                continue
            found.append((str(names[0]).lstrip("/"), agent_id))
        return found

    def _container_state(self, ref: str) -> str | None:
        try:
            container = self._engine().containers.get(ref)
        except docker.errors.NotFound:
            return None
        return str(container.status)

    def _remove_leftover(self, name: str) -> None:
        """Remove a container of an earlier, interrupted provisioning of the same agent."""
        try:
            container = self._engine().containers.get(name)
        except docker.errors.NotFound:
            return
        if container.labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
            raise ProvisioningFailed(
                f"a container named {name} exists that Forge did not make: remove or rename it"
            )
        self._remove_container(name)

    def _remove_container(self, ref: str) -> None:
        """Stop (SIGTERM, then SIGKILL after STOP_TIMEOUT s) and remove; gone already is fine."""
        try:
            container = self._engine().containers.get(ref)
            if container.status == "running":
                container.stop(timeout=STOP_TIMEOUT)
            container.remove(force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            # 409: removal already in progress.
            if exc.status_code not in (404, 409):
                raise

    def _provisioning_error(self, exc: Exception, agent_id: str) -> ProvisioningFailed:
        image = self.settings.image
        if docker is not None and isinstance(exc, docker.errors.ImageNotFound):
            return ProvisioningFailed(
                f"image {image} is not in the container engine ({self._engine_name()}): build it "
                "(scripts/build-runner-image) or pull it, or set [sandbox.docker] image"
            )
        if docker is not None and isinstance(exc, docker.errors.APIError):
            return ProvisioningFailed(
                f"the container engine ({self._engine_name()}) refused the sandbox of "
                f"{agent_id}: {exc.explanation or exc}"
            )
        if docker is not None and isinstance(exc, docker.errors.DockerException):
            return ProvisioningFailed(
                f"cannot reach the container engine at {self._engine_name()}: {exc}; start it "
                "or set [sandbox.docker] base_url (e.g. unix:///run/podman/podman.sock)"
            )
        if isinstance(exc, OSError):
            return ProvisioningFailed(f"cannot prepare the sandbox of {agent_id}: {exc}")
        return ProvisioningFailed(f"the sandbox of {agent_id} did not start: {exc}")

    # ---- the host side ---------------------------------------------------------------------------

    def _container_ids(self) -> tuple[int, int]:
        """The numeric uid and gid of `[sandbox.docker] user` (files are handed to them)."""
        user, _, group = self.settings.user.partition(":")
        if not user.isdigit() or (group and not group.isdigit()):
            raise ProvisioningFailed(
                "[sandbox.docker] user must be numeric, uid or uid:gid, not "
                f"{self.settings.user!r}: Forge gives the runner's files to that user on the host"
            )
        uid = int(user)
        if uid == 0:
            raise ProvisioningFailed("[sandbox.docker] user must not be root (uid 0)")
        return uid, int(group) if group else uid

    def _prepare_host(
        self, spec: SandboxSpec, agent_dir: Path, token: str, uid: int, gid: int
    ) -> str:
        """Make the agent's directory (token, state; the socket comes from the runner), give it
        and the workspace to the container's user; the runner's address for the platform."""
        me = os.geteuid()
        if me not in (0, uid):
            raise ProvisioningFailed(
                f"the container runs as uid {uid} but Forge as uid {me}: the runner could not "
                f'use its files; set [sandbox.docker] user = "{me}:{os.getegid()}" or run '
                "Forge as root"
            )
        agent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        agent_dir.chmod(0o700)
        host_socket = agent_dir / SOCKET_NAME
        host_socket.unlink(missing_ok=True)
        (agent_dir / STATE_NAME).mkdir(exist_ok=True, mode=0o700)
        token_file = agent_dir / TOKEN_NAME
        write_private(token_file, token)
        if me == 0:
            # Private to the container's user (and root): 0700 directory, 0600 token.
            _chown_tree(agent_dir, uid, gid, only_from=None)
            for root in (spec.workspace, *spec.git_writable):
                _chown_tree(root, uid, gid, only_from=0)
        return f"unix:{self._reachable_socket(host_socket, spec.agent_id)}"

    def _reachable_socket(self, host_socket: Path, agent_id: str) -> Path:
        """The path the platform connects to: the socket itself, or a symlink to it in a short
        private directory under /tmp when the real path does not fit in sun_path."""
        if len(str(host_socket)) <= MAX_SOCKET_PATH:
            return host_socket
        short = short_socket_dir(self.state_dir)
        with contextlib.suppress(FileExistsError):
            short.mkdir(mode=0o700)
        try:
            check_private_dir(short)
        except UnsafeSocketDirectory as exc:
            raise ProvisioningFailed(str(exc)) from exc
        link = short / f"{agent_id}.sock"
        link.unlink(missing_ok=True)
        link.symlink_to(host_socket)
        return link

    def _remove_host_state(self, agent_dir: Path, agent_id: str) -> None:
        remove_sandbox_state(agent_dir)
        short = short_socket_dir(self.state_dir)
        (short / f"{agent_id}.sock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            short.rmdir()  # only once empty


def container_name(agent_id: str) -> str:
    """`forge-<agent id>`, in the characters container names allow."""
    return "forge-" + re.sub(r"[^a-z0-9_.-]", "-", agent_id.lower())


def _container_ref(sandbox: Sandbox) -> str:
    return str(sandbox.handle.get("container_id") or sandbox.handle.get("container") or "")


def _ulimits(limits: ResourceLimits) -> list[Any]:
    """The rlimits of the container.

    nofile and nproc are always named: podman replaces its default ulimits when a request names
    any and then sets both to 1048576, which an engine lacking CAP_SYS_RESOURCE, or with lower
    hard limits of its own, refuses. Processes are limited by the cgroup (`pids_limit`), not
    RLIMIT_NPROC, which counts every process of the uid on the host, all agents together.
    """
    ulimits = [
        Ulimit(
            name="nofile",
            soft=limits.open_files or _own_hard_limit(resource.RLIMIT_NOFILE),
            hard=limits.open_files or _own_hard_limit(resource.RLIMIT_NOFILE),
        ),
        Ulimit(name="nproc", soft=_process_ceiling(), hard=_process_ceiling()),
    ]
    if limits.file_size_bytes:
        ulimits.append(
            Ulimit(name="fsize", soft=limits.file_size_bytes, hard=limits.file_size_bytes)
        )
    if limits.cpu_seconds:
        ulimits.append(Ulimit(name="cpu", soft=limits.cpu_seconds, hard=limits.cpu_seconds))
    return ulimits


def _own_hard_limit(kind: int, unlimited: int = 1024 * 1024) -> int:
    """The platform's own hard limit of `kind` (the engine usually runs on the same host)."""
    hard = resource.getrlimit(kind)[1]
    return unlimited if hard == resource.RLIM_INFINITY else hard


def _process_ceiling() -> int:
    """No more processes per uid than the system can have at all (pid_max)."""
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 32768
    return min(_own_hard_limit(resource.RLIMIT_NPROC), pid_max)


def _chown_tree(root: Path, uid: int, gid: int, *, only_from: int | None) -> None:
    """chown `root` and everything under it (not following symlinks) to uid:gid; with
    `only_from`, just the entries owned by that uid (root's files, not a user's)."""

    def chown(path: str) -> None:
        info = os.lstat(path)
        if info.st_uid != uid and (only_from is None or info.st_uid == only_from):
            os.chown(path, uid, gid, follow_symlinks=False)

    if not root.exists():
        return
    chown(str(root))
    for directory, dirs, files in os.walk(root):
        for entry in (*dirs, *files):
            chown(os.path.join(directory, entry))
