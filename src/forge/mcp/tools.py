"""Forge's MCP server: the tools and resources, written once against `ForgeBackend`.

`build_server(backend_for)` makes an `MCPServer`; `backend_for` gives the backend a call acts on
(from the call's context: the in-process one for the HTTP request's caller, or one HTTP client
for `forge mcp`). An error Forge reports becomes a tool error whose text and structured content
are Forge's own error body, `{"error": "<code>", "message": "..."}`; a resource read that fails
is an MCP error carrying the same in its `data`.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from mcp.server.mcpserver import Context, MCPServer, ResourceSecurity
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, ValidationError

from forge import __version__
from forge.core.errors import ForgeError, InvalidRequest
from forge.core.neurons import MAX_PROJECT_CHARS
from forge.core.schemas import (
    MAX_MESSAGE_CHARS,
    NAME_PATTERN,
    InterruptRequest,
    MessageCreate,
)
from forge.core.sessions import SessionStatus
from forge.core.tasks import TaskCreate
from forge.mcp.backend import JSON, ForgeBackend

# What a tool or resource reads its backend from.
BackendFor = Callable[[Context], ForgeBackend]
ToolFunction = Callable[..., Awaitable[CallToolResult]]

INSTRUCTIONS = """\
Forge runs AI coding agents in isolated workspaces. A session is one workspace with one agent
conversation in it; create_task makes a session and queues its first message, send_message
queues the next one. Runs execute in the background: poll get_session (status `running` or
`queued` until it is `idle`) and read get_transcript for what the agent did. Neurons are
persistent named agents: talk_to_neuron sends one a message, and the resource
neuron://{name}/stream is its state document (its latest messages and replies, as JSON)."""

SessionId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="The session's id (ag_...), from create_task or list_sessions.",
    ),
]
NeuronName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="The neuron's name, from list_neurons.",
    ),
]
Project = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=MAX_PROJECT_CHARS,
        description="Absolute path of the repository the neuron works in; each project has "
        "its own agent of the neuron. Leave out for none.",
    ),
]
OwnerId = Annotated[
    str | None,
    Field(
        pattern=NAME_PATTERN,
        description="The owner to act for. With an owner's API key it is that owner (leave it "
        "out); with the admin key, or auth off, name one.",
    ),
]
Content = Annotated[
    str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS, description="The message text.")
]
Priority = Annotated[int, Field(ge=-1000, le=1000, description="Higher runs first (default 0).")]
RequestId = Annotated[
    str | None,
    Field(
        pattern=NAME_PATTERN,
        description="Your id for this run (idempotency key); Forge makes one if left out.",
    ),
]

log = logging.getLogger(__name__)

_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)


