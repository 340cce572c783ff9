"""The event envelope: the one shape of every event in webhooks, streams, history, transcripts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["agent.event", "agent.status", "agent.error", "agent.complete"]
Outcome = Literal["succeeded", "failed", "interrupted", "timed_out"]

ENTRY_KINDS = frozenset(
    {
        "user_message",
        "assistant_message",
        "thinking",
        "tool_call",
        "permission_request",
        "todo",
        "usage",
        "system",
        "error",
    }
)
FINAL_EVENT_TYPES = frozenset({"agent.complete", "agent.error"})


class Usage(BaseModel):
    """Tokens and money a run used."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0


class ErrorInfo(BaseModel):
    """What went wrong in an `agent.error` event."""

    code: str
    message: str
    recoverable: bool = False


class EventEnvelope(BaseModel):
    """One event as callers see it. Fields that do not apply to an event type are omitted."""

    model_config = ConfigDict(extra="allow")

    event_type: EventType
    event_id: str
    agent_id: str
    request_id: str | None = None
    session_id: str | None = None
    seq: int
    timestamp: str
    is_final: bool = False
    executor: str | None = None
    executor_event_type: str | None = None
    event: Any = None
    entry: dict[str, Any] | None = None
    # agent.status
    status: str | None = None
    # agent.complete
    outcome: Outcome | None = None
    success: bool | None = None
    usage: Usage | None = None
    # agent.error
    error: ErrorInfo | None = None
    # agent.complete / agent.error: a sentence for humans (exit status, cause).
    message: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent to callers (no null fields that belong to other event types)."""
        data = self.model_dump(mode="json", exclude_none=True)
        # These are part of every envelope, even when empty.
        for key in (
            "request_id",
            "session_id",
            "executor",
            "executor_event_type",
            "event",
            "entry",
        ):
            data.setdefault(key, None)
        return data


class EventDraft(BaseModel):
    """An event before it is in the log: everything except the fields the log assigns."""

    event_type: EventType
    request_id: str | None = None
    session_id: str | None = None
    timestamp: str = Field(default_factory=lambda: utc_timestamp())
    executor: str | None = None
    executor_event_type: str | None = None
    event: Any = None
    entry: dict[str, Any] | None = None
    status: str | None = None
    outcome: Outcome | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    message: str | None = None
    # The runner's sequence number of the message this came from (0: made by the platform).
    runner_seq: int = 0

    @property
    def is_final(self) -> bool:
        return self.event_type in FINAL_EVENT_TYPES

    def seal(self, *, agent_id: str, seq: int, event_id: str) -> EventEnvelope:
        """The envelope this draft becomes once the log has given it a `seq`."""
        extra: dict[str, Any] = {}
        if self.executor == "opencode":
            # The original Go Forge webhooks carried this name; kept for its consumers.
            extra["opencode_event_type"] = self.executor_event_type
        success = None
        if self.event_type == "agent.complete":
            success = self.outcome == "succeeded"
        elif self.event_type == "agent.error":
            success = False
        return EventEnvelope(
            event_type=self.event_type,
            event_id=event_id,
            agent_id=agent_id,
            request_id=self.request_id,
            session_id=self.session_id,
            seq=seq,
            timestamp=self.timestamp,
            is_final=self.is_final,
            executor=self.executor,
            executor_event_type=self.executor_event_type,
            event=self.event,
            entry=self.entry,
            status=self.status,
            outcome=self.outcome,
            success=success,
            usage=self.usage if self.event_type == "agent.complete" else None,
            error=self.error,
            message=self.message,
            **extra,
        )


def utc_timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 UTC with milliseconds and a `Z`, as in every envelope."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    # isoformat is several times cheaper than strftime; "+00:00" becomes "Z".
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"
