"""Requests and responses of the public API (also what a client library would import)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from forge.core.events import Usage

# Identifiers callers choose (owners, request ids, profiles): printable, no spaces, bounded.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"
MAX_MESSAGE_CHARS = 1_000_000
MAX_METADATA_BYTES = 16_384

AgentStatus = Literal["provisioning", "ready", "running", "stopped", "failed"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "interrupted", "timed_out", "error"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


def _check_encodable(text: str) -> None:
    """Refuse lone surrogates ("\ud800" in JSON): they cannot be stored or sent on. Pydantic
    refuses them in `str` fields itself; free-form JSON (metadata) needs this check."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"contains a lone surrogate at position {exc.start}; send valid Unicode text"
        ) from exc


class AgentCreate(_Request):
    """Body of `POST /api/v1/agents`."""

    owner_id: str = Field(pattern=NAME_PATTERN, description="Who the agent belongs to.")
    profile: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Profile name; the default profile if absent.",
    )
    repo: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Absolute path of a local git repository; the agent works in a worktree of it.",
    )
    base_ref: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Branch, tag or commit to start from.",
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="Free-form, returned as given."
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        text = json.dumps(value, ensure_ascii=False)
        _check_encodable(text)
        if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")
        return value


class Agent(BaseModel):
    """An agent as the API shows it."""

    id: str
    owner_id: str
    profile: str
    executor: str
    status: AgentStatus
    repo: str | None = None
    base_ref: str | None = None
    base_commit: str | None = None
    branch: str | None = None
    workspace_path: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    session_id: str | None = Field(default=None, description="The executor's own session id.")
    last_seq: int = 0
    current_request_id: str | None = None
    queued_runs: int = 0
    error: str | None = None
    created_at: datetime
    updated_at: datetime


class AgentList(BaseModel):
    """A page of agents, newest first."""

    agents: list[Agent]
    total: int
    next_cursor: str | None = None


class MessageCreate(_Request):
    """Body of `POST /api/v1/agents/{id}/messages`."""

    content: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)
    webhook_secret: str | None = Field(default=None, min_length=1, max_length=512)
    request_id: str | None = Field(default=None, pattern=NAME_PATTERN)
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first.")


class MessageAccepted(BaseModel):
    """Answer to a message: the run is stored and will be (or is being) executed."""

    request_id: str
    agent_id: str
    status: Literal["processing", "queued"]


class InterruptRequest(_Request):
    """Body of `POST /api/v1/agents/{id}/interrupt` (may be empty)."""

    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)
    request_id: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="The run to stop; the current one if absent.",
    )


class InterruptAccepted(BaseModel):
    status: Literal["interrupting"] = "interrupting"
    agent_id: str
    request_id: str


class Run(BaseModel):
    """One message and its execution."""

    request_id: str
    agent_id: str
    status: RunStatus
    priority: int
    outcome: str | None = None
    usage: Usage | None = None
    error: dict[str, Any] | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class EventPage(BaseModel):
    """A page of an agent's event log."""

    events: list[dict[str, Any]]
    next_after: int = Field(description="Pass as `after` to get the next page.")
    has_more: bool
    last_seq: int


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    uptime_s: float
    database: dict[str, Any]
    agents: dict[str, int]


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str
    message: str