def build_server(backend_for: BackendFor) -> MCPServer:
    """The MCP server with Forge's tools and resources, each acting on `backend_for(ctx)`."""
    server: MCPServer = MCPServer(
        "forge",
        title="Forge",
        description="Run AI coding agents in isolated workspaces and read what they did.",
        instructions=INSTRUCTIONS,
        version=__version__,
        # Forge logs through its own configuration.
        log_level="WARNING",
    )

    @_tool(server, ToolAnnotations(destructive_hint=False, open_world_hint=True))
    async def create_task(
        ctx: Context,
        prompt: Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_MESSAGE_CHARS,
                description="What the agent should do: the session's first message.",
            ),
        ],
        title: Annotated[
            str | None,
            Field(
                max_length=256,
                description="A short title (default: the prompt's first line).",
            ),
        ] = None,
        profile: Annotated[
            str | None,
            Field(
                pattern=NAME_PATTERN,
                description="The profile (executor and settings) to run; the server's default "
                "if left out.",
            ),
        ] = None,
        repo: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=4096,
                description="Absolute path of a git repository on the server: the agent works "
                "in a worktree of it on branch forge/<session id>. Without one, an empty "
                "directory.",
            ),
        ] = None,
        base_branch: Annotated[
            str | None,
            Field(min_length=1, max_length=256, description="Branch to start from."),
        ] = None,
        priority: Priority = 0,
        owner_id: OwnerId = None,
    ) -> CallToolResult:
        """Start background work: make a new session (an agent in its own workspace) and queue
        the prompt as its first message. Answers the task: `session_id` (use it with
        get_session, get_transcript, send_message, interrupt), `request_id` of the run, and its
        `status`. The run goes on in the background."""
        first_line = prompt.strip().splitlines()[0] if prompt.strip() else "task"

        def body() -> TaskCreate:
            return TaskCreate(
                title=title or first_line[:80] or "task",
                prompt=prompt,
                profile=profile,
                repo=repo,
                base_branch=base_branch,
                priority=priority,
                owner_id=owner_id,
            )

        return await _answer(lambda: backend_for(ctx).create_task(body()))

    @_tool(server, _READ_ONLY)
    async def list_sessions(
        ctx: Context,
        status: Annotated[
            SessionStatus | None, Field(description="Only sessions in this status.")
        ] = None,
        profile: Annotated[
            str | None,
            Field(max_length=128, description="Only sessions of this profile."),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="Sessions per page.")] = 20,
        cursor: Annotated[
            str | None,
            Field(
                pattern=r"^[A-Za-z0-9_-]{1,64}$",
                description="`next_cursor` of the previous page.",
            ),
        ] = None,
        owner_id: OwnerId = None,
    ) -> CallToolResult:
        """List the sessions you may see, newest first: id, status (provisioning, queued,
        running, idle, stopped, completed, failed), profile, repository, runs and usage.
        `next_cursor` pages on; `total` counts every match."""
        return await _answer(
            lambda: backend_for(ctx).list_sessions(
                owner_id=owner_id, status=status, profile=profile, limit=limit, cursor=cursor
            )
        )

    @_tool(server, _READ_ONLY)
    async def get_session(ctx: Context, session_id: SessionId) -> CallToolResult:
        """One session: its status (`idle` once its runs are done, `running` or `queued` while
        they are not), branch, workspace, runs, queued runs, token usage and any error."""
        return await _answer(lambda: backend_for(ctx).get_session(session_id))

    @_tool(server, ToolAnnotations(destructive_hint=False, open_world_hint=True))
    async def send_message(
        ctx: Context,
        session_id: SessionId,
        content: Content,
        priority: Priority = 0,
        request_id: RequestId = None,
    ) -> CallToolResult:
        """Queue the next message in a session's conversation (a stopped session is started
        again on its workspace). Answers at once with the run's `request_id` and `status`
        (`processing` or `queued`); read get_transcript for the agent's answer."""

        def body() -> MessageCreate:
            return MessageCreate(content=content, priority=priority, request_id=request_id)

        return await _answer(lambda: backend_for(ctx).send_message(session_id, body()))

    @_tool(server, ToolAnnotations(destructive_hint=True, idempotent_hint=True))
    async def interrupt(
        ctx: Context,
        session_id: SessionId,
        request_id: Annotated[
            str | None,
            Field(
                pattern=NAME_PATTERN,
                description="The run to stop; the one running now if left out.",
            ),
        ] = None,
    ) -> CallToolResult:
        """Stop a session's run (the current one, or `request_id`): the agent is interrupted and
        the run ends with outcome `interrupted`. The session and its workspace stay."""
        return await _answer(
            lambda: backend_for(ctx).interrupt(session_id, InterruptRequest(request_id=request_id))
        )

    @_tool(server, _READ_ONLY)
    async def get_transcript(
        ctx: Context,
        session_id: SessionId,
        format: Annotated[
            Literal["json", "markdown"],
            Field(
                description="json: every entry with its kind and seq; markdown: readable text.",
            ),
        ] = "json",
    ) -> CallToolResult:
        """A session's conversation in order: each message as sent, then what the agent did
        (assistant messages, thinking, tool calls with their results) and how each run ended
        (`run_end`). The same document is the resource session://{id}/transcript."""
        backend = backend_for(ctx)
        if format == "markdown":
            return await _answer_text(lambda: backend.transcript_markdown(session_id))
        return await _answer(lambda: backend.transcript(session_id))

    @_tool(server, _READ_ONLY)
    async def list_neurons(
        ctx: Context, project: Project = None, owner_id: OwnerId = None
    ) -> CallToolResult:
        """The neurons (persistent named agents) you can talk to: name, description, executor,
        model, status, and their agent id once used. Each owner (and project) has its own
        agent of each neuron."""
        return await _answer(lambda: backend_for(ctx).list_neurons(owner_id, project))

    @_tool(server, ToolAnnotations(destructive_hint=False, open_world_hint=True))
    async def talk_to_neuron(
        ctx: Context,
        name: NeuronName,
        content: Content,
        project: Project = None,
        priority: Priority = 0,
        owner_id: OwnerId = None,
    ) -> CallToolResult:
        """Send a message to a neuron (made on first use). Answers at once with the run's
        `request_id`; the reply appears in the neuron's state document, the resource
        neuron://{name}/stream (with `?owner_id=` and `?project=` as here)."""

        def body() -> MessageCreate:
            return MessageCreate(content=content, priority=priority)

        return await _answer(
            lambda: backend_for(ctx).talk_to_neuron(name, body(), owner_id, project)
        )

    @server.resource(
        "session://{session_id}/transcript",
        name="session_transcript",
        title="Session transcript",
        description="A session's transcript as JSON (what get_transcript answers).",
        mime_type="application/json",
    )
    async def session_transcript(session_id: str, ctx: Context) -> str:
        return await _read(lambda: backend_for(ctx).transcript(session_id))

    @server.resource(
        "neuron://{name}/stream{?owner_id,project}",
        name="neuron_stream",
        title="Neuron state",
        description="A neuron's state document as JSON (status, messages and replies, "
        "sections, todos, files, usage): the snapshot WS /ws/neurons/{name} starts with. "
        "owner_id: whose neuron (required with the admin key or auth off); project: the "
        "repository it works in.",
        mime_type="application/json",
        # `project` is an absolute path by design, which the SDK refuses in a parameter unless
        # told; here it only names which agent of the neuron to read, as in the REST route.
        security=ResourceSecurity(exempt_params={"project"}),
    )
    async def neuron_stream(
        name: str, ctx: Context, owner_id: str | None = None, project: str | None = None
    ) -> str:
        async def state() -> JSON:
            # The check `Project` makes of a tool's argument (the SDK checks none here).
            if project is not None and not 0 < len(project) <= MAX_PROJECT_CHARS:
                raise InvalidRequest(f"project must be 1 to {MAX_PROJECT_CHARS} characters")
            neuron = await backend_for(ctx).get_neuron(name, owner_id, project)
            document: JSON = neuron.get("state") or {}
            return document

        return await _read(state)

    return server


