"""Warm pool: sandboxes started ahead of time, so that creating an agent takes one ready-made.

Each `[[sandbox.warm_pool]]` entry keeps `size` sandboxes for one profile, with an empty
workspace or a worktree of one repository at one base ref. A pooled sandbox already has its
agent id (its worktree branch and runner carry it), its workspace, and a runner that accepts
connections; creating a matching agent claims it, and the pool starts a replacement in the
background. A pooled worktree is only handed out while its base ref still points at the commit
it was made from; a stale one is discarded.

Pooled sandboxes belong to no agent yet, so the pool keeps a note of each in
`<runner state dir>/pool/`: a platform that died with some pooled destroys them at its next
start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from forge.config import Settings, WarmPoolSettings
from forge.core import ids
from forge.runner.client import RunnerClient
from forge.sandbox.base import Runtime, Sandbox, SandboxSpec
from forge.workspace.worktrees import RepoSource, Workspace, WorktreeManager

log = logging.getLogger(__name__)

# Seconds before retrying to refill a pool whose last provisioning failed, doubling up to the
# maximum while it keeps failing.
RETRY_SECONDS = 5.0
MAX_RETRY_SECONDS = 300.0

SpecBuilder = Callable[[str, str, Workspace], Awaitable[SandboxSpec]]


@dataclass(frozen=True)
class PoolKey:
    profile: str
    repo: str  # "" for an empty workspace
    base_ref: str


@dataclass(frozen=True)
class PooledSandbox:
    """A started sandbox waiting for its agent."""

    agent_id: str
    key: PoolKey
    base_commit: str | None
    workspace: Workspace
    sandbox: Sandbox


class WarmPool:
    """Keeps the configured number of ready sandboxes per pool entry."""

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        worktrees: WorktreeManager,
        spec_for: SpecBuilder,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.worktrees = worktrees
        self.spec_for = spec_for
        self.notes_dir = settings.runner_state_dir / "pool"
        self._sizes: dict[PoolKey, int] = {}
        for entry in settings.sandbox.warm_pool:
            key = _key(entry)
            self._sizes[key] = self._sizes.get(key, 0) + entry.size
        self._ready: dict[PoolKey, list[PooledSandbox]] = {key: [] for key in self._sizes}
        self._wanted: dict[PoolKey, asyncio.Event] = {key: asyncio.Event() for key in self._sizes}
        self._fillers: list[asyncio.Task[None]] = []
        self._discarding: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return bool(self._sizes)

    async def start(self) -> None:
        await self._destroy_leftovers()
        for key in self._sizes:
            self._wanted[key].set()
            self._fillers.append(asyncio.create_task(self._fill(key), name=f"warm-pool-{key}"))

    async def stop(self) -> None:
        """Stop refilling and destroy what is still waiting (nobody else will)."""
        for task in self._fillers:
            task.cancel()
        for task in self._fillers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fillers.clear()
        for task in list(self._discarding):
            with contextlib.suppress(Exception):
                await task
        for pooled in [p for ready in self._ready.values() for p in ready]:
            await self._discard(pooled)
        for ready in self._ready.values():
            ready.clear()

    def agent_ids(self) -> set[str]:
        """The agent ids pooled sandboxes wait with (their sandboxes are not orphans)."""
        return {pooled.agent_id for ready in self._ready.values() for pooled in ready}

    def counts(self) -> dict[str, int]:
        """Ready sandboxes per pool entry (for status pages)."""
        return {
            f"{key.profile}:{key.repo or '-'}@{key.base_ref or '-'}": len(self._ready[key])
            for key in self._sizes
        }

    async def take(self, profile: str, source: RepoSource | None) -> PooledSandbox | None:
        """A ready sandbox for an agent of `profile` on `source`, or None (none pooled, none
        left, or the pooled worktrees are of an older commit)."""
        key = PoolKey(
            profile,
            str(source.repo.resolve()) if source else "",
            source.base_ref if source else "",
        )
        ready = self._ready.get(key)
        if not ready:
            return None
        while ready:
            pooled = ready.pop(0)
            self._wanted[key].set()
            if source is not None and pooled.base_commit != source.base_commit:
                log.info("warm pool %s: discarding a sandbox of an older commit", key)
                discarding = asyncio.create_task(self._discard(pooled))
                self._discarding.add(discarding)
                discarding.add_done_callback(self._discarding.discard)
                continue
            return pooled
        return None

    async def claimed(self, pooled: PooledSandbox) -> None:
        """The agent taking `pooled` is stored: the sandbox is no longer the pool's to clean up
        (until then a crash leaves the note, and the next start destroys the sandbox)."""
        await asyncio.to_thread(_unlink, self._note_path(pooled.agent_id))

    # ---- filling ---------------------------------------------------------------------------------

    async def _fill(self, key: PoolKey) -> None:
        size = self._sizes[key]
        delay = RETRY_SECONDS
        while True:
            await self._wanted[key].wait()
            self._wanted[key].clear()
            while len(self._ready[key]) < size:
                try:
                    pooled = await self._provision(key)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("warm pool %s: provisioning failed; retrying in %gs", key, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_SECONDS)
                    continue
                delay = RETRY_SECONDS
                self._ready[key].append(pooled)

    async def _provision(self, key: PoolKey) -> PooledSandbox:
        source = None
        if key.repo:
            source = await self.worktrees.resolve(key.repo, key.base_ref or None)
        agent_id = ids.agent_id()
        await asyncio.to_thread(self._write_note, agent_id, {"repo": key.repo})
        sandbox: Sandbox | None = None
        try:
            workspace = await self.worktrees.create(agent_id, source)
            spec = await self.spec_for(agent_id, key.profile, workspace)
            sandbox = await self.runtime.provision(spec)
            note = {"repo": key.repo, "sandbox": sandbox.to_json()}
            await asyncio.to_thread(self._write_note, agent_id, note)
            client = RunnerClient(sandbox.address, sandbox.token)
            try:
                await client.wait_ready(self.settings.sandbox.start_timeout_seconds)
            finally:
                await client.close()
        except BaseException:
            # Nothing of a failed (or cancelled) start stays behind: no sandbox, no worktree or
            # branch, no note.
            await asyncio.shield(self._discard_parts(agent_id, key.repo, sandbox))
            raise
        return PooledSandbox(
            agent_id=agent_id,
            key=key,
            base_commit=source.base_commit if source else None,
            workspace=workspace,
            sandbox=sandbox,
        )

    async def _discard(self, pooled: PooledSandbox) -> None:
        await self._discard_parts(pooled.agent_id, pooled.key.repo, pooled.sandbox)

    async def _discard_parts(self, agent_id: str, repo: str, sandbox: Sandbox | None) -> None:
        if sandbox is not None:
            try:
                await self.runtime.destroy(sandbox)
            except Exception:
                log.exception("warm pool: destroying the sandbox of %s failed", agent_id)
        with contextlib.suppress(Exception):
            await self.worktrees.remove(agent_id, repo or None, delete_branch=True)
        await asyncio.to_thread(_unlink, self._note_path(agent_id))

    # ---- leftovers of a platform that died -------------------------------------------------------

    def _note_path(self, agent_id: str) -> Path:
        return self.notes_dir / f"{agent_id}.json"

    def _write_note(self, agent_id: str, note: Mapping[str, object]) -> None:
        self.notes_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._note_path(agent_id).write_text(json.dumps(note))

    async def _destroy_leftovers(self) -> None:
        notes = await asyncio.to_thread(_list_notes, self.notes_dir)
        for path in notes:
            agent_id = path.stem
            try:
                note = json.loads(await asyncio.to_thread(path.read_text))
            except (OSError, ValueError):
                note = {}
            log.info("warm pool: destroying %s, left pooled by an earlier process", agent_id)
            if isinstance(note.get("sandbox"), dict):
                with contextlib.suppress(Exception):
                    await self.runtime.destroy(Sandbox.from_json(note["sandbox"]))
            with contextlib.suppress(Exception):
                await self.worktrees.remove(agent_id, note.get("repo") or None, delete_branch=True)
            await asyncio.to_thread(_unlink, path)


def _key(entry: WarmPoolSettings) -> PoolKey:
    repo = str(Path(entry.repo).resolve()) if entry.repo else ""
    return PoolKey(entry.profile, repo, (entry.base_ref or "HEAD") if repo else "")


def _list_notes(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
