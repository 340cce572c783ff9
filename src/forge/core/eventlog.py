"""The per-agent event log: gapless `seq`, the webhook outbox written in the same transaction,
and wake-ups for live subscribers (the data itself always comes from the log)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from forge.core import ids
from forge.core.events import EventDraft, EventEnvelope
from forge.store.db import Database
from forge.store.tables import AgentRow, DeliveryRow, EventRow, RunRow, utcnow


class EventBus:
    """Tells subscribers that an agent's log grew. Cheap to publish; waiters re-read the log."""

    def __init__(self) -> None:
        self._signals: dict[str, asyncio.Event] = {}
        self._latest: dict[str, int] = {}

    def publish(self, agent_id: str, last_seq: int) -> None:
        self._latest[agent_id] = max(last_seq, self._latest.get(agent_id, 0))
        signal = self._signals.pop(agent_id, None)
        if signal is not None:
            signal.set()

    def latest(self, agent_id: str) -> int | None:
        return self._latest.get(agent_id)

    async def wait(self, agent_id: str, after_seq: int, timeout: float) -> bool:
        """Wait until the log of `agent_id` passes `after_seq` (True) or `timeout` ends (False)."""
        signal = self._signals.setdefault(agent_id, asyncio.Event())
        latest = self._latest.get(agent_id)
        if latest is not None and latest > after_seq:
            return True
        try:
            await asyncio.wait_for(signal.wait(), timeout)
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True)
class _Endpoint:
    url: str
    secret: str | None


class EventLog:
    """Appends events to agents' logs and reads them back."""

    def __init__(
        self, db: Database, bus: EventBus, *, on_outbox: Callable[[], None] | None = None
    ) -> None:
        self.db = db
        self.bus = bus
        self._on_outbox = on_outbox or (lambda: None)

    async def append(
        self, agent_id: str, drafts: list[EventDraft], *, runner_ack: int | None = None
    ) -> list[EventEnvelope]:
        """Store `drafts` in order with the next `seq`s, their deliveries, and what they end.

        Drafts that came from the runner (`runner_seq` > 0) and are at or below the stored
        `runner_ack` were stored before (a replay after reconnecting) and are skipped, so the log
        has each event exactly once. `runner_ack` raises the stored acknowledgement.
        """
        sealed: list[EventEnvelope] = []
        deliveries: list[DeliveryRow] = []
        async with self.db.write() as session:
            agent = await session.get(AgentRow, agent_id)
            if agent is None:
                return []
            stored_ack = agent.runner_ack
            fresh = [d for d in drafts if d.runner_seq == 0 or d.runner_seq > stored_ack]
            runs = await self._runs_for(session, agent_id, fresh)
            seq = agent.last_seq
            for draft in fresh:
                seq += 1
                envelope = draft.seal(agent_id=agent_id, seq=seq, event_id=ids.event_id())
                body = json.dumps(envelope.to_wire(), separators=(",", ":"))
                session.add(
                    EventRow(
                        id=envelope.event_id,
                        agent_id=agent_id,
                        seq=seq,
                        request_id=draft.request_id,
                        event_type=draft.event_type,
                        is_final=envelope.is_final,
                        body=body,
                    )
                )
                run = runs.get(draft.request_id) if draft.request_id else None
                if run is not None:
                    for endpoint in _endpoints(run):
                        deliveries.append(
                            DeliveryRow(
                                id=ids.delivery_id(),
                                event_id=envelope.event_id,
                                agent_id=agent_id,
                                request_id=draft.request_id,
                                seq=seq,
                                endpoint_url=endpoint.url,
                                secret=endpoint.secret,
                                status="pending",
                                attempts=0,
                                next_attempt_at=time.time(),
                            )
                        )
                    _apply_to_run(run, draft)
                if draft.session_id:
                    agent.executor_session_id = draft.session_id
                sealed.append(envelope)
            agent.last_seq = seq
            if runner_ack is not None and runner_ack > stored_ack:
                agent.runner_ack = runner_ack
            # The event rows go in before the delivery rows that reference them.
            await session.flush()
            session.add_all(deliveries)
        if sealed:
            self.bus.publish(agent_id, seq)
        if deliveries:
            self._on_outbox()
        return sealed

    async def read(
        self, agent_id: str, *, after: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Envelopes with `seq` > `after`, oldest first, at most `limit`."""
        async with self.db.read() as session:
            rows = await session.scalars(
                select(EventRow.body)
                .where(EventRow.agent_id == agent_id, EventRow.seq > after)
                .order_by(EventRow.seq)
                .limit(limit)
            )
            return [json.loads(body) for body in rows]

    async def _runs_for(
        self, session: Any, agent_id: str, drafts: list[EventDraft]
    ) -> dict[str, RunRow]:
        request_ids = {d.request_id for d in drafts if d.request_id}
        if not request_ids:
            return {}
        rows = await session.scalars(
            select(RunRow).where(RunRow.agent_id == agent_id, RunRow.request_id.in_(request_ids))
        )
        return {row.request_id: row for row in rows}


def _endpoints(run: RunRow) -> list[_Endpoint]:
    endpoints = []
    if run.webhook_url:
        endpoints.append(_Endpoint(run.webhook_url, run.webhook_secret))
    if run.interrupt_webhook_url and run.interrupt_webhook_url != run.webhook_url:
        endpoints.append(_Endpoint(run.interrupt_webhook_url, run.webhook_secret))
    return endpoints


def _apply_to_run(run: RunRow, draft: EventDraft) -> None:
    """Keep the run's row in step with its events (started, finished, outcome, usage)."""
    now = utcnow()
    if draft.event_type == "agent.status" and draft.status == "running" and run.started_at is None:
        run.started_at = now
    elif draft.event_type == "agent.complete":
        run.status = draft.outcome or "failed"
        run.outcome = draft.outcome
        run.usage = draft.usage.model_dump() if draft.usage else None
        run.finished_at = now
    elif draft.event_type == "agent.error":
        run.status = "error"
        run.error = draft.error.model_dump() if draft.error else None
        run.finished_at = now


async def reset_runner_ack(db: Database, agent_id: str) -> None:
    """A new runner numbers its messages from 1 again."""
    async with db.write() as session:
        await session.execute(update(AgentRow).where(AgentRow.id == agent_id).values(runner_ack=0))