def _tool(
    server: MCPServer, annotations: ToolAnnotations
) -> Callable[[ToolFunction], ToolFunction]:
    """Register the decorated function as a tool, its docstring (dedented) the description."""

    def register(fn: ToolFunction) -> ToolFunction:
        server.add_tool(fn, description=inspect.cleandoc(fn.__doc__ or ""), annotations=annotations)
        return fn

    return register


def _error_body(code: str, message: str) -> JSON:
    return {"error": code, "message": message}


def _tool_error(code: str, message: str) -> CallToolResult:
    body = _error_body(code, message)
    return CallToolResult(
        content=[TextContent(text=json.dumps(body))], structured_content=body, is_error=True
    )


def _log_server_error(exc: ForgeError) -> None:
    # As the REST API's error handler does: a client's mistake is its answer, Forge's own
    # failure (or an unreachable server, for `forge mcp`) is for the log too.
    if exc.status_code >= 500:
        log.error("%s: %s", exc.code, exc.message)


def _forge_tool_error(exc: ForgeError) -> CallToolResult:
    _log_server_error(exc)
    return _tool_error(exc.code, exc.message)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "arguments"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


async def _answer(call: Callable[[], Awaitable[JSON]]) -> CallToolResult:
    """The backend's answer as the tool's result (JSON text and structured content); Forge's
    errors as a tool error."""
    try:
        data = await call()
    except ForgeError as exc:
        return _forge_tool_error(exc)
    except ValidationError as exc:
        return _tool_error("invalid_request", _validation_message(exc))
    return CallToolResult(content=[TextContent(text=json.dumps(data))], structured_content=data)


async def _answer_text(call: Callable[[], Awaitable[str]]) -> CallToolResult:
    try:
        text = await call()
    except ForgeError as exc:
        return _forge_tool_error(exc)
    return CallToolResult(content=[TextContent(text=text)])


async def _read(call: Callable[[], Awaitable[JSON]]) -> str:
    """A resource's document as JSON text; Forge's errors as an MCP error with Forge's body in
    `data` (invalid params for what does not exist or may not be seen, internal otherwise)."""
    try:
        data = await call()
    except ForgeError as exc:
        _log_server_error(exc)
        code = INVALID_PARAMS if exc.status_code < 500 else INTERNAL_ERROR
        raise MCPError(
            code, f"{exc.code}: {exc.message}", _error_body(exc.code, exc.message)
        ) from exc
    return json.dumps(data)
