"""The dispatcher's SQL: reading due deliveries from the `deliveries` outbox and recording attempts.

A stream is one (endpoint_url, agent_id) pair; its deliveries go in `seq` order, so only the
lowest pending delivery of each stream (its head) can be due. All reads here are batched: one query
finds the heads of many streams, one query loads the next deliveries of one stream.

The health of endpoints (`webhook_endpoints`: disabled, or paused by the circuit breaker) is read
and written here too: the heads query leaves out the streams of held endpoints, and endpoint
changes are written in the same transaction as the attempts that caused them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from forge.store.db import Database
from forge.store.tables import DeliveryRow, EventRow, WebhookEndpointRow, utcnow

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
EXHAUSTED = "exhausted"
# Endpoint statuses (`webhook_endpoints.status`).
ENDPOINT_ACTIVE = "active"
ENDPOINT_DISABLED = "disabled"

StreamKey = tuple[str, str]  # (endpoint_url, agent_id)

_deliveries = cast(Table, DeliveryRow.__table__)
_endpoints = cast(Table, WebhookEndpointRow.__table__)


@dataclass(slots=True)
class PendingDelivery:
    """One pending delivery as the dispatcher needs it. `body` is the event's JSON text."""

    id: str
    event_id: str
    agent_id: str
    endpoint_url: str
    seq: int
    secret: str | None
    attempts: int
    next_attempt_at: float
    body: str | None = None

    @property
    def stream(self) -> StreamKey:
        return (self.endpoint_url, self.agent_id)


@dataclass(slots=True)
class StreamHead:
    """The lowest pending delivery of a stream and how many are pending in that stream."""

    delivery: PendingDelivery
    pending: int


@dataclass(slots=True, frozen=True)
class AttemptRecord:
    """What one attempt changes in its delivery row."""

    id: str
    status: str
    attempts: int
    next_attempt_at: float
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None = None


@dataclass(slots=True, frozen=True)
class EndpointRecord:
    """The state of one endpoint as written to (or read from) `webhook_endpoints`."""

    url: str
    status: str
    disabled_reason: str | None
    disabled_at: datetime | None
    consecutive_failures: int
    paused_until: float | None


_DELIVERY_COLUMNS = (
    DeliveryRow.id,
    DeliveryRow.event_id,
    DeliveryRow.agent_id,
    DeliveryRow.endpoint_url,
    DeliveryRow.seq,
    DeliveryRow.secret,
    DeliveryRow.attempts,
    DeliveryRow.next_attempt_at,
)

# Only rows still pending are changed, so a row reset or cancelled meanwhile is left alone.
_RECORD_ATTEMPT = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("b_id"), _deliveries.c.status == PENDING)
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        next_attempt_at=bindparam("b_next_attempt_at"),
        last_status_code=bindparam("b_last_status_code"),
        last_error=bindparam("b_last_error"),
        delivered_at=bindparam("b_delivered_at"),
    )
)


def _delivery(row: Any, body: str | None = None) -> PendingDelivery:
    return PendingDelivery(
        id=row.id,
        event_id=row.event_id,
        agent_id=row.agent_id,
        endpoint_url=row.endpoint_url,
        seq=row.seq,
        secret=row.secret,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        body=body,
    )


