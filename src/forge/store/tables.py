"""The tables Forge keeps. Changes here need a migration in `store/migrations/versions/`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite has no time zones), always returned aware in UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UTCDateTime}


class AgentRow(Base):
    """One agent: its workspace, its sandbox and the counters of its event log."""

    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(128), index=True)
    profile: Mapped[str] = mapped_column(String(128))
    executor: Mapped[str] = mapped_column(String(64))
    # Set when the agent was created with `executor` + `variant` instead of a profile.
    variant: Mapped[str | None] = mapped_column(String(64))
    # The model for the next runs when changed from the profile's (`PATCH .../agents/{id}`).
    model: Mapped[str | None] = mapped_column(String(256))
    # provisioning | ready | running | stopped | failed
    status: Mapped[str] = mapped_column(String(32), index=True)
    repo: Mapped[str | None] = mapped_column(Text)
    base_ref: Mapped[str | None] = mapped_column(String(256))
    base_commit: Mapped[str | None] = mapped_column(String(64))
    branch: Mapped[str | None] = mapped_column(String(256))
    workspace_path: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # The executor's own conversation id, to continue it on the next message.
    executor_session_id: Mapped[str | None] = mapped_column(String(256))
    # Highest `seq` in this agent's event log.
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    # Highest runner_seq stored from the current runner (what the runner may forget).
    runner_ack: Mapped[int] = mapped_column(Integer, default=0)
    # What the runtime needs to find the sandbox again (address, pid, ...).
    sandbox: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The replica supervising the agent's runner (and running its runs) until `lease_expires_at`;
    # it renews the lease while alive. None: no one (stopped, failed, or released on shutdown).
    lease_owner: Mapped[str | None] = mapped_column(String(128), index=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RunRow(Base):
    """One message to an agent and everything done in answer. The table is the queue."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("agent_id", "request_id", name="uq_runs_agent_request"),
        Index("ix_runs_queue", "status", "priority", "created_at"),
        # Analytics: runs by when they were made, and by when they ran.
        Index("ix_runs_created_at", "created_at"),
        Index("ix_runs_started_at", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    request_id: Mapped[str] = mapped_column(String(128))
    owner_id: Mapped[str] = mapped_column(String(128))
    prompt: Mapped[str] = mapped_column(Text)
    # Hash of the request body, so a retried request is recognised and a different one refused.
    body_hash: Mapped[str] = mapped_column(String(64))
    # queued | running | succeeded | failed | interrupted | timed_out | error
    status: Mapped[str] = mapped_column(String(32))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str | None] = mapped_column(Text)
    # Set by an interrupt request that names its own webhook: the rest of the run goes there too.
    interrupt_webhook_url: Mapped[str | None] = mapped_column(Text)
    interrupt_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[str | None] = mapped_column(String(32))
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EventRow(Base):
    """One entry of an agent's append-only event log. `body` is the envelope as sent."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("agent_id", "seq", name="uq_events_agent_seq"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"))
    seq: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    event_type: Mapped[str] = mapped_column(String(32))
    is_final: Mapped[bool] = mapped_column(Boolean, default=False)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeliveryRow(Base):
    """The webhook outbox: one row per (event, endpoint), written with the event."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_stream", "endpoint_url", "agent_id", "seq"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id"), index=True)
    agent_id: Mapped[str] = mapped_column(String(64), index=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(Integer)
    endpoint_url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(Text)
    # pending | delivered | failed (refused for good) | exhausted (retries used up)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Seconds since the epoch; Float keeps ordering simple on every database.
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Bumped by each redelivery. An attempt's outcome is recorded only if the generation is still
    # the one it was sent in, so an attempt under way cannot undo a redelivery.
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class WebhookEndpointRow(Base):
    """The health of one webhook URL, across all its agents: disabled (410 Gone) or paused by the
    circuit breaker. A row is made on the endpoint's first failure or a redelivery; no row means
    healthy. Rows that are healthy again, or idle, are deleted by the dispatcher after a while."""

    __tablename__ = "webhook_endpoints"
    # The dispatcher reads the rows changed since its last read every second.
    __table_args__ = (Index("ix_webhook_endpoints_updated", "updated_at"),)

    url: Mapped[str] = mapped_column(Text, primary_key=True)
    # active | disabled (answered 410 Gone; its deliveries wait for a redelivery to enable it)
    status: Mapped[str] = mapped_column(String(16), default="active")
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Retryable failures in a row; the circuit breaker opens at `circuit_failure_threshold`.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    # Seconds since the epoch until which nothing is sent (the breaker is open); once past, one
    # probe is sent. None: the breaker is closed.
    paused_until: Mapped[float | None] = mapped_column(Float)
    # Seconds since the epoch of the last redelivery that enabled the endpoint (0: none). A change
    # the dispatcher decided on an attempt begun before then is not written over it.
    enabled_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AttachmentRow(Base):
    """A file sent with a message, kept until its run is dispatched (and after, for the record)."""

    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"))
    request_id: Mapped[str] = mapped_column(String(128))
    # Order within the message.
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_attachments_run", "agent_id", "request_id"),)


class PermissionRow(Base):
    """A tool call waiting for the user's approval (`permission_mode = "ask"`), and the answer."""

    __tablename__ = "permissions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    tool: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[str | None] = mapped_column(Text)
    # pending | answered | expired (its run ended, or nobody answered in time)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # once | always | reject
    decision: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the agent stops waiting (the request's timeout); None: when its run ends.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TaskRow(Base):
    """A task: a titled piece of work that made a session (an agent) and queued its first run."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(128), index=True)
    title: Mapped[str] = mapped_column(String(256))
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    # The first run's request id.
    request_id: Mapped[str] = mapped_column(String(128))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKeyRow(Base):
    """An owner's API key. Only a hash of its secret is kept; the key is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    # SHA-256 of the secret part, hex. The secret is 256 random bits, so a fast hash suffices.
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class NeuronRow(Base):
    """Which agent a neuron is for one owner and project: made on first use, kept after."""

    __tablename__ = "neurons"

    owner_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # The repository the neuron works in ("" for none).
    project: Mapped[str] = mapped_column(String(1024), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
