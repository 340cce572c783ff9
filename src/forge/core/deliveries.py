"""The deliveries service: an agent's webhook deliveries as the API shows them, and redelivery.

Redelivering a delivery also enables its endpoint again (after a `410 Gone` or while its circuit
breaker is open), so every delivery held for that endpoint follows, in order. Neither can be
undone by the dispatcher: the delivery's `generation` is bumped, so an attempt under way is not
recorded over it, and the endpoint's row is written (made if need be) with `enabled_at`, so an
endpoint change the dispatcher decided before is not written over it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import ColumnElement, select

from forge.core.errors import NotFound
from forge.core.schemas import Delivery, DeliveryPage, DeliveryStatus, EndpointStatus
from forge.delivery.outbox import ENDPOINT_DISABLED, PENDING, enable_endpoint
from forge.store.db import Database
from forge.store.tables import AgentRow, DeliveryRow, WebhookEndpointRow


class DeliveryService:
    """Lists deliveries and sends them again. `endpoint_changed(url)` is called once an endpoint
    was enabled again, so the dispatcher reads its state at once (the webhook dispatcher's
    method of that name)."""

    def __init__(self, db: Database, *, endpoint_changed: Callable[[str], None]) -> None:
        self.db = db
        self._endpoint_changed = endpoint_changed

    async def list_deliveries(
        self,
        agent_id: str,
        owner_id: str | None,
        *,
        status: DeliveryStatus | None,
        after: int,
        limit: int,
    ) -> DeliveryPage:
        """The agent's deliveries of events with `seq` greater than `after`, in `seq` order.

        The deliveries of one event (one per endpoint) are never split between pages, so a page
        may hold a few more than `limit`.
        """
        await self._check_agent(agent_id, owner_id)
        conditions: list[ColumnElement[bool]] = [DeliveryRow.agent_id == agent_id]
        if status is not None:
            conditions.append(DeliveryRow.status == status)
        query = (
            select(DeliveryRow, WebhookEndpointRow)
            .outerjoin(WebhookEndpointRow, WebhookEndpointRow.url == DeliveryRow.endpoint_url)
            .order_by(DeliveryRow.seq, DeliveryRow.id)
        )
        async with self.db.read() as session:
            result = await session.execute(
                query.where(*conditions, DeliveryRow.seq > after).limit(limit + 1)
            )
            rows = [(row, endpoint) for row, endpoint in result]
            has_more = len(rows) > limit
            page = rows[:limit]
            if has_more and rows[limit][0].seq == page[-1][0].seq:
                # The rest of the last event's deliveries belong on this page.
                last = page[-1][0]
                result = await session.execute(
                    query.where(*conditions, DeliveryRow.seq == last.seq, DeliveryRow.id > last.id)
                )
                page += [(row, endpoint) for row, endpoint in result]
                later = await session.scalar(
                    select(DeliveryRow.id).where(*conditions, DeliveryRow.seq > last.seq).limit(1)
                )
                has_more = later is not None
        now = time.time()
        return DeliveryPage(
            deliveries=[_delivery_schema(row, endpoint, now) for row, endpoint in page],
            has_more=has_more,
            next_after=page[-1][0].seq if page else after,
        )

    async def redeliver(self, delivery_id: str, owner_id: str | None) -> Delivery:
        """Make the delivery pending again, due now with no attempts, and enable its endpoint."""
        async with self.db.write() as session:
            row = await session.get(DeliveryRow, delivery_id)
            if row is not None and owner_id is not None:
                owner = await session.scalar(
                    select(AgentRow.owner_id).where(AgentRow.id == row.agent_id)
                )
                if owner != owner_id:
                    row = None
            if row is None:
                raise NotFound(f"delivery {delivery_id} not found", code="delivery_not_found")
            now = time.time()
            row.status = PENDING
            row.attempts = 0
            row.next_attempt_at = now
            row.delivered_at = None
            row.generation += 1
            await session.execute(
                enable_endpoint(row.endpoint_url, now, is_sqlite=self.db.is_sqlite)
            )
            answer = _delivery_schema(row, None, now)
        self._endpoint_changed(answer.endpoint_url)
        return answer

    async def _check_agent(self, agent_id: str, owner_id: str | None) -> None:
        """`NotFound` unless the agent exists (deleted ones too) and belongs to `owner_id`."""
        async with self.db.read() as session:
            owner = await session.scalar(select(AgentRow.owner_id).where(AgentRow.id == agent_id))
        if owner is None or (owner_id is not None and owner != owner_id):
            raise NotFound(f"agent {agent_id} not found", code="agent_not_found")


def _delivery_schema(row: DeliveryRow, endpoint: WebhookEndpointRow | None, now: float) -> Delivery:
    endpoint_status: EndpointStatus = "active"
    reason = None
    if endpoint is not None and endpoint.status == ENDPOINT_DISABLED:
        endpoint_status, reason = "disabled", endpoint.disabled_reason
    elif endpoint is not None and endpoint.paused_until is not None and endpoint.paused_until > now:
        endpoint_status = "paused"
    next_attempt_at = None
    if row.status == PENDING and endpoint_status != "disabled":
        when = row.next_attempt_at
        if endpoint_status == "paused" and endpoint is not None and endpoint.paused_until:
            when = max(when, endpoint.paused_until)
        next_attempt_at = datetime.fromtimestamp(when, UTC)
    return Delivery(
        id=row.id,
        event_id=row.event_id,
        agent_id=row.agent_id,
        request_id=row.request_id,
        seq=row.seq,
        endpoint_url=row.endpoint_url,
        status=cast(DeliveryStatus, row.status),
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        next_attempt_at=next_attempt_at,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        endpoint_status=endpoint_status,
        endpoint_disabled_reason=reason,
    )
