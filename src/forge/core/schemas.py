"""Requests and responses of the public API (also what a client library would import)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from forge.core.events import Usage

# Identifiers callers choose (owners, request ids, profiles): printable, no spaces, bounded.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"
MAX_MESSAGE_CHARS = 1_000_000
MAX_METADATA_BYTES = 16_384
# Attachments: how many per message and how large each may be (decoded). The server's
# `[attachments]` settings may lower these.
MAX_ATTACHMENTS = 20
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
# A file name without directories; no leading dot.
FILE_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._ ()+-]{0,254}$"
MEDIA_TYPE_PATTERN = r"^[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*$"
EXECUTOR_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
VARIANT_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,255}$"
PermissionMode = Literal["bypass", "accept_edits", "ask"]
PermissionDecision = Literal["once", "always", "reject"]

AgentStatus = Literal["provisioning", "ready", "running", "stopped", "failed"]
DeliveryStatus = Literal["pending", "delivered", "failed", "exhausted"]
EndpointStatus = Literal["active", "paused", "disabled"]
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


def check_no_control_characters(value: str | None) -> str | None:
    """Refuse control characters (NUL, newlines...) in a path or ref: no repository has them,
    and PostgreSQL cannot store a NUL."""
    if value is not None and any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError("must not contain control characters")
    return value


def check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Refuse metadata that is not valid Unicode or over `MAX_METADATA_BYTES` of JSON."""
    if value is None:
        return value
    text = json.dumps(value, ensure_ascii=False)
    _check_encodable(text)
    if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


class AgentCreate(_Request):
    """Body of `POST /api/v1/agents`."""

    owner_id: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Who the agent belongs to; with an owner's API key, that owner (may be left "
        "out). Required otherwise.",
    )
    profile: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Profile name; the default profile if neither it nor `executor` is given.",
    )
    executor: str | None = Field(
        default=None,
        pattern=EXECUTOR_PATTERN,
        description="Instead of a profile: the executor kind (claude_code, opencode, codex, "
        "gemini, forge, command) with its `variant` from `[executors.KIND.VARIANT]`.",
    )
    variant: str | None = Field(
        default=None, pattern=VARIANT_PATTERN, description="With `executor`; DEFAULT if absent."
    )
    model: str | None = Field(
        default=None, pattern=MODEL_PATTERN, description="The model, instead of the profile's."
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
        return check_metadata(value)

    @field_validator("repo", "base_ref")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        return check_no_control_characters(value)


class Agent(BaseModel):
    """An agent as the API shows it."""

    id: str
    owner_id: str
    profile: str
    executor: str
    variant: str | None = None
    model: str | None = Field(default=None, description="The model the next runs use.")
    permission_mode: PermissionMode = "bypass"
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


class AgentUpdate(_Request):
    """Body of `PATCH /api/v1/agents/{id}`: what the next runs use."""

    model: str | None = Field(
        pattern=MODEL_PATTERN,
        description="The model for the next runs; null goes back to the profile's model.",
    )


class AgentList(BaseModel):
    """A page of agents, newest first."""

    agents: list[Agent]
    total: int
    next_cursor: str | None = None


class AttachmentIn(_Request):
    """A file sent with a message, its content in base64."""

    name: str = Field(
        pattern=FILE_NAME_PATTERN,
        description="File name (no directories), e.g. screenshot.png.",
    )
    media_type: str = Field(
        default="application/octet-stream",
        pattern=MEDIA_TYPE_PATTERN,
        description="e.g. image/png, text/plain; images go to the model as images where the "
        "executor supports it.",
    )
    content_base64: str = Field(
        min_length=0, max_length=(MAX_ATTACHMENT_BYTES * 4) // 3 + 4, description="Base64."
    )

    @cached_property
    def data(self) -> bytes:
        """The file's bytes (decoded once; validated when the model was built)."""
        return base64.b64decode(self.content_base64, validate=True)

    @field_validator("content_base64")
    @classmethod
    def _is_base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"is not valid base64: {exc}") from exc
        return value


