"""Every operation of Forge's API as a `Call`: its method, path, parameters, body and how its
answer is read. `ForgeClient` and `AsyncForgeClient` send the same calls, one synchronously and
one with asyncio, so this module is the one place a route's shape is written down."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from forge.client._exceptions import (
    APIError,
    InvalidRequestError,
    InvalidResponseError,
    error_for_status,
)
from forge.client.models import (
    Agent,
    AgentCreate,
    AgentList,
    AgentUpdate,
    Analytics,
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    Bucket,
    CleanupReport,
    DashboardStatus,
    Delivery,
    DeliveryPage,
    DeliveryStatus,
    EventPage,
    FileView,
    Health,
    InterruptAccepted,
    InterruptRequest,
    MergeRequest,
    MergeResult,
    MessageAccepted,
    MessageCreate,
    Neuron,
    NeuronAccepted,
    NeuronList,
    NeuronMessage,
    Permission,
    PermissionAnswer,
    PermissionList,
    ProfileList,
    ResumeRequest,
    Session,
    SessionDiff,
    SessionPage,
    SessionStatus,
    Task,
    TaskCreate,
    TaskList,
    Transcript,
    WorktreeList,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

API = "/api/v1"
# Answers worth a retry of an idempotent request: over the rate limit, or a replica (or the
# proxy in front of it) restarting.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_DELAY_SECONDS = 30.0


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Mapping[str, Any] = field(default_factory=dict)
    body: BaseModel | None = None
    # Statuses that are answers, not errors (`GET /readyz` answers 503 when not ready).
    ok: frozenset[int] = frozenset()
    # Sending it twice does it once: reads, and messages with their own `request_id` (the
    # server answers a repeat with the run it made the first time).
    repeatable: bool | None = None

    @property
    def idempotent(self) -> bool:
        return self.repeatable if self.repeatable is not None else self.method in ("GET", "HEAD")

    def query(self) -> dict[str, str]:
        """The parameters as the server reads them; those left as None are not sent."""
        return {
            name: _query_value(value) for name, value in self.params.items() if value is not None
        }

    def content(self) -> bytes | None:
        """The JSON body: the fields the caller set, so the server's defaults apply to the rest."""
        if self.body is None:
            return None
        return self.body.model_dump_json(exclude_unset=True).encode()

    def answer(self, response: httpx.Response) -> T:
        """The answer read with `read`, or the error it is raised as."""
        if response.is_success or response.status_code in self.ok:
            return self.read(response)
        raise error_of(response)


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidRequestError(
                "invalid_request",
                f"{value.isoformat()} has no time zone; pass an aware datetime (e.g. with UTC)",
            )
        return value.isoformat()
    return str(value)


def error_of(response: httpx.Response) -> APIError:
    """The exception for an error answer, with the server's `error` and `message`."""
    code, message = f"http_{response.status_code}", response.reason_phrase
    try:
        body = json.loads(response.read())
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code, message = body["error"], str(body.get("message") or message)
    return error_for_status(response.status_code, code, message, retry_after(response))


def retry_after(response: httpx.Response) -> float:
    """The server's Retry-After in seconds (0 when absent or not a number)."""
    try:
        return max(0.0, float(response.headers.get("retry-after", "0")))
    except ValueError:
        return 0.0


