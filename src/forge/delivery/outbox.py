"""The dispatcher's SQL: reading due deliveries from the `deliveries` outbox and recording attempts.

A stream is one (endpoint_url, agent_id) pair; its deliveries go in `seq` order, so only the
lowest pending delivery of each stream (its head) can be due. All reads here are batched: one query
finds the heads of many streams, one query loads the next deliveries of one stream.

The health of endpoints (`webhook_endpoints`: disabled, or paused by the circuit breaker) is read
and written here too: the heads query leaves out the streams of held endpoints, and endpoint
changes are written in the same transaction as the attempts that caused them.

Redelivery races with attempts under way. Two columns keep a redelivery from being undone: a
delivery's `generation`, bumped by each redelivery, must still match for an attempt's outcome to
be recorded; an endpoint's `enabled_at`, set by each redelivery, must not be later than the start
of the attempt behind an endpoint change for that change to be written.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Executable,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
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
    generation: int = 0
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
    """What one attempt changes in its delivery row. It is recorded only while the row is
    pending and still in `generation` (no redelivery since the attempt was loaded)."""

    id: str
    status: str
    attempts: int
    next_attempt_at: float
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None = None
    generation: int = 0
    # The answer's Retry-After in seconds, if honoured (not stored: the breaker's pause uses it).
    retry_after: float | None = None


@dataclass(slots=True, frozen=True)
class EndpointRecord:
    """The state of one endpoint as written to (or read from) `webhook_endpoints`.

    `enabled_at` is read from the table (the last redelivery that enabled it). `observed_at` goes
    with a write: when the attempt behind the change began; the change is not written over an
    enable made after that.
    """

    url: str
    status: str
    disabled_reason: str | None
    disabled_at: datetime | None
    consecutive_failures: int
    paused_until: float | None
    enabled_at: float = 0.0
    observed_at: float = 0.0


_DELIVERY_COLUMNS = (
    DeliveryRow.id,
    DeliveryRow.event_id,
    DeliveryRow.agent_id,
    DeliveryRow.endpoint_url,
    DeliveryRow.seq,
    DeliveryRow.secret,
    DeliveryRow.attempts,
    DeliveryRow.next_attempt_at,
    DeliveryRow.generation,
)

# Only rows still pending in the same generation are changed, so a row redelivered while its
# attempt was under way (or cancelled meanwhile) is left alone.
_RECORD_ATTEMPT = (
    update(_deliveries)
    .where(
        _deliveries.c.id == bindparam("b_id"),
        _deliveries.c.status == PENDING,
        _deliveries.c.generation == bindparam("b_generation"),
    )
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
        generation=row.generation,
        body=body,
    )


def _endpoint(row: WebhookEndpointRow) -> EndpointRecord:
    return EndpointRecord(
        url=row.url,
        status=row.status,
        disabled_reason=row.disabled_reason,
        disabled_at=row.disabled_at,
        consecutive_failures=row.consecutive_failures,
        paused_until=row.paused_until,
        enabled_at=row.enabled_at,
    )


class Outbox:
    """Reads and updates the `deliveries` table for the dispatcher."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._upsert_endpoints = _upsert_endpoints(db.is_sqlite)

    async def heads(
        self,
        limit: int,
        now: float,
        *,
        skip_urls: Collection[str] = (),
        per_endpoint: int | None = None,
        pauses: bool = True,
    ) -> list[StreamHead]:
        """Up to `limit` stream heads, earliest `next_attempt_at` first (due or not).

        Left out: endpoints the table says are disabled, or paused at `now` (unless `pauses` is
        False: the breaker is off), and the `skip_urls` (held or half-open in the dispatcher's
        memory). With `per_endpoint`, at most that many heads of one endpoint are returned, so
        an endpoint with a large backlog cannot fill the batch and hide the others.
        """
        held_rule = WebhookEndpointRow.status == ENDPOINT_DISABLED
        if pauses:
            held_rule = or_(held_rule, WebhookEndpointRow.paused_until > now)
        conditions = [
            DeliveryRow.status == PENDING,
            DeliveryRow.endpoint_url.not_in(select(WebhookEndpointRow.url).where(held_rule)),
        ]
        if skip_urls:
            conditions.append(DeliveryRow.endpoint_url.not_in(list(skip_urls)))
        return await self._heads(conditions, limit, per_endpoint)

    async def heads_of(self, url: str, limit: int) -> list[StreamHead]:
        """Up to `limit` heads of the streams to `url`, earliest `next_attempt_at` first: the
        candidates for the one probe of a half-open endpoint."""
        conditions = [DeliveryRow.status == PENDING, DeliveryRow.endpoint_url == url]
        return await self._heads(conditions, limit, None)

    async def _heads(
        self, conditions: list[Any], limit: int, per_endpoint: int | None
    ) -> list[StreamHead]:
        groups = (
            select(
                DeliveryRow.endpoint_url,
                DeliveryRow.agent_id,
                func.min(DeliveryRow.seq).label("head_seq"),
                func.count().label("pending"),
            )
            .where(*conditions)
            .group_by(DeliveryRow.endpoint_url, DeliveryRow.agent_id)
            .subquery()
        )
        columns: list[Any] = [*_DELIVERY_COLUMNS, groups.c.pending]
        if per_endpoint is not None:
            columns.append(
                func.row_number()
                .over(
                    partition_by=DeliveryRow.endpoint_url,
                    order_by=(DeliveryRow.next_attempt_at, DeliveryRow.id),
                )
                .label("rank")
            )
        joined = (
            select(*columns)
            .join(
                groups,
                and_(
                    DeliveryRow.endpoint_url == groups.c.endpoint_url,
                    DeliveryRow.agent_id == groups.c.agent_id,
                    DeliveryRow.seq == groups.c.head_seq,
                ),
            )
            .where(DeliveryRow.status == PENDING)
        )
        if per_endpoint is None:
            stmt = joined.order_by(DeliveryRow.next_attempt_at, DeliveryRow.id).limit(limit)
        else:
            ranked = joined.subquery()
            stmt = (
                select(ranked)
                .where(ranked.c.rank <= per_endpoint)
                .order_by(ranked.c.next_attempt_at, ranked.c.id)
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
        """Every endpoint the table says is disabled, paused or failing."""
        stmt = select(WebhookEndpointRow).where(
            or_(
                WebhookEndpointRow.status != ENDPOINT_ACTIVE,
                WebhookEndpointRow.paused_until.is_not(None),
                WebhookEndpointRow.consecutive_failures > 0,
            )
        )
        async with self._db.read() as session:
            rows = (await session.scalars(stmt)).all()
        return [_endpoint(row) for row in rows]

    async def endpoints_changed_since(self, since: datetime) -> list[EndpointRecord]:
        """The endpoints whose row was written at or after `since`, healthy ones included (an
        index on `updated_at` keeps this cheap however many rows there are)."""
        stmt = select(WebhookEndpointRow).where(WebhookEndpointRow.updated_at >= since)
        async with self._db.read() as session:
            rows = (await session.scalars(stmt)).all()
        return [_endpoint(row) for row in rows]

    async def delete_idle_endpoints(self, now: float, written_before: datetime) -> int:
        """Delete the rows, last written before `written_before`, that no longer hold anything
        back: active and healthy, or active with the pause over and no pending deliveries.
        Returns how many were deleted."""
        no_pending = ~exists().where(
            DeliveryRow.endpoint_url == WebhookEndpointRow.url, DeliveryRow.status == PENDING
        )
        stmt = delete(WebhookEndpointRow).where(
            WebhookEndpointRow.status == ENDPOINT_ACTIVE,
            WebhookEndpointRow.updated_at < written_before,
            or_(
                and_(
                    WebhookEndpointRow.consecutive_failures == 0,
                    WebhookEndpointRow.paused_until.is_(None),
                ),
                and_(
                    or_(
                        WebhookEndpointRow.paused_until.is_(None),
                        WebhookEndpointRow.paused_until < now,
                    ),
                    no_pending,
                ),
            ),
        )
        async with self._db.write() as session:
            result = await session.execute(stmt)
        return int(getattr(result, "rowcount", 0) or 0)

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
                "b_generation": r.generation,
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


def _insert(is_sqlite: bool) -> Any:
    return sqlite.insert(_endpoints) if is_sqlite else postgresql.insert(_endpoints)


def _upsert_endpoints(is_sqlite: bool) -> Any:
    """INSERT ... ON CONFLICT (url) DO UPDATE, in the dialect's own syntax, that leaves alone a
    row enabled by a redelivery after the attempt behind the change began (`b_observed_at`)."""
    stmt = _insert(is_sqlite)
    columns = [c.name for c in _endpoints.columns if c.name not in ("url", "enabled_at")]
    return stmt.on_conflict_do_update(
        index_elements=[_endpoints.c.url],
        set_={name: stmt.excluded[name] for name in columns},
        where=_endpoints.c.enabled_at <= bindparam("b_observed_at"),
    )


def _values(endpoint: EndpointRecord) -> dict[str, Any]:
    return {
        "url": endpoint.url,
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": endpoint.disabled_at,
        "consecutive_failures": endpoint.consecutive_failures,
        "paused_until": endpoint.paused_until,
        "enabled_at": 0.0,
        "updated_at": utcnow(),
        "b_observed_at": endpoint.observed_at,
    }


def enable_endpoint(url: str, now: float, *, is_sqlite: bool) -> Executable:
    """The statement that enables `url` again for a redelivery: active, no failures, not paused,
    `enabled_at = now`. It makes the row if there is none, so a change the dispatcher decided
    earlier and has not written yet cannot disable or pause the endpoint again."""
    values = {
        "url": url,
        "status": ENDPOINT_ACTIVE,
        "disabled_reason": None,
        "disabled_at": None,
        "consecutive_failures": 0,
        "paused_until": None,
        "enabled_at": now,
        "updated_at": datetime.fromtimestamp(now, UTC),
    }
    stmt = _insert(is_sqlite).values(values)
    upsert: Executable = stmt.on_conflict_do_update(
        index_elements=[_endpoints.c.url],
        set_={name: stmt.excluded[name] for name in values if name != "url"},
    )
    return upsert
