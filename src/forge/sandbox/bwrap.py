"""`bwrap` runtime: the runner inside a bubblewrap sandbox (Linux namespaces), the default on
Linux where bubblewrap works.

What a sandbox sees: the system (`/usr` and the top-level links into it, a few files of `/etc`)
read-only; the Python that runs the runner, Forge itself and each configured executor's
installation read-only; its worktree writable, with as much of the repository's git metadata as
the worktree needs; a private `/tmp`; a home of its own; a synthetic passwd with one user.
Nothing else of the host: not the host's home, Forge's database or config, nor any other
agent's workspace. It has new user (all capabilities dropped), PID, IPC, UTS, cgroup and mount
namespaces, and a network namespace of its own when its network is `none`. Limits: rlimits on
open files, file size and CPU time always; memory, processes and CPU share through a cgroup
where Forge may create one, else rlimits (address space, processes) as a fallback.

The runner listens on a Unix socket in the sandbox's state directory, which is bound into the
sandbox at `/run/forge` (with the token file and the runner's log).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import resource
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import forge
from forge.config import Settings
from forge.sandbox.base import ResourceLimits, Sandbox, SandboxSpec, SandboxState
from forge.sandbox.cgroups import CgroupManager, CgroupUnavailable, SandboxCgroup
from forge.sandbox.processes import (
    MAX_SOCKET_PATH,
    check_private_dir,
    end_runner_processes,
    remove_sandbox_state,
    runner_process_status,
    short_socket_dir,
    unlink_quietly,
    write_private,
)

log = logging.getLogger(__name__)

INSIDE_STATE = "/run/forge"
INSIDE_HOME = "/home/agent"
INSIDE_USER = "agent"
# Top-level entries of a merged-/usr system: links into /usr, or directories on older systems.
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# What of /etc programs need to run, resolve names and verify TLS; nothing else of it (no
# shadow, no ssh host keys, no Forge config).
ETC_ENTRIES = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "host.conf",
    "hosts",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "resolv.conf",
    "services",
    # The trust store and OpenSSL's config; not /etc/ssl/private (root's keys, readable by the
    # owner bits when Forge runs as root).
    "ssl/certs",
    "ssl/openssl.cnf",
    "timezone",
)


class BwrapRuntime:
    """Starts `forge runner` inside bubblewrap, detached, so a restarted platform reattaches."""

    name = "bwrap"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = settings.runner_state_dir
        self.command = settings.sandbox.bwrap.command or shutil.which("bwrap") or "bwrap"
        self.uid = settings.sandbox.bwrap.uid
        self.gid = settings.sandbox.bwrap.gid
        instance = cgroup_instance(self.state_dir)
        self.cgroups = CgroupManager(instance) if settings.sandbox.bwrap.cgroups else None
        if self.cgroups is not None and not self.cgroups.available:
            log.warning(
                "bwrap: no writable cgroup hierarchy with memory and pids controllers; "
                "memory and process limits fall back to per-process rlimits"
            )
        self.read_only = _host_paths_to_expose(settings)
        self._reapers: set[asyncio.Task[None]] = set()

    async def provision(self, spec: SandboxSpec) -> Sandbox:
        agent_dir = self.state_dir / spec.agent_id
        await asyncio.to_thread(self._prepare_state, agent_dir)
        token = secrets.token_urlsafe(32)
        await asyncio.to_thread(write_private, agent_dir / "token", token)
        socket_path = await asyncio.to_thread(self._socket_path, agent_dir, spec.agent_id)
        cgroup: SandboxCgroup | None = None
        if self.cgroups is not None and self.cgroups.available:
            try:
                cgroup = await asyncio.to_thread(self.cgroups.create, spec.agent_id, spec.limits)
            except CgroupUnavailable as exc:
                log.warning("bwrap: %s; rlimits only for %s", exc, spec.agent_id)
        args = self.command_line(spec, agent_dir)
        env = self._environment(spec)
        prepare = _child_setup(spec.limits, cgroup)
        try:
            out_fd = os.open(agent_dir / "runner.log", os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            with os.fdopen(out_fd, "ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    *args,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=env,
                    start_new_session=True,
                    preexec_fn=prepare,
                )
        except BaseException:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            raise
        reaper = asyncio.create_task(self._reap(proc, spec.agent_id))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)
        handle: dict[str, object] = {
            "runtime": self.name,
            "pid": proc.pid,
            "state_dir": str(agent_dir),
        }
        if cgroup is not None:
            handle["cgroups"] = cgroup.to_json()
        return Sandbox(address=f"unix:{socket_path}", token=token, handle=handle)

    async def status(self, sandbox: Sandbox) -> SandboxState:
        return await runner_process_status(sandbox)

    async def destroy(self, sandbox: Sandbox) -> None:
        await end_runner_processes(sandbox)
        agent_dir = str(sandbox.handle.get("state_dir", ""))
        cgroup_paths = sandbox.handle.get("cgroups")
        if isinstance(cgroup_paths, list):
            cgroup = SandboxCgroup.from_json(cgroup_paths)
            await asyncio.to_thread(cgroup.kill_all)
            await asyncio.to_thread(cgroup.remove)
        if agent_dir:
            await asyncio.to_thread(remove_sandbox_state, Path(agent_dir))
        if sandbox.address.startswith("unix:"):
            # The short link to a deep socket (the socket itself went with the state directory).
            await asyncio.to_thread(unlink_quietly, Path(sandbox.address.removeprefix("unix:")))

    # ---- the sandbox -----------------------------------------------------------------------------

    def command_line(self, spec: SandboxSpec, agent_dir: Path) -> list[str]:
        """The bwrap invocation starting the runner for `spec` (public for tests and `forge
        doctor`-style inspection)."""
        args = [
            self.command,
            "--unshare-user",
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--uid",
            str(self.uid),
            "--gid",
            str(self.gid),
            "--cap-drop",
            "ALL",
            "--hostname",
            "forge-sandbox",
        ]
        if spec.network == "none":
            args.append("--unshare-net")
        for entry in SYSTEM_DIRS:
            host = Path("/") / entry
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                args += ["--ro-bind", str(host), str(host)]
        for entry in ETC_ENTRIES:
            host = Path("/etc") / entry
            if host.exists():
                # resolv.conf and friends may be links into /run: bind what they point at.
                args += ["--ro-bind", str(host.resolve()), str(host)]
        args += ["--ro-bind", str(agent_dir / "etc" / "passwd"), "/etc/passwd"]
        args += ["--ro-bind", str(agent_dir / "etc" / "group"), "/etc/group"]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
        # The state directory read-only (token), with writable only the socket's directory, the
        # log file and the home: nothing in it the platform writes can be swapped for a link.
        args += ["--tmpfs", "/run", "--ro-bind", str(agent_dir), INSIDE_STATE]
        args += ["--bind", str(agent_dir / "sock"), f"{INSIDE_STATE}/sock"]
        args += ["--bind", str(agent_dir / "runner.log"), f"{INSIDE_STATE}/runner.log"]
        args += ["--bind", str(agent_dir / "home"), INSIDE_HOME]
        for path in self.read_only:
            args += ["--ro-bind-try", str(path), str(path)]
        if spec.git_common_dir is not None:
            args += ["--ro-bind", str(spec.git_common_dir), str(spec.git_common_dir)]
            for path in spec.git_writable:
                args += ["--bind", str(path), str(path)]
            # New objects may be added, but the packs (most of the history) stay read-only.
            for path in (spec.git_common_dir / "objects" / "pack",):
                args += ["--ro-bind-try", str(path), str(path)]
        args += ["--bind", str(spec.workspace), str(spec.workspace), "--chdir", str(spec.workspace)]
        args += [
            "--",
            sys.executable,
            "-m",
            "forge.runner",
            "--listen",
            f"unix:{INSIDE_STATE}/sock/runner.sock",
            "--workspace",
            str(spec.workspace),
            "--agent-id",
            spec.agent_id,
            "--token-file",
            f"{INSIDE_STATE}/token",
            "--log-file",
            f"{INSIDE_STATE}/runner.log",
            "--state-dir",
            INSIDE_HOME,
        ]
        return args

    def _environment(self, spec: SandboxSpec) -> dict[str, str]:
        env = dict(spec.env)
        env.update(
            HOME=INSIDE_HOME,
            USER=INSIDE_USER,
            LOGNAME=INSIDE_USER,
            TMPDIR="/tmp",
            SHELL="/bin/sh",
        )
        env.setdefault("PATH", os.defpath)
        return env

    def _prepare_state(self, agent_dir: Path) -> None:
        """A fresh state directory: what an earlier sandbox could write there (its socket
        directory, log and home; never the rest) is not trusted."""
        agent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in ("sock", "etc"):
            shutil.rmtree(agent_dir / name, ignore_errors=True)
            (agent_dir / name).mkdir(mode=0o700)
        (agent_dir / "home").mkdir(exist_ok=True, mode=0o700)
        write_private(
            agent_dir / "etc" / "passwd",
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"{INSIDE_USER}:x:{self.uid}:{self.gid}:Forge agent:{INSIDE_HOME}:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            mode=0o644,
        )
        write_private(
            agent_dir / "etc" / "group",
            f"root:x:0:\n{INSIDE_USER}:x:{self.gid}:\nnogroup:x:65534:\n",
            mode=0o644,
        )
        log_file = agent_dir / "runner.log"
        if log_file.is_symlink() or (log_file.exists() and not log_file.is_file()):
            unlink_quietly(log_file)
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.close(fd)

    def _socket_path(self, agent_dir: Path, agent_id: str) -> Path:
        """The host path to connect to: the socket itself, or a short link to it when the state
        directory is too deep for a Unix socket address."""
        socket_path = agent_dir / "sock" / "runner.sock"
        if len(str(socket_path)) <= MAX_SOCKET_PATH:
            return socket_path
        short = short_socket_dir(self.state_dir)
        with contextlib.suppress(FileExistsError):
            short.mkdir(mode=0o700)
        check_private_dir(short)
        link = short / f"{agent_id}.sock"
        unlink_quietly(link)
        link.symlink_to(socket_path)
        return link

    async def _reap(self, proc: asyncio.subprocess.Process, agent_id: str) -> None:
        code = await proc.wait()
        log.info("sandbox of %s exited with %s", agent_id, code)


def _child_setup(limits: ResourceLimits, cgroup: SandboxCgroup | None) -> Callable[[], None]:
    """What the sandbox's first process does between fork and exec: join its cgroup, set its
    rlimits (inherited by everything it starts)."""
    rlimits: list[tuple[int, int]] = []
    if limits.open_files:
        rlimits.append((resource.RLIMIT_NOFILE, limits.open_files))
    if limits.file_size_bytes:
        rlimits.append((resource.RLIMIT_FSIZE, limits.file_size_bytes))
    if limits.cpu_seconds:
        rlimits.append((resource.RLIMIT_CPU, limits.cpu_seconds))
    if cgroup is None and limits.memory_bytes:
        rlimits.append((resource.RLIMIT_AS, limits.memory_bytes))
    if cgroup is None and limits.processes and os.getuid() != 0:
        # Counted per user: meaningful only for a user of Forge's own (root is not limited).
        rlimits.append((resource.RLIMIT_NPROC, limits.processes))

    def setup() -> None:
        if cgroup is not None:
            cgroup.join()
        for kind, value in rlimits:
            resource.setrlimit(kind, (value, value))

    return setup


def _host_paths_to_expose(settings: Settings) -> list[Path]:
    """Host paths a runner needs read-only: its Python (base installation and virtualenv),
    Forge's package, each configured executor command's installation, and the configured
    extra paths; minus what lies under the system directories (already there)."""
    candidates: list[Path] = [Path(sys.base_prefix), Path(sys.prefix)]
    candidates.append(Path(forge.__file__).resolve().parent.parent)
    commands = [profile.command for profile in settings.profiles.values()]
    for variants in settings.executors.values():
        commands += [variant.command for variant in variants.values()]
    for command in commands:
        candidates += _installation_of(command)
    candidates += [Path(path) for path in settings.sandbox.read_only_paths]
    kept = _without_nested(path.resolve() for path in candidates if path.is_absolute())
    return [path for path in kept if _safe_to_expose(path, settings)]


def _safe_to_expose(path: Path, settings: Settings) -> bool:
    """Not `/`, not a home directory (or `/home`), and holding none of Forge's own files: its
    data directory, database or configuration file."""
    private = [settings.data_dir.resolve()]
    config = os.environ.get("FORGE_CONFIG")
    if config:
        private.append(Path(config).resolve())
    homes = {Path("/"), Path("/root"), Path("/home"), Path.home().resolve()}
    if path in homes or path.parent == Path("/home"):
        log.warning("bwrap: not exposing %s: a home directory; name its subdirectories", path)
        return False
    for own in private:
        if own.is_relative_to(path):
            log.warning("bwrap: not exposing %s: it holds Forge's own %s", path, own)
            return False
    return True


def _installation_of(command: str) -> list[Path]:
    """For a command whose program is an absolute path: the directory tree it runs from (the
    outermost `node_modules` above an npm-installed CLI, else the program's directory)."""
    program = command.strip().split(" ", 1)[0] if command.strip() else ""
    if not program.startswith("/"):
        return []
    found: list[Path] = []
    for path in (Path(program), Path(program).resolve()):
        outermost = next(
            (parent for parent in reversed(path.parents) if parent.name == "node_modules"), None
        )
        found.append(outermost if outermost is not None else path.parent)
    return found


def _without_nested(paths: Iterable[Path]) -> list[Path]:
    system = [Path("/") / entry for entry in SYSTEM_DIRS]
    unique = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if path == Path("/") or any(path.is_relative_to(parent) for parent in kept + system):
            continue
        kept.append(path)
    return kept


def cgroup_instance(state_dir: Path) -> str:
    """The name of the cgroup parent (`forge-<name>`) of one installation's sandboxes."""
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]


def bwrap_works(command: str = "") -> tuple[bool, str]:
    """Whether bubblewrap can start a fully unshared sandbox here, and if not, why."""
    program = command or shutil.which("bwrap")
    if not program:
        return False, "bubblewrap is not installed (apt-get install bubblewrap)"
    args = [program, "--unshare-all", "--uid", "1000", "--gid", "1000", "--cap-drop", "ALL"]
    args += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", "true"]
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{program} could not run: {exc}"
    if result.returncode != 0:
        return False, f"{program} failed: {result.stderr.strip() or result.returncode}"
    return True, ""
