"""The per-agent event log: gapless `seq`, the webhook outbox written in the same transaction,
and wake-ups for live subscribers (the data itself always comes from the log)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from forge.core import ids
from forge.core.cluster import EVENTS_CHANNEL, notify
from forge.core.events import EventDraft, EventEnvelope
from forge.core.redaction import SecretRedactor
from forge.store.db import Database
from forge.store.tables import AgentRow, DeliveryRow, EventRow, PermissionRow, RunRow, utcnow

# The tables themselves: `append` and `read` use plain (Core) statements, not ORM objects.
_AGENTS = cast(Table, AgentRow.__table__)
_RUNS = cast(Table, RunRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)
_DELIVERIES = cast(Table, DeliveryRow.__table__)
_PERMISSIONS = cast(Table, PermissionRow.__table__)


log = logging.getLogger(__name__)


class StoredEvent(NamedTuple):
    """One row of the log: its `seq`, its `event_type` and the envelope's JSON text."""

    seq: int
    event_type: str
    body: str


@dataclass(frozen=True)
class StoredEventPage:
    """A page of the log as stored; `EventPage` (schemas) is its JSON form."""

    events: list[StoredEvent]
    next_after: int
    has_more: bool
    last_seq: int

    def to_json(self) -> bytes:
        """The `EventPage` JSON, with each event's stored text spliced in as it is."""
        events = ",".join(e.body for e in self.events)
        more = "true" if self.has_more else "false"
        return (
            f'{{"events":[{events}],"next_after":{self.next_after},"has_more":{more},'
            f'"last_seq":{self.last_seq}}}'
        ).encode()


class _Signal:
    """One wake-up of an agent's waiters, with the events that caused it."""

    __slots__ = ("event", "events")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.events: Sequence[StoredEvent] = ()


class EventBus:
    """Tells subscribers that an agent's log grew, handing them the events just committed.

    A subscriber that is caught up gets the new events with the wake-up and needs no read of the
    log; one that is behind (the events do not follow its last `seq`) reads the log, which is
    always the source of truth. Nothing is kept for agents nobody waits on but the latest `seq`.
    """

    def __init__(self) -> None:
        self._signals: dict[str, _Signal] = {}
        self._latest: dict[str, int] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the server is shutting down: live streams should end (clients resume)."""
        return self._closed

    def close(self) -> None:
        """Wake every waiter and make later waits return at once; streams see `closed`."""
        self._closed = True
        for signal in self._signals.values():
            signal.event.set()
        self._signals.clear()

    def publish(self, agent_id: str, last_seq: int, events: Sequence[StoredEvent] = ()) -> None:
        """Say the log of `agent_id` now ends at `last_seq`; `events` are the ones just stored,
        in order (empty when the caller does not have them)."""
        self._latest[agent_id] = max(last_seq, self._latest.get(agent_id, 0))
        signal = self._signals.pop(agent_id, None)
        if signal is not None:
            signal.events = events
            signal.event.set()

    def wake_all(self) -> None:
        """Wake every waiter without events: each reads the log (after announcements from
        other replicas may have been missed)."""
        for agent_id in list(self._signals):
            signal = self._signals.pop(agent_id)
            signal.events = ()
            signal.event.set()

    def latest(self, agent_id: str) -> int | None:
        return self._latest.get(agent_id)

    async def wait_for_events(
        self, agent_id: str, after_seq: int, timeout: float
    ) -> tuple[bool, Sequence[StoredEvent]]:
        """Wait until the log of `agent_id` passes `after_seq` or the bus closes (True), or
        `timeout` ends (False); with the events that woke it when they follow `after_seq`
        without a gap (else empty: read the log from `after_seq`)."""
        if self._closed:
            return True, ()
        latest = self._latest.get(agent_id)
        if latest is not None and latest > after_seq:
            return True, ()
        signal = self._signals.get(agent_id)
        if signal is None:
            signal = self._signals[agent_id] = _Signal()
        try:
            async with asyncio.timeout(timeout):
                await signal.event.wait()
        except TimeoutError:
            return False, ()
        events = signal.events
        if events and events[0].seq == after_seq + 1:
            return True, events
        return True, ()


@dataclass(frozen=True)
class _Endpoint:
    url: str
    secret: str | None


@dataclass
class _RunState:
    """What `append` needs of a run row, and the changes its events make to it."""

    id: int
    started_at: datetime | None
    endpoints: list[_Endpoint]
    # The run has its final event already; nothing more may follow it.
    finished: bool = False
    changes: dict[str, Any] = field(default_factory=dict)


def event_row(
    envelope: EventEnvelope, draft: EventDraft, body: str, created_at: datetime
) -> dict[str, Any]:
    """The `events` row of a sealed event; `body` is the envelope's JSON text."""
    return {
        "id": envelope.event_id,
        "agent_id": envelope.agent_id,
        "seq": envelope.seq,
        "request_id": draft.request_id,
        "event_type": draft.event_type,
        "is_final": envelope.is_final,
        "body": body,
        "created_at": created_at,
    }