def retry_delay(
    call: Call[Any], attempt: int, max_retries: int, outcome: httpx.Response | Exception
) -> float | None:
    """How long to wait before sending `call` again after its `attempt`-th try (from 0) ended
    with `outcome` (an answer, or the transport error that stopped it); None: do not.

    A 429 was refused before anything was done, so any call is sent again. Other answers worth
    a retry (502, 503, 504: a replica or its proxy restarting), and a connection that broke
    after the request went out, are retried only for idempotent calls; a connection that was
    never made, for any call. The wait is the backoff or the answer's Retry-After, whichever
    is longer; a Retry-After over `MAX_RETRY_DELAY_SECONDS` is not waited for."""
    if attempt >= max_retries:
        return None
    backoff = min(0.5 * 2.0**attempt, 8.0)
    if isinstance(outcome, httpx.Response):
        status = outcome.status_code
        if status in call.ok or status not in RETRY_STATUSES:
            return None
        if status != 429 and not call.idempotent:
            return None
        wait = retry_after(outcome)
        # Longer than a caller would want a call to block: the error says when to come back.
        return None if wait > MAX_RETRY_DELAY_SECONDS else max(backoff, wait)
    if call.idempotent or isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout):
        return backoff
    return None


def build(model: type[M], value: M | None, fields: Mapping[str, Any]) -> M:
    """`value`, or a `model` made of `fields`: the server's own checks, run before sending."""
    if value is not None:
        if fields:
            raise TypeError(f"pass a {model.__name__} or keyword fields, not both")
        return value
    try:
        return model.model_validate(dict(fields))
    except ValidationError as exc:
        raise InvalidRequestError("invalid_request", describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """A validation error as one line, in the server's words (`field: what is wrong; ...`)."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "body"
        message = error.get("msg", "invalid")
        if error.get("type") == "extra_forbidden":
            message = "is not a known field"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def message_body(model: type[M], message: str | M, fields: Mapping[str, Any]) -> M:
    """A message model from its text and other fields, or as given."""
    if isinstance(message, str):
        return build(model, None, {"content": message, **fields})
    return build(model, message, fields)


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    def read(response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise InvalidResponseError(
                "bad_response",
                f"{response.request.method} {response.request.url} answered "
                f"{response.status_code} with what is not a {model.__name__}: {describe(exc)}",
                response.status_code,
            ) from None

    return read


def _nothing(_response: httpx.Response) -> None:
    return None


def _text(response: httpx.Response) -> str:
    return response.text


def _succeeded(response: httpx.Response) -> bool:
    return response.is_success


def segment(value: str) -> str:
    """`value` as one path segment: an id with a `/` cannot reach another route, and one that
    URLs would resolve away (empty, `.`, `..`) is refused before sending."""
    if value in ("", ".", ".."):
        raise InvalidRequestError("invalid_request", f"{value!r} is not an id")
    return quote(value, safe="")


def event_stream_path(agent_id: str) -> str:
    """Where an agent's events are (SSE with `Accept: text/event-stream`)."""
    return f"{API}/agents/{segment(agent_id)}/events"


def websocket_path(agent_id: str) -> str:
    return f"{API}/agents/{segment(agent_id)}/stream"


# ---- agents ------------------------------------------------------------------------------------


def create_agent(body: AgentCreate, wait: bool) -> Call[Agent]:
    return Call("POST", f"{API}/agents", _model(Agent), {"wait": wait}, body)


def list_agents(user_id: str | None, limit: int, cursor: str | None) -> Call[AgentList]:
    params = {"user_id": user_id, "limit": limit, "cursor": cursor}
    return Call("GET", f"{API}/agents", _model(AgentList), params)


def get_agent(agent_id: str, user_id: str | None) -> Call[Agent]:
    return Call("GET", f"{API}/agents/{segment(agent_id)}", _model(Agent), {"user_id": user_id})


def update_agent(agent_id: str, body: AgentUpdate, user_id: str | None) -> Call[Agent]:
    path = f"{API}/agents/{segment(agent_id)}"
    return Call("PATCH", path, _model(Agent), {"user_id": user_id}, body)


def delete_agent(agent_id: str, graceful: bool, purge: bool, user_id: str | None) -> Call[None]:
    params = {"graceful": graceful, "purge": purge, "user_id": user_id}
    return Call("DELETE", f"{API}/agents/{segment(agent_id)}", _nothing, params)


def list_profiles() -> Call[ProfileList]:
    return Call("GET", f"{API}/profiles", _model(ProfileList))


# ---- runs --------------------------------------------------------------------------------------


def send_message(agent_id: str, body: MessageCreate, user_id: str | None) -> Call[MessageAccepted]:
    path = f"{API}/agents/{segment(agent_id)}/messages"
    return Call(
        "POST",
        path,
        _model(MessageAccepted),
        {"user_id": user_id},
        body,
        repeatable=body.request_id is not None,
    )


def interrupt(
    agent_id: str, body: InterruptRequest, user_id: str | None
) -> Call[InterruptAccepted]:
    path = f"{API}/agents/{segment(agent_id)}/interrupt"
    return Call("POST", path, _model(InterruptAccepted), {"user_id": user_id}, body)


def list_permissions(agent_id: str, pending: bool, user_id: str | None) -> Call[PermissionList]:
    path = f"{API}/agents/{segment(agent_id)}/permissions"
    return Call("GET", path, _model(PermissionList), {"pending": pending, "user_id": user_id})


def answer_permission(
    agent_id: str, permission_id: str, body: PermissionAnswer, user_id: str | None
) -> Call[Permission]:
    path = f"{API}/agents/{segment(agent_id)}/permissions/{segment(permission_id)}"
    return Call("POST", path, _model(Permission), {"user_id": user_id}, body)


# ---- events and webhook deliveries -------------------------------------------------------------


def events(agent_id: str, after: int, limit: int, user_id: str | None) -> Call[EventPage]:
    path = event_stream_path(agent_id)
    params = {"after": after, "limit": limit, "user_id": user_id}
    return Call("GET", path, _model(EventPage), params)


def list_deliveries(
    agent_id: str, status: DeliveryStatus | None, after: int, limit: int, user_id: str | None
) -> Call[DeliveryPage]:
    path = f"{API}/agents/{segment(agent_id)}/deliveries"
    params = {"status": status, "after": after, "limit": limit, "user_id": user_id}
    return Call("GET", path, _model(DeliveryPage), params)


def redeliver(delivery_id: str, user_id: str | None) -> Call[Delivery]:
    path = f"{API}/deliveries/{segment(delivery_id)}/redeliver"
    return Call("POST", path, _model(Delivery), {"user_id": user_id})


# ---- tasks and sessions ------------------------------------------------------------------------


def create_task(body: TaskCreate) -> Call[Task]:
    return Call("POST", f"{API}/tasks", _model(Task), body=body)


def list_tasks(user_id: str | None, limit: int, cursor: str | None) -> Call[TaskList]:
    params = {"user_id": user_id, "limit": limit, "cursor": cursor}
    return Call("GET", f"{API}/tasks", _model(TaskList), params)


def get_task(task_id: str, user_id: str | None) -> Call[Task]:
    return Call("GET", f"{API}/tasks/{segment(task_id)}", _model(Task), {"user_id": user_id})


def list_sessions(
    user_id: str | None,
    profile: str | None,
    status: SessionStatus | None,
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int,
    cursor: str | None,
) -> Call[SessionPage]:
    params = {
        "user_id": user_id,
        "profile": profile,
        "status": status,
        "created_after": created_after,
        "created_before": created_before,
        "limit": limit,
        "cursor": cursor,
    }
    return Call("GET", f"{API}/sessions", _model(SessionPage), params)


def get_session(agent_id: str, user_id: str | None) -> Call[Session]:
    path = f"{API}/sessions/{segment(agent_id)}"
    return Call("GET", path, _model(Session), {"user_id": user_id})


def transcript(agent_id: str, user_id: str | None) -> Call[Transcript]:
    path = f"{API}/sessions/{segment(agent_id)}/transcript"
    return Call("GET", path, _model(Transcript), {"user_id": user_id})


def transcript_markdown(agent_id: str, user_id: str | None) -> Call[str]:
    path = f"{API}/sessions/{segment(agent_id)}/transcript"
    return Call("GET", path, _text, {"format": "markdown", "user_id": user_id})


def resume_session(
    agent_id: str, body: ResumeRequest, user_id: str | None
) -> Call[MessageAccepted]:
    path = f"{API}/sessions/{segment(agent_id)}/resume"
    return Call("POST", path, _model(MessageAccepted), {"user_id": user_id}, body)


def stop_session(agent_id: str, user_id: str | None) -> Call[Session]:
    path = f"{API}/sessions/{segment(agent_id)}/stop"
    return Call("POST", path, _model(Session), {"user_id": user_id})


# ---- worktrees, diffs and files ----------------------------------------------------------------


def list_worktrees(user_id: str | None) -> Call[WorktreeList]:
    return Call("GET", f"{API}/worktrees", _model(WorktreeList), {"user_id": user_id})


def cleanup_worktrees(older_than_hours: float | None) -> Call[CleanupReport]:
    params = {"older_than_hours": older_than_hours}
    return Call("DELETE", f"{API}/worktrees/cleanup", _model(CleanupReport), params)


def diff(agent_id: str, user_id: str | None) -> Call[SessionDiff]:
    path = f"{API}/sessions/{segment(agent_id)}/diff"
    return Call("GET", path, _model(SessionDiff), {"user_id": user_id})


def files(agent_id: str, path: str, user_id: str | None) -> Call[FileView]:
    route = f"{API}/sessions/{segment(agent_id)}/files"
    return Call("GET", route, _model(FileView), {"path": path, "user_id": user_id})


def merge(agent_id: str, body: MergeRequest, user_id: str | None) -> Call[MergeResult]:
    path = f"{API}/sessions/{segment(agent_id)}/merge"
    return Call("POST", path, _model(MergeResult), {"user_id": user_id}, body)


# ---- neurons -----------------------------------------------------------------------------------


def list_neurons(project: str | None, user_id: str | None) -> Call[NeuronList]:
    params = {"project": project, "user_id": user_id}
    return Call("GET", f"{API}/neurons", _model(NeuronList), params)


def get_neuron(name: str, project: str | None, user_id: str | None) -> Call[Neuron]:
    params = {"project": project, "user_id": user_id}
    return Call("GET", f"{API}/neurons/{segment(name)}", _model(Neuron), params)


def message_neuron(name: str, body: NeuronMessage, user_id: str | None) -> Call[NeuronAccepted]:
    path = f"{API}/neurons/{segment(name)}/messages"
    return Call(
        "POST",
        path,
        _model(NeuronAccepted),
        {"user_id": user_id},
        body,
        repeatable=body.request_id is not None,
    )


# ---- keys (admin) ------------------------------------------------------------------------------


def create_key(body: ApiKeyCreate) -> Call[ApiKeyCreated]:
    return Call("POST", f"{API}/keys", _model(ApiKeyCreated), body=body)


def list_keys(owner_id: str | None) -> Call[ApiKeyList]:
    return Call("GET", f"{API}/keys", _model(ApiKeyList), {"owner_id": owner_id})


def revoke_key(key_id: str) -> Call[ApiKey]:
    return Call("DELETE", f"{API}/keys/{segment(key_id)}", _model(ApiKey))


# ---- the server --------------------------------------------------------------------------------


def health() -> Call[Health]:
    return Call("GET", "/health", _model(Health))


def ready() -> Call[bool]:
    return Call("GET", "/readyz", _succeeded, ok=frozenset({503}))


def status(user_id: str | None) -> Call[DashboardStatus]:
    return Call("GET", f"{API}/status", _model(DashboardStatus), {"user_id": user_id})


def analytics(
    since: datetime | None, until: datetime | None, bucket: Bucket | None, user_id: str | None
) -> Call[Analytics]:
    params = {"since": since, "until": until, "bucket": bucket, "user_id": user_id}
    return Call("GET", f"{API}/analytics", _model(Analytics), params)
