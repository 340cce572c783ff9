"""The agent service: every use-case of the agents API, from create to delete.

The API layer parses and authorizes, then calls one method here. Provisioning and execution happen
in the background; this service owns the links to runners and keeps the agent's status in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import ColumnElement, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from forge.config import Settings
from forge.core import ids
from forge.core.cluster import AGENTS_CHANNEL, Cluster, serialize
from forge.core.errors import Conflict, InvalidRequest, NotFound, TooLarge
from forge.core.eventlog import EventLog, StoredEventPage
from forge.core.events import ErrorInfo, EventDraft
from forge.core.profiles import Profile, ProfileCatalog
from forge.core.runners import RunnerLink
from forge.core.scheduler import Scheduler
from forge.core.schemas import (
    Agent,
    AgentCreate,
    AgentList,
    AgentUpdate,
    InterruptAccepted,
    InterruptRequest,
    MessageAccepted,
    MessageCreate,
    Permission,
    PermissionAnswer,
    PermissionList,
)
from forge.core.warm_pool import WarmPool
from forge.delivery.signing import validate_webhook_secret
from forge.delivery.url_guard import check_webhook_url
from forge.runner.proto import runner_pb2 as pb
from forge.sandbox.base import (
    NetworkMode,
    Runtime,
    Sandbox,
    SandboxSpec,
    allowed_environment,
    is_alive,
    resource_limits,
)
from forge.store.db import Database
from forge.store.tables import AgentRow, AttachmentRow, PermissionRow, RunRow, utcnow
from forge.workspace.service import check_worktree_limit
from forge.workspace.worktrees import (
    GitError,
    RepoSource,
    Workspace,
    WorktreeManager,
    git,
)

log = logging.getLogger(__name__)

ACTIVE_STATUSES = ("provisioning", "ready", "running")
# Agents adopted per transaction.
ADOPT_BATCH = 200


# The setup run's request id is this prefix + the agent id; it goes before any message.
SETUP_PREFIX = "setup_"
SETUP_PRIORITY = 1000
PROJECT_SETUP = ".forge/setup.sh"


class AgentService:
    """Creates agents, queues their runs, streams their events, and ends them."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        eventlog: EventLog,
        runtime: Runtime,
        worktrees: WorktreeManager,
        profiles: ProfileCatalog,
        cluster: Cluster | None = None,
    ) -> None:
        self.settings = settings
        self.cluster = cluster or Cluster(db)
        self.replica_id = self.cluster.replica_id
        self._lease = timedelta(seconds=settings.cluster.lease_seconds)
        self.db = db
        self.eventlog = eventlog
        self.runtime = runtime
        self.worktrees = worktrees
        self.profiles = profiles
        self.scheduler = Scheduler(
            db,
            max_concurrent=settings.sessions.max_concurrent,
            per_owner=settings.sessions.max_concurrent_per_owner,
            dispatch=self._dispatch,
            replica_id=self.replica_id,
        )
        self.pool = WarmPool(settings, runtime, worktrees, self._pool_spec)
        self._links: dict[str, RunnerLink] = {}
        self._provisioning: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Pick up where the last process stopped, or another replica died: adopt the agents
        no live replica supervises (reattach runners, resume provisioning), then keep their
        leases."""
        # SQLite has one replica: every lease left in the database is a previous process's.
        await self._adopt_agents(starting=True)
        leases = asyncio.create_task(self._keep_leases(), name="leases")
        self._background.add(leases)
        leases.add_done_callback(self._background.discard)
        await self.scheduler.start()
        self.scheduler.kick()
        await self.pool.start()
        idle = self.settings.sessions.idle_stop_seconds
        if idle > 0:
            stopper = asyncio.create_task(self._stop_idle_sessions(idle), name="idle-stop")
            self._background.add(stopper)
            stopper.add_done_callback(self._background.discard)
        sweep = getattr(self.runtime, "sweep_orphans", None)
        interval = self.settings.sandbox.orphan_sweep_seconds
        if sweep is not None and interval > 0:
            task = asyncio.create_task(self._sweep_orphans(sweep, interval), name="orphan-sweep")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """Stop background work; runners keep running so a restart, or another replica, can
        reattach. The leases are released, so that happens at once."""
        await self.pool.stop()
        await self.scheduler.stop()
        for task in list(self._provisioning.values()) + list(self._background):
            task.cancel()
        for task in list(self._provisioning.values()) + list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()
        try:
            async with self.db.write() as session:
                await session.execute(
                    update(AgentRow)
                    .where(AgentRow.lease_owner == self.replica_id)
                    .values(lease_owner=None, lease_expires_at=None, updated_at=AgentRow.updated_at)
                )
        except Exception:
            log.exception("releasing this replica's leases failed; they lapse by themselves")
        close = getattr(self.runtime, "close", None)
        if close is not None:
            await close()

    async def _sweep_orphans(
        self, sweep: Callable[[set[str]], Awaitable[object]], interval: float
    ) -> None:
        """Every `interval` s, have the runtime delete sandboxes (pods) of agents that no longer
        exist: left by a replica that died while creating or deleting one."""
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.db.read() as session:
                    live = set(
                        await session.scalars(
                            select(AgentRow.id).where(AgentRow.deleted_at.is_(None))
                        )
                    )
                await sweep(live | self.pool.agent_ids())
            except Exception:
                log.exception("sweeping orphaned sandboxes failed")

    # ---- leases ----------------------------------------------------------------------------------

    def _lease_until(self) -> Any:
        return utcnow() + self._lease

    async def _keep_leases(self) -> None:
        """Renew this replica's leases every third of their length, and adopt the agents whose
        supervisor's lease lapsed (it died) or was released (it stopped)."""
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                await self._renew_leases()
                await self._adopt_agents()
            except Exception:
                log.exception("renewing or adopting leases failed")

    async def _renew_leases(self) -> None:
        async with self.db.write() as session:
            held = set(
                await session.scalars(
                    update(AgentRow)
                    .where(AgentRow.lease_owner == self.replica_id)
                    .values(lease_expires_at=self._lease_until(), updated_at=AgentRow.updated_at)
                    .returning(AgentRow.id)
                )
            )
        for agent_id in list(self._links):
            if agent_id not in held and agent_id not in self._provisioning:
                # Another replica took it over (this one stalled past its lease): let go of
                # the runner without touching it.
                log.warning("lost the lease of %s to another replica; letting go", agent_id)
                link = self._links.pop(agent_id, None)
                if link is not None:
                    await link.close()

    async def _adopt_agents(self, *, starting: bool = False) -> None:
        """Take the lease of active agents no live replica supervises and pick each up: resume
        its provisioning, reattach to its runner (its unacknowledged events and running run
        come with it), or, runner gone, end its run with RUNNER_LOST.

        `starting`: also this replica's own leases (a restart under a fixed `replica_id`), and
        on SQLite, which has one replica, every lease (a previous process's)."""
        after = ""
        while True:
            adopted = await self._take_leases(starting=starting, after=after)
            for agent_id, status, raw in adopted:
                if agent_id in self._links or agent_id in self._provisioning:
                    continue
                if status == "provisioning":
                    log.info("adopting %s: resuming its provisioning", agent_id)
                    self._start_provisioning(agent_id)
                elif raw and await is_alive(self.runtime, Sandbox.from_json(raw)):
                    log.info("adopting %s: reattaching to its runner", agent_id)
                    self._attach(agent_id, Sandbox.from_json(raw))
                    # Its supervisor may have died between a run's final event and making the
                    # agent `ready` again: the replayed final event will not say so twice.
                    await self._run_finished(agent_id, None)
                else:
                    await self._runner_lost(agent_id)
            if adopted:
                self.scheduler.kick()
            if len(adopted) < ADOPT_BATCH:
                return
            after = adopted[-1][0]

    async def _take_leases(self, *, starting: bool, after: str) -> list[tuple[str, str, Any]]:
        now = utcnow()
        query = select(AgentRow.id, AgentRow.status, AgentRow.sandbox).where(
            AgentRow.deleted_at.is_(None),
            AgentRow.status.in_(ACTIVE_STATUSES),
            AgentRow.id > after,
        )
        lapsed = or_(AgentRow.lease_owner.is_(None), AgentRow.lease_expires_at < now)
        if not starting:
            not_mine = or_(AgentRow.lease_owner.is_(None), AgentRow.lease_owner != self.replica_id)
            query = query.where(lapsed, not_mine)
        elif not self.db.is_sqlite:
            query = query.where(or_(lapsed, AgentRow.lease_owner == self.replica_id))
        # (Starting on SQLite, the one replica: every lease is a previous process's.)
        async with self.db.write() as session:
            rows = list(
                await session.execute(
                    query.order_by(AgentRow.id).limit(ADOPT_BATCH).with_for_update(skip_locked=True)
                )
            )
            if rows:
                # A Core update: taking a lease is no activity (`updated_at` stays).
                await session.execute(
                    update(AgentRow)
                    .where(AgentRow.id.in_([row.id for row in rows]))
                    .values(
                        lease_owner=self.replica_id,
                        lease_expires_at=self._lease_until(),
                        updated_at=AgentRow.updated_at,
                    )
                )
        return [(row.id, row.status, row.sandbox) for row in rows]

    async def _tell_supervisor(self, agent_id: str) -> None:
        """The agent's runs, interrupts, permission answers or state changed: if another replica
        supervises it, have it look (it resends what its runner must hear)."""
        if agent_id not in self._links:
            await self.cluster.announce(AGENTS_CHANNEL, agent_id)
        else:
            self.scheduler.kick()

    def agent_changed(self, agent_id: str) -> None:
        """Another replica changed something of an agent (the `forge_agents` announcement)."""
        if agent_id not in self._links:
            return
        task = asyncio.create_task(self._catch_up(agent_id), name=f"catch-up-{agent_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _catch_up(self, agent_id: str) -> None:
        link = self._links.get(agent_id)
        if link is None:
            return
        async with self.db.read() as session:
            agent = await session.get(AgentRow, agent_id)
        if agent is None or agent.deleted_at is not None or agent.lease_owner != self.replica_id:
            # Deleted or stopped elsewhere (that replica removes the sandbox): let go.
            self._links.pop(agent_id, None)
            await link.close()
            return
        async with self.scheduler.dispatch_lock:
            for message in await self._runs_to_resend(agent_id):
                await link.send(message)
        self.scheduler.kick()

    def resync(self) -> None:
        """Announcements may have been missed (the listening connection was lost): catch up
        with every agent this replica supervises."""
        for agent_id in list(self._links):
            self.agent_changed(agent_id)
        self.scheduler.kick()

    # ---- agents ----------------------------------------------------------------------------------

    async def create(self, body: AgentCreate, *, owner_id: str, wait: bool = False) -> Agent:
        """Store the agent for `owner_id` (who the caller may act for; `body.owner_id` has been
        checked against it) and provision it in the background (`wait`: until ready)."""
        profile = self.profiles.resolve(body.profile, body.executor, body.variant)
        self.profiles.check_runnable(profile)
        source: RepoSource | None = None
        if body.repo is not None:
            await self._check_repo_allowed(body.repo)
            await self._check_base_ref_owned(body.base_ref, owner_id)
            source = await self.worktrees.resolve(body.repo, body.base_ref)
            await check_worktree_limit(self.settings, self.db, self.pool)
        elif body.base_ref is not None:
            raise InvalidRequest("base_ref needs a repo to branch from", code="invalid_request")
        pooled = await self.pool.take(profile.name, source) if self.pool.enabled else None
        agent_id = pooled.agent_id if pooled else ids.agent_id()
        row = AgentRow(
            id=agent_id,
            owner_id=owner_id,
            lease_owner=self.replica_id,
            lease_expires_at=self._lease_until(),
            profile=profile.name,
            executor=profile.executor,
            variant=profile.variant if body.executor is not None else None,
            model=body.model,
            status="provisioning",
            repo=str(source.repo) if source else None,
            base_ref=source.base_ref if source else None,
            base_commit=source.base_commit if source else None,
            metadata_=body.metadata or {},
            last_seq=0,
            runner_ack=0,
        )
        if pooled is not None:
            row.workspace_path = str(pooled.workspace.path)
            row.branch = pooled.workspace.branch
            row.sandbox = pooled.sandbox.to_json()
        setup = await self._setup_command(profile, source)
        async with self.db.write() as session:
            session.add(row)
            if setup:
                # The first run, before any message: the profile's or the project's setup.
                session.add(
                    RunRow(
                        agent_id=agent_id,
                        request_id=SETUP_PREFIX + agent_id,
                        owner_id=owner_id,
                        prompt="",
                        body_hash=hashlib.sha256(setup.encode()).hexdigest(),
                        status="queued",
                        priority=SETUP_PRIORITY,
                        interrupt_requested=False,
                    )
                )
        if pooled is not None:
            await self.pool.claimed(pooled)
        task = self._start_provisioning(agent_id, pooled.sandbox if pooled else None)
        if wait:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        return await self.get(agent_id, None)

    async def _check_repo_allowed(self, repo: str) -> None:
        """A repository under `[worktrees] allowed_repo_roots` (when set), never in Forge's
        own data (its database, the worktrees of other agents)."""
        if not Path(repo).is_absolute():
            return  # `resolve` says what is wrong with it
        roots = self.settings.worktrees.allowed_repo_roots

        def where() -> tuple[bool, bool]:
            real = Path(repo).resolve()
            forbidden = (self.settings.data_dir, self.settings.worktree_base)
            inside_forge = any(real.is_relative_to(p.resolve()) for p in forbidden)
            allowed = not roots or any(
                real.is_relative_to(Path(root).expanduser().resolve()) for root in roots
            )
            return inside_forge, allowed

        inside_forge, allowed = await asyncio.to_thread(where)
        if inside_forge:
            raise InvalidRequest(
                "repo must not be inside Forge's data directory or worktrees", code="invalid_repo"
            )
        if not allowed:
            raise InvalidRequest(
                "repo must be under one of the directories in [worktrees] allowed_repo_roots: "
                + ", ".join(roots),
                code="invalid_repo",
            )

    async def _check_base_ref_owned(self, base_ref: str | None, owner_id: str) -> None:
        """Another owner's session branch (`forge/<agent_id>`) answers as if it did not exist."""
        if not base_ref or "forge/" not in base_ref:
            return
        named = base_ref.split("forge/", 1)[1].split("~")[0].split("^")[0].split("/")[0]
        async with self.db.read() as session:
            owner = await session.scalar(select(AgentRow.owner_id).where(AgentRow.id == named))
        if owner != owner_id:
            raise InvalidRequest(
                f"base_ref {base_ref!r} does not name a commit you can branch from: "
                "no such branch, tag or commit",
                code="invalid_base_ref",
            )

    async def get(self, agent_id: str, owner_id: str | None) -> Agent:
        row = await self._agent_row(agent_id, owner_id)
        extras = await self._run_summaries([row.id])
        return _agent_schema(row, self._profile_or_none(row), *extras.get(row.id, (None, 0)))

    async def list_agents(
        self, owner_id: str | None, *, limit: int, cursor: str | None
    ) -> AgentList:
        conditions: list[ColumnElement[bool]] = [AgentRow.deleted_at.is_(None)]
        if owner_id is not None:
            conditions.append(AgentRow.owner_id == owner_id)
        async with self.db.read() as session:
            total = await session.scalar(
                select(func.count()).select_from(AgentRow).where(*conditions)
            )
            query = select(AgentRow).where(*conditions)
            if cursor:
                query = query.where(AgentRow.id < cursor)
            rows = list(await session.scalars(query.order_by(AgentRow.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        extras = await self._run_summaries([r.id for r in rows])
        agents = [
            _agent_schema(r, self._profile_or_none(r), *extras.get(r.id, (None, 0))) for r in rows
        ]
        return AgentList(
            agents=agents, total=int(total or 0), next_cursor=rows[-1].id if more and rows else None
        )

    async def delete(
        self, agent_id: str, owner_id: str | None, *, graceful: bool, purge: bool
    ) -> None:
        """Stop the agent's runner (letting the current run finish its final event when
        graceful), end its queued runs, and with `purge` remove its worktree and branch."""
        row = await self._agent_row(agent_id, owner_id)
        async with self.db.write() as session:
            agent = await session.get(AgentRow, agent_id)
            assert agent is not None
            agent.deleted_at = utcnow()
            agent.status = "stopped"
            agent.lease_owner, agent.lease_expires_at = None, None
        await self._tell_supervisor(agent_id)
        provisioning = self._provisioning.get(agent_id)
        if provisioning is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.shield(provisioning), self.settings.sandbox.start_timeout_seconds + 5
                )
        await self._end_runs(agent_id, "queued", "the agent was deleted", code=None)
        link = self._links.pop(agent_id, None)
        grace = self.settings.sessions.interrupt_grace_seconds
        if link is not None:
            await link.shutdown(graceful=graceful, timeout=grace * 3 + 10 if graceful else 5)
        await self._discard_sandbox(agent_id)
        # A run whose final event the runner could not deliver still gets one.
        await self._end_runs(
            agent_id, "running", "the agent was deleted before the run finished", code=None
        )
        if purge:
            await self.worktrees.remove(agent_id, row.repo, delete_branch=True)
            # The executors' home (their conversations), kept while the session could resume.
            state = self.settings.runner_state_dir / agent_id
            await asyncio.to_thread(shutil.rmtree, state, True)

    async def update(self, agent_id: str, owner_id: str | None, body: AgentUpdate) -> Agent:
        """Change what the agent's next runs use (the model)."""
        async with self.db.write() as session:
            row = await session.get(AgentRow, agent_id)
            if row is None or row.deleted_at is not None or (owner_id and row.owner_id != owner_id):
                raise NotFound(f"agent {agent_id} not found", code="agent_not_found")
            row.model = body.model
        return await self.get(agent_id, owner_id)

    def _profile_of(self, agent: AgentRow) -> Profile:
        """What the agent runs as; `InvalidRequest` when its profile is no longer configured."""
        if agent.variant is not None:
            return self.profiles.for_executor(agent.executor, agent.variant)
        return self.profiles.get(agent.profile)

    def _profile_or_none(self, agent: AgentRow) -> Profile | None:
        try:
            return self._profile_of(agent)
        except InvalidRequest:
            return None

    # ---- permissions -----------------------------------------------------------------------------

    async def permissions(
        self, agent_id: str, owner_id: str | None, *, pending_only: bool = False
    ) -> PermissionList:
        await self._agent_row(agent_id, owner_id)
        query = select(PermissionRow).where(PermissionRow.agent_id == agent_id)
        if pending_only:
            query = query.where(
                PermissionRow.status == "pending",
                (PermissionRow.expires_at.is_(None)) | (PermissionRow.expires_at > utcnow()),
            )
        async with self.db.read() as session:
            rows = list(await session.scalars(query.order_by(PermissionRow.created_at)))
        return PermissionList(permissions=[_permission_schema(row) for row in rows])

    async def answer_permission(
        self, agent_id: str, owner_id: str | None, permission_id: str, body: PermissionAnswer
    ) -> Permission:
        """Record the user's answer and pass it to the waiting agent."""
        await self._agent_row(agent_id, owner_id)
        async with self.db.write() as session:
            row = await session.get(PermissionRow, permission_id)
            if row is None or row.agent_id != agent_id:
                raise NotFound(
                    f"agent {agent_id} has no permission request {permission_id}",
                    code="permission_not_found",
                )
            if row.status == "answered":
                raise Conflict(
                    f"permission request {permission_id} was already answered ({row.decision})",
                    code="permission_answered",
                )
            if _permission_status(row) == "expired":
                raise Conflict(
                    f"permission request {permission_id} has expired: its run ended or it was "
                    "not answered in time, and the tool call was denied",
                    code="permission_expired",
                )
            run_status = await session.scalar(
                select(RunRow.status).where(
                    RunRow.agent_id == agent_id, RunRow.request_id == row.request_id
                )
            )
            if run_status != "running":
                raise Conflict(
                    f"the run that asked ({row.request_id}) has ended ({run_status}); "
                    "the request can no longer be answered",
                    code="permission_expired",
                )
            row.status, row.decision, row.message = "answered", body.decision, body.message
            row.answered_at = utcnow()
            answered = _permission_schema(row)
        link = self._links.get(agent_id)
        reply = pb.PermissionReply(
            request_id=row.request_id or "",
            permission_id=permission_id,
            decision=body.decision,
            message=body.message or "",
        )
        if link is None:
            # Another replica supervises the runner (or none yet): it resends what is answered.
            await self._tell_supervisor(agent_id)
        elif not await link.send(pb.PlatformMessage(permission_reply=reply)):
            # The runner hears it when it reconnects (`_runs_to_resend`).
            log.info("runner of %s not connected; answer to %s sent later", agent_id, permission_id)
        return answered

    # ---- runs ------------------------------------------------------------------------------------

    async def send_message(
        self, agent_id: str, owner_id: str | None, body: MessageCreate
    ) -> MessageAccepted:
        await self._agent_row(agent_id, owner_id)
        self._check_attachments(body)
        if body.webhook_url is not None:
            await check_webhook_url(body.webhook_url, self.settings.webhooks)
        if body.webhook_secret is not None:
            validate_webhook_secret(body.webhook_secret)
        if body.request_id is not None and body.request_id.startswith(SETUP_PREFIX):
            raise InvalidRequest(
                f"request_id must not start with {SETUP_PREFIX!r} (Forge's setup runs use it)",
                code="invalid_request_id",
            )
        request_id = body.request_id or ids.request_id()
        body_hash = _hash_body(body)
        try:
            status, needs_runner = await self._store_run(agent_id, request_id, body, body_hash)
        except IntegrityError:
            # The same request_id raced in from another request: answer as for a retry.
            status, needs_runner = await self._store_run(agent_id, request_id, body, body_hash)
        if needs_runner:
            self._start_provisioning(agent_id)
        elif status == "queued" and agent_id not in self._links:
            # Another replica supervises the agent: its scheduler starts the run.
            await self._tell_supervisor(agent_id)
        elif status == "queued":
            await self.scheduler.run_pass()
            async with self.db.read() as session:
                current = await session.scalar(
                    select(RunRow.status).where(
                        RunRow.agent_id == agent_id, RunRow.request_id == request_id
                    )
                )
            status = current or status
        return MessageAccepted(
            request_id=request_id,
            agent_id=agent_id,
            status="queued" if status == "queued" else "processing",
        )

    def _check_attachments(self, body: MessageCreate) -> None:
        limits = self.settings.attachments
        if len(body.attachments) > limits.max_files:
            raise InvalidRequest(
                f"a message may carry at most {limits.max_files} attachments "
                f"([attachments] max_files); this one has {len(body.attachments)}",
                code="too_many_attachments",
            )
        total = 0
        for attachment in body.attachments:
            size = len(attachment.data)
            if size > limits.max_file_bytes:
                raise TooLarge(
                    f"attachment {attachment.name!r} is {size} bytes; the limit is "
                    f"{limits.max_file_bytes} bytes per file ([attachments] max_file_bytes)",
                    code="attachment_too_large",
                )
            total += size
        if total > limits.max_total_bytes:
            raise TooLarge(
                f"the attachments are {total} bytes together; the limit is "
                f"{limits.max_total_bytes} bytes per message ([attachments] max_total_bytes)",
                code="attachments_too_large",
            )
        names = [attachment.name for attachment in body.attachments]
        if len(set(names)) != len(names):
            raise InvalidRequest(
                "attachment names must be unique within a message", code="duplicate_attachment"
            )

    async def _store_run(
        self, agent_id: str, request_id: str, body: MessageCreate, body_hash: str
    ) -> tuple[str, bool]:
        """Queue the run unless `request_id` is known; return its status and whether the agent
        needs a new runner. The agent is re-read in the same transaction, so a delete, a failed
        provisioning or a lost runner cannot slip in between and strand the run."""
        async with self.db.write() as session:
            # Locked (PostgreSQL): a replica resuming a stopped agent is the only one to.
            agent = await session.get(AgentRow, agent_id, with_for_update=True)
            if agent is None or agent.deleted_at is not None:
                raise NotFound(f"agent {agent_id} not found", code="agent_not_found")
            existing = await session.scalar(
                select(RunRow).where(RunRow.agent_id == agent_id, RunRow.request_id == request_id)
            )
            if existing is not None:
                if existing.body_hash != body_hash:
                    raise Conflict(
                        f"request_id {request_id!r} was already used with a different body; "
                        "use a new request_id",
                        code="request_id_conflict",
                    )
                return existing.status, False
            if agent.status == "failed":
                raise Conflict(
                    f"agent {agent_id} could not be provisioned ({agent.error_message}); "
                    "create a new agent",
                    code="agent_failed",
                )
            for position, attachment in enumerate(body.attachments):
                data = attachment.data
                session.add(
                    AttachmentRow(
                        agent_id=agent_id,
                        request_id=request_id,
                        position=position,
                        name=attachment.name,
                        media_type=attachment.media_type,
                        size=len(data),
                        data=data,
                    )
                )
            session.add(
                RunRow(
                    agent_id=agent_id,
                    request_id=request_id,
                    owner_id=agent.owner_id,
                    prompt=body.content,
                    body_hash=body_hash,
                    status="queued",
                    priority=body.priority,
                    webhook_url=body.webhook_url,
                    webhook_secret=body.webhook_secret,
                    interrupt_requested=False,
                )
            )
            if agent.status != "stopped":
                return "queued", False
            # This replica starts it again, and supervises it.
            agent.status = "provisioning"
            agent.lease_owner, agent.lease_expires_at = self.replica_id, self._lease_until()
            return "queued", True

    async def interrupt(
        self, agent_id: str, owner_id: str | None, body: InterruptRequest
    ) -> InterruptAccepted:
        await self._agent_row(agent_id, owner_id)
        if body.webhook_url is not None:
            await check_webhook_url(body.webhook_url, self.settings.webhooks)
        # Holding the scheduler's dispatch lock: a run it just claimed has had its Run sent
        # before our Interrupt (same stream, in order), and a queued run cannot be claimed
        # while we end it.
        async with self.scheduler.dispatch_lock:
            async with self.db.write() as session:
                # With every replica's scheduler: a queued run found here cannot be claimed
                # before it is marked (claims skip marked runs), nor a claimed one look queued.
                await serialize(session)
                query = select(RunRow).where(
                    RunRow.agent_id == agent_id, RunRow.status.in_(("running", "queued"))
                )
                if body.request_id is not None:
                    query = query.where(RunRow.request_id == body.request_id)
                runs = list(await session.scalars(query.order_by(RunRow.id)))
                target = next((r for r in runs if r.status == "running"), runs[0] if runs else None)
                if target is None:
                    what = f"run {body.request_id!r}" if body.request_id else "run"
                    raise Conflict(
                        f"agent {agent_id} has no queued or running {what} to interrupt",
                        code="nothing_to_interrupt",
                    )
                target.interrupt_requested = True
                if body.webhook_url:
                    target.interrupt_webhook_url = body.webhook_url
                request_id, was_running = target.request_id, target.status == "running"
            if was_running:
                link = self._links.get(agent_id)
                grace = self.settings.sessions.interrupt_grace_seconds
                message = pb.Interrupt(request_id=request_id, grace_seconds=grace)
                # If the runner is not connected, the interrupt is resent when it is; if another
                # replica supervises it, that replica sends it.
                if link is not None:
                    await link.send(pb.PlatformMessage(interrupt=message))
                else:
                    await self._tell_supervisor(agent_id)
            else:
                # One transaction: the final event and the run's end.
                await self.eventlog.append(
                    agent_id,
                    _final_drafts([request_id], "interrupted before it started", code=None),
                )
        return InterruptAccepted(agent_id=agent_id, request_id=request_id)

    async def events(
        self, agent_id: str, owner_id: str | None, *, after: int, limit: int
    ) -> StoredEventPage:
        """A page of the log, each event as the JSON text it was stored and sent as (no decode
        and re-encode: faster, and exactly what webhooks carried)."""
        agent = await self._agent_row(agent_id, owner_id, include_deleted=True)
        events = await self.eventlog.read_stored(agent_id, after=after, limit=limit)
        next_after = events[-1].seq if events else after
        async with self.db.read() as session:
            last_seq = await session.scalar(
                select(AgentRow.last_seq).where(AgentRow.id == agent.id)
            )
        last = int(last_seq or 0)
        return StoredEventPage(
            events=events, next_after=next_after, has_more=next_after < last, last_seq=last
        )

    async def check_access(self, agent_id: str, owner_id: str | None) -> None:
        """`NotFound` unless the agent exists (deleted ones too) and belongs to `owner_id`."""
        await self._agent_row(agent_id, owner_id, include_deleted=True)

    async def is_deleted(self, agent_id: str) -> bool:
        """True if the agent was deleted (or never existed): its log will not grow again."""
        async with self.db.read() as session:
            row = await session.get(AgentRow, agent_id)
        return row is None or row.deleted_at is not None

    async def status_counts(self, owner_id: str | None = None) -> dict[str, int]:
        """Agents by status (of `owner_id`, if given)."""
        query = select(AgentRow.status, func.count()).where(AgentRow.deleted_at.is_(None))
        if owner_id is not None:
            query = query.where(AgentRow.owner_id == owner_id)
        async with self.db.read() as session:
            rows = await session.execute(query.group_by(AgentRow.status))
            counts = {status: int(n) for status, n in rows}
        counts["total"] = sum(counts.values())
        return counts

    # ---- provisioning ----------------------------------------------------------------------------

    def _start_provisioning(
        self, agent_id: str, pooled: Sandbox | None = None
    ) -> asyncio.Task[None]:
        """Provision the agent's workspace and sandbox, or with `pooled` adopt a sandbox of the
        warm pool (falling back to provisioning if its runner cannot be reached)."""
        current = self._provisioning.get(agent_id)
        if current is not None and not current.done():
            return current
        work = self._adopt(agent_id, pooled) if pooled else self._provision(agent_id)
        task = asyncio.create_task(work, name=f"provision-{agent_id}")
        self._provisioning[agent_id] = task
        task.add_done_callback(lambda _t: self._provisioning.pop(agent_id, None))
        return task

    async def _provision(self, agent_id: str) -> None:
        try:
            async with self.db.write() as session:
                agent = await session.get(AgentRow, agent_id)
                if agent is None or agent.deleted_at is not None:
                    return
                agent.status = "provisioning"
                repo, base_ref, base_commit = agent.repo, agent.base_ref, agent.base_commit
                owner_id, profile_name = agent.owner_id, agent.profile
            # A provisioning cut short by a restart may have left a runner behind.
            await self._discard_sandbox(agent_id)
            source = None
            if repo and base_ref and base_commit:
                source = RepoSource(repo=Path(repo), base_ref=base_ref, base_commit=base_commit)
            workspace = await self.worktrees.create(agent_id, source)
            async with self.db.write() as session:
                agent = await session.get(AgentRow, agent_id)
                if agent is None or agent.deleted_at is not None:
                    return
                agent.workspace_path = str(workspace.path)
                agent.branch = workspace.branch
            sandbox = await self.runtime.provision(
                await self._sandbox_spec(agent_id, owner_id, profile_name, workspace)
            )
            async with self.db.write() as session:
                agent = await session.get(AgentRow, agent_id)
                assert agent is not None
                agent.sandbox = sandbox.to_json()
                agent.runner_ack = 0
                deleted = agent.deleted_at is not None
            if deleted:
                # Deleted while we were starting it: nobody else will stop this runner.
                await self._discard_sandbox(agent_id)
                return
            await self._connect(agent_id, sandbox)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("provisioning of %s failed", agent_id)
            await self._provisioning_failed(agent_id, str(exc) or type(exc).__name__)

    async def _sandbox_spec(
        self, agent_id: str, owner_id: str | None, profile_name: str, workspace: Workspace
    ) -> SandboxSpec:
        try:
            profile: Profile | None = self.profiles.get(profile_name)
        except InvalidRequest:
            profile = None
        git = await self.worktrees.git_metadata(workspace)
        return SandboxSpec(
            agent_id=agent_id,
            workspace=workspace.path,
            env=allowed_environment(os.environ),
            owner_id=owner_id,
            profile=profile_name,
            network=_network(profile, self.settings),
            limits=resource_limits(self.settings),
            git_common_dir=git.common_dir if git else None,
            git_writable=git.writable if git else (),
        )

    async def _connect(self, agent_id: str, sandbox: Sandbox) -> None:
        """Supervise the agent's new runner and, once connected, make the agent `ready` (or,
        deleted meanwhile, remove the sandbox: nobody else will stop this runner)."""
        link = self._attach(agent_id, sandbox)
        await link.wait_connected(self.settings.sandbox.start_timeout_seconds)
        async with self.db.write() as session:
            agent = await session.get(AgentRow, agent_id)
            deleted = agent is None or agent.deleted_at is not None
            if agent is not None and not deleted:
                agent.status = "ready"
                agent.error_message = None
        if deleted:
            await self._discard_sandbox(agent_id)
            return
        self.scheduler.kick()

    async def _adopt(self, agent_id: str, sandbox: Sandbox) -> None:
        try:
            await self._connect(agent_id, sandbox)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pooled sandbox of %s unusable; provisioning a new one", agent_id)
            await self._provision(agent_id)

    async def _pool_spec(self, agent_id: str, profile: str, workspace: Workspace) -> SandboxSpec:
        return await self._sandbox_spec(agent_id, None, profile, workspace)

    async def _provisioning_failed(self, agent_id: str, reason: str) -> None:
        await self._discard_sandbox(agent_id)
        async with self.db.write() as session:
            agent = await session.get(AgentRow, agent_id)
            if agent is None:
                return
            agent.status = "failed"
            agent.error_message = reason
            agent.lease_owner, agent.lease_expires_at = None, None
        await self._end_runs(
            agent_id,
            "queued",
            f"provisioning failed: {reason}",
            code="PROVISIONING_FAILED",
        )

    async def _discard_sandbox(self, agent_id: str) -> None:
        """Stop supervising the agent's runner and make sure its sandbox is gone."""
        link = self._links.pop(agent_id, None)
        if link is not None:
            await link.close()
        sandbox = await self._sandbox_of(agent_id)
        if sandbox is not None:
            try:
                await self.runtime.destroy(sandbox)
            except Exception:
                # Whatever the engine or cluster left is the orphan sweep's to collect; the
                # agent's state must move on regardless.
                log.exception("destroying the sandbox of %s failed", agent_id)
            async with self.db.write() as session:
                agent = await session.get(AgentRow, agent_id)
                if agent is not None:
                    agent.sandbox = None

    def _attach(self, agent_id: str, sandbox: Sandbox) -> RunnerLink:
        link = RunnerLink(
            agent_id=agent_id,
            sandbox=sandbox,
            runtime=self.runtime,
            db=self.db,
            eventlog=self.eventlog,
            on_final=self._run_finished,
            on_lost=self._runner_lost,
            runs_to_resend=self._runs_to_resend,
            connect_timeout=self.settings.sandbox.start_timeout_seconds,
            give_up_after=self.settings.sandbox.unreachable_timeout_seconds,
        )
        self._links[agent_id] = link
        link.start()
        return link

    # ---- execution -------------------------------------------------------------------------------

    async def _dispatch(self, run: RunRow, agent: AgentRow) -> None:
        try:
            message = await self._run_message(run, agent)
        except InvalidRequest as exc:
            await self.eventlog.append(
                agent.id,
                [
                    EventDraft(
                        event_type="agent.error",
                        request_id=run.request_id,
                        error=ErrorInfo(code="UNKNOWN_PROFILE", message=exc.message),
                    )
                ],
            )
            await self._run_finished(agent.id, run.request_id)
            return
        link = self._links.get(agent.id)
        if link is None or not await link.send(pb.PlatformMessage(run=message)):
            log.info(
                "runner of %s not connected; %s is sent on reconnect", agent.id, run.request_id
            )

    async def _setup_command(self, profile: Profile, source: RepoSource | None) -> str:
        """The setup to run before the first message: the profile's `setup_script`, else the
        repository's committed `.forge/setup.sh`, else nothing."""
        if profile.setup_script.strip():
            return profile.setup_script
        if source is None:
            return ""
        try:
            await git("cat-file", "-e", f"{source.base_commit}:{PROJECT_SETUP}", cwd=source.repo)
        except GitError:
            return ""
        return f"sh {PROJECT_SETUP}"

    async def _run_message(self, run: RunRow, agent: AgentRow) -> pb.Run:
        profile = self._profile_of(agent)
        if run.request_id.startswith(SETUP_PREFIX):
            setup = profile.setup_script.strip() or f"sh {PROJECT_SETUP}"
            return pb.Run(
                request_id=run.request_id,
                prompt="",
                executor=pb.ExecutorSpec(kind="command", command=setup, settings_json="{}"),
                env=profile.credentials(),
                timeout_seconds=self.settings.sessions.timeout_seconds,
            )
        async with self.db.read() as session:
            attachments = list(
                await session.scalars(
                    select(AttachmentRow)
                    .where(
                        AttachmentRow.agent_id == agent.id,
                        AttachmentRow.request_id == run.request_id,
                    )
                    .order_by(AttachmentRow.position)
                )
            )
        return pb.Run(
            request_id=run.request_id,
            prompt=run.prompt,
            executor=pb.ExecutorSpec(
                kind=profile.executor,
                command=profile.command,
                settings_json=profile.settings_json,
                model=agent.model or profile.model,
                permission_mode=profile.permission_mode,
                permission_timeout_seconds=profile.permission_timeout_seconds or 0,
            ),
            # Credentials reach this executor's process alone, per run.
            env=profile.credentials(),
            timeout_seconds=self.settings.sessions.timeout_seconds,
            resume_session_id=agent.executor_session_id or "",
            attachments=[
                pb.Attachment(name=a.name, media_type=a.media_type, data=a.data)
                for a in attachments
            ],
        )

    async def _runs_to_resend(self, agent_id: str) -> list[pb.PlatformMessage]:
        """What a (re)connected runner must hear about runs marked running: the runs themselves
        (a runner ignores one it already knows) and interrupts that may not have reached it."""
        async with self.db.read() as session:
            agent = await session.get(AgentRow, agent_id)
            runs = list(
                await session.scalars(
                    select(RunRow)
                    .where(RunRow.agent_id == agent_id, RunRow.status == "running")
                    .order_by(RunRow.id)
                )
            )
            answers = list(
                await session.scalars(
                    select(PermissionRow).where(
                        PermissionRow.agent_id == agent_id,
                        PermissionRow.status == "answered",
                        PermissionRow.request_id.in_([run.request_id for run in runs]),
                    )
                )
            )
        if agent is None:
            return []
        messages = []
        grace = self.settings.sessions.interrupt_grace_seconds
        for run in runs:
            with contextlib.suppress(InvalidRequest):
                messages.append(pb.PlatformMessage(run=await self._run_message(run, agent)))
            if run.interrupt_requested:
                interrupt = pb.Interrupt(request_id=run.request_id, grace_seconds=grace)
                messages.append(pb.PlatformMessage(interrupt=interrupt))
        # Answers the runner may have missed; it ignores those it has had.
        for answer in answers:
            reply = pb.PermissionReply(
                request_id=answer.request_id or "",
                permission_id=answer.id,
                decision=answer.decision or "reject",
                message=answer.message or "",
            )
            messages.append(pb.PlatformMessage(permission_reply=reply))
        return messages

    async def _run_finished(self, agent_id: str, request_id: str | None) -> None:
        async with self.db.write() as session:
            # With the scheduler's claims: a run claimed meanwhile keeps the agent `running`.
            await serialize(session)
            agent = await session.get(AgentRow, agent_id)
            if agent is not None and agent.status == "running" and agent.deleted_at is None:
                still_running = await session.scalar(
                    select(func.count())
                    .select_from(RunRow)
                    .where(RunRow.agent_id == agent_id, RunRow.status == "running")
                )
                if not still_running:
                    agent.status = "ready"
        self.scheduler.kick()

    async def stop_session(self, agent_id: str, owner_id: str | None) -> None:
        """Stop the session: its running run is interrupted (and waited for), queued ones end
        with SESSION_STOPPED, its sandbox goes; the workspace and the executor's conversation
        stay, so the next message (`resume`) starts a new sandbox and continues."""
        row = await self._agent_row(agent_id, owner_id)
        if row.status == "stopped":
            return
        with contextlib.suppress(Conflict):
            await self.interrupt(agent_id, owner_id, InterruptRequest())
        deadline = (
            asyncio.get_running_loop().time()
            + self.settings.sessions.interrupt_grace_seconds * 3
            + 10
        )
        while asyncio.get_running_loop().time() < deadline:
            async with self.db.read() as session:
                running = await session.scalar(
                    select(func.count())
                    .select_from(RunRow)
                    .where(RunRow.agent_id == agent_id, RunRow.status == "running")
                )
            if not running:
                break
            await asyncio.sleep(0.05)
        await self._end_runs(agent_id, "queued", "the session was stopped", code="SESSION_STOPPED")
        await self._stop_idle(agent_id)

    async def _stop_idle(self, agent_id: str) -> None:
        """Remove the sandbox of an agent with nothing to do; it becomes `stopped`."""
        provisioning = self._provisioning.get(agent_id)
        if provisioning is not None:
            provisioning.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await provisioning
        await self._to_stopped(agent_id, "the session was stopped", code="SESSION_STOPPED")

    async def _stop_idle_sessions(self, idle_seconds: float) -> None:
        """Every so often, stop sessions that have been `ready` with nothing queued for
        `idle_seconds` (their workspace stays)."""
        while True:
            await asyncio.sleep(min(30.0, max(idle_seconds / 4, 0.5)))
            try:
                cutoff = utcnow() - timedelta(seconds=idle_seconds)
                queued = exists().where(RunRow.agent_id == AgentRow.id, RunRow.status == "queued")
                async with self.db.read() as session:
                    idle = list(
                        await session.scalars(
                            select(AgentRow.id).where(
                                AgentRow.deleted_at.is_(None),
                                AgentRow.status == "ready",
                                AgentRow.lease_owner == self.replica_id,
                                AgentRow.updated_at < cutoff,
                                ~queued,
                            )
                        )
                    )
                for agent_id in idle:
                    log.info("stopping %s: idle for %gs", agent_id, idle_seconds)
                    async with self.scheduler.dispatch_lock:
                        await self._stop_idle(agent_id)
            except Exception:
                log.exception("stopping idle sessions failed")

    async def _runner_lost(self, agent_id: str) -> None:
        """The runner is gone (or cannot be reached): its run ends with RUNNER_LOST, whatever is
        left of the sandbox is removed, the workspace is kept, and the next message (or one
        already queued) starts a new runner."""
        await self._to_stopped(agent_id, "the runner exited unexpectedly", code="RUNNER_LOST")

    async def _to_stopped(self, agent_id: str, reason: str, *, code: str) -> None:
        """Remove the agent's sandbox, end its running run with `code`, and mark it `stopped`;
        a message queued meanwhile starts it again at once."""
        await self._discard_sandbox(agent_id)
        await self._end_runs(agent_id, "running", reason, code=code)
        async with self.db.write() as session:
            agent = await session.get(AgentRow, agent_id, with_for_update=True)
            if agent is None or agent.deleted_at is not None:
                return
            queued = await session.scalar(
                select(func.count())
                .select_from(RunRow)
                .where(RunRow.agent_id == agent_id, RunRow.status == "queued")
            )
            if queued:
                agent.status = "provisioning"
                agent.lease_owner, agent.lease_expires_at = self.replica_id, self._lease_until()
            else:
                agent.status = "stopped"
                agent.lease_owner, agent.lease_expires_at = None, None
        if queued:
            self._start_provisioning(agent_id)

    async def _end_runs(self, agent_id: str, status: str, reason: str, *, code: str | None) -> None:
        """Give every run of the agent in `status` its final event: `agent.error` with `code`,
        or `agent.complete` interrupted when `code` is None."""
        if status == "queued":
            async with self.db.write() as session:
                # Marked, with the schedulers held off: no replica starts them meanwhile.
                await serialize(session)
                marked = await session.execute(
                    update(RunRow)
                    .where(RunRow.agent_id == agent_id, RunRow.status == "queued")
                    .values(interrupt_requested=True)
                    .returning(RunRow.id, RunRow.request_id)
                )
                request_ids = [request_id for _, request_id in sorted(marked.all())]
        else:
            async with self.db.read() as session:
                request_ids = list(
                    await session.scalars(
                        select(RunRow.request_id)
                        .where(RunRow.agent_id == agent_id, RunRow.status == status)
                        .order_by(RunRow.id)
                    )
                )
        if request_ids:
            await self.eventlog.append(agent_id, _final_drafts(request_ids, reason, code=code))

    # ---- lookups ---------------------------------------------------------------------------------

    async def _agent_row(
        self, agent_id: str, owner_id: str | None, *, include_deleted: bool = False
    ) -> AgentRow:
        async with self.db.read() as session:
            row = await session.get(AgentRow, agent_id)
        if (
            row is None
            or (row.deleted_at is not None and not include_deleted)
            or (owner_id is not None and row.owner_id != owner_id)
        ):
            raise NotFound(f"agent {agent_id} not found", code="agent_not_found")
        return row

    async def _sandbox_of(self, agent_id: str) -> Sandbox | None:
        async with self.db.read() as session:
            raw = await session.scalar(select(AgentRow.sandbox).where(AgentRow.id == agent_id))
        return Sandbox.from_json(raw) if raw else None

    async def _run_summaries(self, agent_ids: list[str]) -> dict[str, tuple[str | None, int]]:
        if not agent_ids:
            return {}
        async with self.db.read() as session:
            rows = await session.execute(
                select(RunRow.agent_id, RunRow.status, RunRow.request_id).where(
                    RunRow.agent_id.in_(agent_ids), RunRow.status.in_(("running", "queued"))
                )
            )
            summary: dict[str, tuple[str | None, int]] = {}
            for agent_id, status, request_id in rows:
                current, queued = summary.get(agent_id, (None, 0))
                if status == "running":
                    current = request_id
                else:
                    queued += 1
                summary[agent_id] = (current, queued)
        return summary


def _network(profile: Profile | None, settings: Settings) -> NetworkMode:
    if profile is not None and profile.network in ("none", "host"):
        return "none" if profile.network == "none" else "host"
    return settings.sandbox.network


def _agent_schema(
    row: AgentRow, profile: Profile | None, current_request_id: str | None, queued: int
) -> Agent:
    return Agent(
        id=row.id,
        owner_id=row.owner_id,
        profile=row.profile,
        executor=row.executor,
        variant=row.variant,
        model=row.model or (profile.model if profile is not None else None) or None,
        permission_mode=profile.permission_mode if profile is not None else "bypass",
        status=row.status,
        repo=row.repo,
        base_ref=row.base_ref,
        base_commit=row.base_commit,
        branch=row.branch,
        workspace_path=row.workspace_path,
        metadata=row.metadata_ or {},
        session_id=row.executor_session_id,
        last_seq=row.last_seq,
        current_request_id=current_request_id,
        queued_runs=queued,
        error=row.error_message,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _permission_schema(row: PermissionRow) -> Permission:
    return Permission(
        permission_id=row.id,
        agent_id=row.agent_id,
        request_id=row.request_id,
        tool=row.tool,
        detail=row.detail,
        status=_permission_status(row),
        decision=row.decision,
        message=row.message,
        created_at=row.created_at,
        expires_at=row.expires_at,
        answered_at=row.answered_at,
    )


def _permission_status(row: PermissionRow) -> Literal["pending", "answered", "expired"]:
    if row.status == "answered":
        return "answered"
    if row.status == "expired" or (row.expires_at is not None and row.expires_at <= utcnow()):
        return "expired"
    return "pending"


def _hash_body(body: MessageCreate) -> str:
    canonical = json.dumps(body.model_dump(exclude={"request_id"}), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _final_drafts(request_ids: list[str], reason: str, *, code: str | None) -> list[EventDraft]:
    """Final events made by the platform: `agent.error` with `code`, else interrupted."""
    if code is None:
        return [
            EventDraft(
                event_type="agent.complete", request_id=r, outcome="interrupted", message=reason
            )
            for r in request_ids
        ]
    error = ErrorInfo(code=code, message=reason, recoverable=code == "RUNNER_LOST")
    return [
        EventDraft(event_type="agent.error", request_id=r, message=reason, error=error)
        for r in request_ids
    ]