class Outbox:
    """Reads and updates the `deliveries` table for the dispatcher."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._upsert_endpoints = _upsert_endpoints(db.is_sqlite)

    async def heads(self, limit: int, now: float) -> list[StreamHead]:
        """Up to `limit` stream heads, earliest `next_attempt_at` first (due or not), leaving out
        endpoints the table says are disabled or paused at `now` (their rows wait)."""
        held = select(WebhookEndpointRow.url).where(
            or_(
                WebhookEndpointRow.status == ENDPOINT_DISABLED,
                WebhookEndpointRow.paused_until > now,
            )
        )
        groups = (
            select(
                DeliveryRow.endpoint_url,
                DeliveryRow.agent_id,
                func.min(DeliveryRow.seq).label("head_seq"),
                func.count().label("pending"),
            )
            .where(DeliveryRow.status == PENDING, DeliveryRow.endpoint_url.not_in(held))
            .group_by(DeliveryRow.endpoint_url, DeliveryRow.agent_id)
            .subquery()
        )
        stmt = (
            select(*_DELIVERY_COLUMNS, groups.c.pending)
            .join(
                groups,
                and_(
                    DeliveryRow.endpoint_url == groups.c.endpoint_url,
                    DeliveryRow.agent_id == groups.c.agent_id,
                    DeliveryRow.seq == groups.c.head_seq,
                ),
            )
            .where(DeliveryRow.status == PENDING)
            .order_by(DeliveryRow.next_attempt_at, DeliveryRow.id)
            .limit(limit)
        )
        async with self._db.read() as session:
            rows = (await session.execute(stmt)).all()
        return [StreamHead(_delivery(row), row.pending) for row in rows]

    async def load_bodies(self, deliveries: list[PendingDelivery]) -> None:
        """Fill in `body` from the events table; a missing event leaves it None."""
        if not deliveries:
            return
        event_ids = {d.event_id for d in deliveries}
        async with self._db.read() as session:
            rows = await session.execute(
                select(EventRow.id, EventRow.body).where(EventRow.id.in_(event_ids))
            )
            bodies = {row.id: row.body for row in rows}
        for delivery in deliveries:
            delivery.body = bodies.get(delivery.event_id)

    async def next_in_stream(
        self, stream: StreamKey, after: tuple[int, str], limit: int
    ) -> list[PendingDelivery]:
        """Pending deliveries of `stream` after (seq, id) `after`, in order, with their bodies."""
        endpoint_url, agent_id = stream
        seq, delivery_id = after
        stmt = (
            select(*_DELIVERY_COLUMNS, EventRow.body)
            .outerjoin(EventRow, EventRow.id == DeliveryRow.event_id)
            .where(
                DeliveryRow.endpoint_url == endpoint_url,
                DeliveryRow.agent_id == agent_id,
                DeliveryRow.status == PENDING,
                or_(
                    DeliveryRow.seq > seq,
                    and_(DeliveryRow.seq == seq, DeliveryRow.id > delivery_id),
                ),
            )
            .order_by(DeliveryRow.seq, DeliveryRow.id)
            .limit(limit)
        )
        async with self._db.read() as session:
            rows = (await session.execute(stmt)).all()
        return [_delivery(row, row.body) for row in rows]

    async def unhealthy_endpoints(self) -> list[EndpointRecord]:
        """Every endpoint the table says is disabled, paused or failing (a few, normally)."""
        stmt = select(WebhookEndpointRow).where(
            or_(
                WebhookEndpointRow.status != ENDPOINT_ACTIVE,
                WebhookEndpointRow.paused_until.is_not(None),
                WebhookEndpointRow.consecutive_failures > 0,
            )
        )
        async with self._db.read() as session:
            rows = (await session.scalars(stmt)).all()
        return [
            EndpointRecord(
                url=row.url,
                status=row.status,
                disabled_reason=row.disabled_reason,
                disabled_at=row.disabled_at,
                consecutive_failures=row.consecutive_failures,
                paused_until=row.paused_until,
            )
            for row in rows
        ]

    async def record(
        self, records: list[AttemptRecord], endpoints: list[EndpointRecord] | None = None
    ) -> None:
        """Write the outcome of many attempts, and the endpoint changes they caused, in one
        short transaction."""
        if not records and not endpoints:
            return
        params = [
            {
                "b_id": r.id,
                "b_status": r.status,
                "b_attempts": r.attempts,
                "b_next_attempt_at": r.next_attempt_at,
                "b_last_status_code": r.last_status_code,
                "b_last_error": r.last_error,
                "b_delivered_at": r.delivered_at,
            }
            for r in records
        ]
        async with self._db.write() as session:
            if params:
                await session.execute(_RECORD_ATTEMPT, params)
            if endpoints:
                # The latest state of each endpoint is enough.
                latest = {e.url: e for e in endpoints}
                await session.execute(self._upsert_endpoints, [_values(e) for e in latest.values()])


def _upsert_endpoints(is_sqlite: bool) -> Any:
    """INSERT ... ON CONFLICT (url) DO UPDATE, in the dialect's own syntax."""
    insert = sqlite.insert if is_sqlite else postgresql.insert
    stmt = insert(_endpoints)
    columns = [c.name for c in _endpoints.columns if c.name != "url"]
    return stmt.on_conflict_do_update(
        index_elements=[_endpoints.c.url],
        set_={name: stmt.excluded[name] for name in columns},
    )


def _values(endpoint: EndpointRecord) -> dict[str, Any]:
    return {
        "url": endpoint.url,
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": endpoint.disabled_at,
        "consecutive_failures": endpoint.consecutive_failures,
        "paused_until": endpoint.paused_until,
        "updated_at": utcnow(),
    }
