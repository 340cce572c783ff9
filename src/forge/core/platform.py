"""The assembled platform: every long-lived part, built from settings, started and stopped."""

from __future__ import annotations

import logging
import time

from forge import __version__
from forge.config import Settings
from forge.core.agents import AgentService
from forge.core.analytics import AnalyticsService
from forge.core.auth import ApiKeyService
from forge.core.cluster import AGENTS_CHANNEL, EVENTS_CHANNEL, Cluster
from forge.core.deliveries import DeliveryService
from forge.core.eventlog import EventBus, EventLog
from forge.core.neurons import NeuronService, load_definitions
from forge.core.profiles import ProfileCatalog
from forge.core.redaction import SecretRedactor, secret_values
from forge.core.sessions import SessionService
from forge.core.tasks import TaskService
from forge.delivery.dispatcher import WebhookDispatcher
from forge.sandbox import get_runtime
from forge.store.db import Database
from forge.workspace.service import WorktreeService
from forge.workspace.worktrees import WorktreeManager

log = logging.getLogger(__name__)


class Platform:
    """Owns the database, event log, webhook dispatcher and agent service of one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version = __version__
        self.started_at = time.monotonic()
        self.db = Database(
            settings.database_url,
            pool_size=settings.database.pool_size,
            pool_timeout=settings.database.pool_timeout_seconds,
            pool_recycle=settings.database.max_lifetime_seconds,
        )
        self.bus = EventBus()
        self.cluster = Cluster(self.db, settings.cluster.replica_id)
        self.dispatcher = WebhookDispatcher(self.db, settings.webhooks, cluster=self.cluster)
        profiles = ProfileCatalog(settings)
        neurons = load_definitions(settings.neurons, profiles)
        self.redactor = SecretRedactor(secret_values(settings, profiles))
        self.eventlog = EventLog(
            self.db,
            self.bus,
            on_outbox=self.dispatcher.wake,
            redactor=self.redactor,
            origin=self.cluster.replica_id,
        )
        self.agents = AgentService(
            settings=settings,
            db=self.db,
            eventlog=self.eventlog,
            runtime=get_runtime(settings),
            worktrees=WorktreeManager(settings.worktree_base),
            profiles=profiles,
            cluster=self.cluster,
        )
        self.cluster.on(EVENTS_CHANNEL, self._events_elsewhere)
        self.cluster.on(AGENTS_CHANNEL, self.agents.agent_changed)
        self.cluster.on_reconnect(self._resync)
        self.neurons = NeuronService(
            settings.neurons, self.db, self.eventlog, self.bus, self.agents, neurons
        )
        self.keys = ApiKeyService(self.db, settings.auth)
        self.sessions = SessionService(self.db)
        self.tasks = TaskService(self.db, self.agents)
        self.worktrees = WorktreeService(
            settings, self.db, self.agents.worktrees, pool=self.agents.pool
        )
        self.deliveries = DeliveryService(
            self.db, endpoint_changed=self.dispatcher.endpoint_changed
        )
        self.analytics = AnalyticsService(
            self.db,
            agents=self.agents,
            worktrees=self.worktrees,
            max_concurrent=settings.sessions.max_concurrent,
            version=self.version,
            runtime=self.agents.runtime.name,
            started_at=self.started_at,
        )

    async def start(self) -> None:
        await self.db.migrate()
        await self.cluster.start()
        await self.dispatcher.start()
        await self.worktrees.sweep_orphans()
        await self.agents.start()
        log.info(
            "forge %s started (database: %s, runtime: %s)",
            self.version,
            self.db.backend,
            self.agents.runtime.name,
        )

    def begin_shutdown(self) -> None:
        """A stop was asked for: live streams end now, so their clients go and resume elsewhere
        (or after the restart) instead of holding the shutdown up. Idempotent."""
        if not self.bus.closed:
            log.info("shutting down: ending live streams; runners keep running")
        self.bus.close()

    async def stop(self) -> None:
        """Stop background work and write what is known; runners keep running."""
        await self.agents.stop()
        await self.dispatcher.stop()
        await self.cluster.stop()
        await self.db.close()

    def _events_elsewhere(self, payload: str) -> None:
        """`<replica> <agent_id> <last_seq>` from another replica's append: wake this replica's
        subscribers (they read the log) and dispatcher (the append may have written
        deliveries). This replica's own appends woke them already."""
        origin, agent_id, seq = [*payload.split(" "), "", "", ""][:3]
        if origin != self.cluster.replica_id and agent_id and seq.isdigit():
            self.bus.publish(agent_id, int(seq))
            self.dispatcher.wake()

    def _resync(self) -> None:
        self.bus.wake_all()
        self.dispatcher.wake()
        self.agents.resync()

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at