class MessageCreate(_Request):
    """Body of `POST /api/v1/agents/{id}/messages` (or the same fields as multipart form data,
    with the files as `files` parts)."""

    content: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    attachments: list[AttachmentIn] = Field(
        default_factory=list,
        max_length=MAX_ATTACHMENTS,
        description="Files placed in the workspace under .forge/attachments/<request_id>/.",
    )
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)
    webhook_secret: str | None = Field(default=None, min_length=1, max_length=512)
    request_id: str | None = Field(default=None, pattern=NAME_PATTERN)
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first.")


class MessageAccepted(BaseModel):
    """Answer to a message: the run is stored and will be (or is being) executed."""

    request_id: str
    agent_id: str
    status: Literal["processing", "queued"]


class ResumeRequest(BaseModel):
    """Body of `POST /api/v1/sessions/{id}/resume`."""

    prompt: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    priority: int = Field(default=0, ge=-1000, le=1000)


class InterruptRequest(_Request):
    """Body of `POST /api/v1/agents/{id}/interrupt` (may be empty)."""

    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)
    request_id: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="The run to stop; the current one if absent.",
    )


class PermissionAnswer(_Request):
    """Body of `POST /api/v1/agents/{id}/permissions/{permission_id}`."""

    decision: PermissionDecision = Field(
        description="once: allow this call; always: allow this tool for the rest of the "
        "session; reject: refuse it."
    )
    message: str | None = Field(
        default=None, max_length=4000, description="Told to the agent (why, what instead)."
    )


class Permission(BaseModel):
    """A tool call that waited (or waits) for the user's approval."""

    permission_id: str
    agent_id: str
    request_id: str | None = None
    tool: str | None = None
    detail: str | None = None
    status: Literal["pending", "answered", "expired"]
    decision: PermissionDecision | None = None
    message: str | None = None
    created_at: datetime
    expires_at: datetime | None = None
    answered_at: datetime | None = None


class PermissionList(BaseModel):
    permissions: list[Permission]


class ProfileInfo(BaseModel):
    """A profile an agent can be created with."""

    name: str
    executor: str
    variant: str
    model: str | None = None
    permission_mode: PermissionMode
    description: str = ""
    source: str


class ProfileList(BaseModel):
    profiles: list[ProfileInfo]
    executors: dict[str, list[str]] = Field(description="Executor kinds and their variants.")


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


class Delivery(BaseModel):
    """One event sent, or to be sent, to one webhook endpoint. The secret is never shown."""

    id: str
    event_id: str = Field(description="Also the `webhook-id` header, the same on every attempt.")
    agent_id: str
    request_id: str | None = None
    seq: int
    endpoint_url: str
    status: DeliveryStatus = Field(
        description="pending: to be sent (or held while its endpoint is paused or disabled); "
        "delivered: answered 2xx; failed: refused for good (4xx, 410, URL refused); "
        "exhausted: the retries were used up."
    )
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = Field(
        default=None,
        description="When it is tried next (the end of its endpoint's pause, if later); null "
        "unless pending, and while its endpoint is disabled.",
    )
    created_at: datetime
    delivered_at: datetime | None = None
    endpoint_status: EndpointStatus = Field(
        description="active; paused by the circuit breaker; or disabled (answered 410 Gone) "
        "until a delivery to it is redelivered."
    )
    endpoint_disabled_reason: str | None = None


class DeliveryPage(BaseModel):
    """A page of an agent's webhook deliveries, in `seq` order."""

    deliveries: list[Delivery]
    has_more: bool
    next_after: int = Field(description="Pass as `after` to get the next page.")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    uptime_s: float
    database: dict[str, Any]
    agents: dict[str, int]
    # The runtime in use and, per warm pool entry ("profile:repo@base_ref"), its ready sandboxes.
    sandbox: dict[str, Any] = {}


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str
    message: str