class EventLog:
    """Appends events to agents' logs and reads them back.

    Every event passes `append` before anything stores or sends it, so this is where
    configured secrets are cut out of what agents print (`redactor`).
    """

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        *,
        on_outbox: Callable[[], None] | None = None,
        redactor: SecretRedactor | None = None,
        origin: str = "",
    ) -> None:
        self.db = db
        # This replica's id, in its announcements (so it can ignore its own).
        self.origin = origin
        self.bus = bus
        self._on_outbox = on_outbox or (lambda: None)
        self._redactor = redactor if redactor else None

    async def append(
        self, agent_id: str, drafts: list[EventDraft], *, runner_ack: int | None = None
    ) -> list[EventEnvelope]:
        """Store `drafts` in order with the next `seq`s, their deliveries, and what they end.

        Drafts that came from the runner (`runner_seq` > 0) and are at or below the stored
        `runner_ack` were stored before (a replay after reconnecting) and are skipped, so the log
        has each event exactly once. `runner_ack` raises the stored acknowledgement.
        """
        # Plain multi-row statements rather than ORM objects: a batch costs a handful of round
        # trips to the database whatever its size, and no per-row unit-of-work bookkeeping.
        sealed: list[EventEnvelope] = []
        events: list[dict[str, Any]] = []
        deliveries: list[dict[str, Any]] = []
        permissions: list[dict[str, Any]] = []
        async with self.db.write() as session:
            conn = await session.connection()
            request_ids = {d.request_id for d in drafts}
            if self.db.is_sqlite:
                found = await _agent_and_runs(conn, agent_id, request_ids)
            else:
                found = await _lock_agent_then_runs(conn, agent_id, request_ids)
            if found is None:
                return []
            seq, stored_ack, runs = found
            fresh = [d for d in drafts if d.runner_seq == 0 or d.runner_seq > stored_ack]
            now, attempt_at = utcnow(), time.time()
            session_id: str | None = None
            for draft in fresh:
                run = runs.get(draft.request_id) if draft.request_id else None
                if run is not None and run.finished:
                    # E.g. a runner thought lost that comes back: the run already ended, and
                    # its final event must stay its last.
                    log.warning(
                        "dropping %s for finished run %s of %s",
                        draft.event_type,
                        draft.request_id,
                        agent_id,
                    )
                    continue
                seq += 1
                envelope = draft.seal(agent_id=agent_id, seq=seq, event_id=ids.event_id())
                body = json.dumps(envelope.to_wire(), separators=(",", ":"))
                redactor = self._redactor
                if redactor is not None and redactor.found_in_json(body):
                    # Rare: redact the draft itself, so the run's row, the permission asked
                    # and the agent's session id are clean too, not only the stored body.
                    draft = redactor.redact_draft(draft)
                    envelope = draft.seal(agent_id=agent_id, seq=seq, event_id=envelope.event_id)
                    body = json.dumps(envelope.to_wire(), separators=(",", ":"))
                events.append(event_row(envelope, draft, body, now))
                if run is not None:
                    for endpoint in run.endpoints:
                        deliveries.append(
                            {
                                "id": ids.delivery_id(),
                                "event_id": envelope.event_id,
                                "agent_id": agent_id,
                                "request_id": draft.request_id,
                                "seq": seq,
                                "endpoint_url": endpoint.url,
                                "secret": endpoint.secret,
                                "status": "pending",
                                "attempts": 0,
                                "next_attempt_at": attempt_at,
                                "created_at": now,
                            }
                        )
                    _apply_to_run(run, draft, now)
                if draft.session_id:
                    session_id = draft.session_id
                asked = _permission_asked(agent_id, draft, now)
                if asked is not None:
                    permissions.append(asked)
                sealed.append(envelope)
            # The event rows go in before the delivery rows that reference them.
            if events:
                await conn.execute(insert(_EVENTS), events)
            if deliveries:
                await conn.execute(insert(_DELIVERIES), deliveries)
            if permissions:
                await _insert_permissions(conn, permissions)
            ended = [request_id for request_id, run in runs.items() if run.finished]
            if ended:
                # Nothing waits for an answer once the run that asked has ended.
                await conn.execute(
                    update(_PERMISSIONS)
                    .where(
                        _PERMISSIONS.c.agent_id == agent_id,
                        _PERMISSIONS.c.request_id.in_(ended),
                        _PERMISSIONS.c.status == "pending",
                    )
                    .values(status="expired")
                )
            for run in runs.values():
                if run.changes:
                    await conn.execute(
                        update(_RUNS).where(_RUNS.c.id == run.id).values(run.changes)
                    )
            agent_changes: dict[str, Any] = {}
            if sealed:
                agent_changes["last_seq"] = seq
            if session_id:
                agent_changes["executor_session_id"] = session_id
            if runner_ack is not None and runner_ack > stored_ack:
                agent_changes["runner_ack"] = runner_ack
            if agent_changes:
                await conn.execute(
                    update(_AGENTS).where(_AGENTS.c.id == agent_id).values(agent_changes)
                )
            if sealed:
                # Subscribers on the other replicas (sent on commit; PostgreSQL only).
                await notify(conn, EVENTS_CHANNEL, f"{self.origin} {agent_id} {seq}")
        if sealed:
            self.bus.publish(
                agent_id,
                seq,
                [StoredEvent(e["seq"], e["event_type"], e["body"]) for e in events],
            )
        if deliveries:
            self._on_outbox()
        return sealed

    async def read(
        self, agent_id: str, *, after: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Envelopes with `seq` > `after`, oldest first, at most `limit`."""
        return [
            json.loads(event.body)
            for event in await self.read_stored(agent_id, after=after, limit=limit)
        ]

    async def read_stored(
        self, agent_id: str, *, after: int = 0, limit: int = 100
    ) -> list[StoredEvent]:
        """Like `read`, but each envelope as the JSON text it was stored (and sent) as."""
        async with self.db.read() as session:
            conn = await session.connection()
            rows = await conn.execute(
                select(_EVENTS.c.seq, _EVENTS.c.event_type, _EVENTS.c.body)
                .where(_EVENTS.c.agent_id == agent_id, _EVENTS.c.seq > after)
                .order_by(_EVENTS.c.seq)
                .limit(limit)
            )
            return [StoredEvent(seq, event_type, body) for seq, event_type, body in rows]


async def _agent_and_runs(
    conn: AsyncConnection, agent_id: str, request_ids: set[str | None]
) -> tuple[int, int, dict[str, _RunState]] | None:
    """The agent's `last_seq` and `runner_ack` and the runs named in `request_ids`, in one
    query. For SQLite, whose writes are serialised, so nothing changes them before the append
    commits. None if there is no such agent."""
    wanted = sorted(r for r in request_ids if r)
    rows = (
        await conn.execute(
            select(_AGENTS.c.last_seq, _AGENTS.c.runner_ack, *_RUN_COLUMNS)
            .select_from(
                _AGENTS.outerjoin(
                    _RUNS,
                    and_(_RUNS.c.agent_id == _AGENTS.c.id, _RUNS.c.request_id.in_(wanted)),
                )
            )
            .where(_AGENTS.c.id == agent_id)
        )
    ).all()
    if not rows:
        return None
    return rows[0].last_seq, rows[0].runner_ack, _run_states(rows)


async def _lock_agent_then_runs(
    conn: AsyncConnection, agent_id: str, request_ids: set[str | None]
) -> tuple[int, int, dict[str, _RunState]] | None:
    """Like `_agent_and_runs`, for databases where appends run concurrently (PostgreSQL, other
    replicas too): the agent's row is locked until the append commits, so each appender to an
    agent waits for the one before it and reads the `last_seq` it wrote (no duplicate, no gap).

    The runs are read after the lock is held, in a statement of their own: in one joined query
    a waiting appender would get the agent's row as committed but the runs as they were when it
    began to wait, missing a final event just stored (READ COMMITTED re-reads only the locked
    row). None if there is no such agent."""
    agent = (
        await conn.execute(
            select(_AGENTS.c.last_seq, _AGENTS.c.runner_ack)
            .where(_AGENTS.c.id == agent_id)
            .with_for_update()
        )
    ).first()
    if agent is None:
        return None
    wanted = sorted(r for r in request_ids if r)
    runs: dict[str, _RunState] = {}
    if wanted:
        rows = await conn.execute(
            select(*_RUN_COLUMNS).where(
                _RUNS.c.agent_id == agent_id, _RUNS.c.request_id.in_(wanted)
            )
        )
        runs = _run_states(rows.all())
    return agent.last_seq, agent.runner_ack, runs


# What `append` reads of each run its events belong to.
_RUN_COLUMNS = (
    _RUNS.c.id,
    _RUNS.c.request_id,
    _RUNS.c.started_at,
    _RUNS.c.finished_at,
    _RUNS.c.webhook_url,
    _RUNS.c.webhook_secret,
    _RUNS.c.interrupt_webhook_url,
)


def _run_states(rows: Sequence[Any]) -> dict[str, _RunState]:
    return {
        row.request_id: _RunState(
            id=row.id,
            started_at=row.started_at,
            finished=row.finished_at is not None,
            endpoints=_endpoints(row.webhook_url, row.webhook_secret, row.interrupt_webhook_url),
        )
        for row in rows
        if row.id is not None
    }


def _endpoints(
    webhook_url: str | None, secret: str | None, interrupt_webhook_url: str | None
) -> list[_Endpoint]:
    endpoints = []
    if webhook_url:
        endpoints.append(_Endpoint(webhook_url, secret))
    if interrupt_webhook_url and interrupt_webhook_url != webhook_url:
        endpoints.append(_Endpoint(interrupt_webhook_url, secret))
    return endpoints


def _apply_to_run(run: _RunState, draft: EventDraft, now: datetime) -> None:
    """Keep the run's row in step with its events (started, finished, outcome, usage)."""
    changes = run.changes
    if draft.event_type == "agent.status" and draft.status == "running" and run.started_at is None:
        run.started_at = changes["started_at"] = now
    elif draft.event_type == "agent.complete":
        run.finished = True
        changes["status"] = draft.outcome or "failed"
        changes["outcome"] = draft.outcome
        changes["usage"] = draft.usage.model_dump() if draft.usage else None
        changes["finished_at"] = now
    elif draft.event_type == "agent.error":
        run.finished = True
        changes["status"] = "error"
        changes["error"] = draft.error.model_dump() if draft.error else None
        changes["finished_at"] = now


def _permission_asked(agent_id: str, draft: EventDraft, now: datetime) -> dict[str, Any] | None:
    """The permissions row for a `permission_request` entry (None for any other event)."""
    entry = draft.entry
    if entry is None or entry.get("kind") != "permission_request":
        return None
    permission_id = entry.get("permission_id")
    if not isinstance(permission_id, str) or not permission_id:
        return None
    tool, detail = entry.get("tool"), entry.get("detail")
    timeout = entry.get("timeout_seconds")
    expires_at = None
    if isinstance(timeout, int | float) and 0 < timeout < 10**7:
        expires_at = now + timedelta(seconds=float(timeout))
    return {
        "id": permission_id[:64],
        "agent_id": agent_id,
        "request_id": draft.request_id,
        "tool": tool[:255] if isinstance(tool, str) else None,
        "detail": detail if isinstance(detail, str) else None,
        "status": "pending",
        "created_at": now,
        "expires_at": expires_at,
    }


async def _insert_permissions(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert permission rows, skipping ids already stored (a command executor may print the
    same entry twice; a duplicate must not fail the whole append, which would wedge the run)."""
    unique = list({row["id"]: row for row in rows}.values())
    taken = set(
        await conn.scalars(
            select(_PERMISSIONS.c.id).where(_PERMISSIONS.c.id.in_([r["id"] for r in unique]))
        )
    )
    fresh = [row for row in unique if row["id"] not in taken]
    if fresh:
        await conn.execute(insert(_PERMISSIONS), fresh)
