"""The `opencode` executor: OpenCode's headless server (`opencode serve`), driven over HTTP.

Each run starts `opencode serve` on 127.0.0.1 (a port it picks, a random password) in the
workspace, in a process group of its own, subscribes to its event stream (`GET /event`,
server-sent events), creates a session or continues `resume_session_id` (the session store is
in the private HOME, so a new server finds it), sends the prompt (`prompt_async`) and reads
events until the session is idle. `OpenCodeEvents` turns the events into entries; streaming
deltas (`message.part.delta`) and events of the server itself are left out.

Permissions: `permission_mode` becomes OpenCode's permission rules (`OPENCODE_PERMISSION`,
which wins over every config file). OpenCode announces each tool call that needs approval with
`permission.asked` and waits; the user is asked when the mode says so, and the answer goes to
`/permission/{id}/reply` (a refusal with the user's reason, which reaches the model).

Interrupting aborts the session (`/session/{id}/abort`), then the server is killed with its
process group, and the shell commands OpenCode started in sessions of their own with it
(`forge.executors.strays`).

The endpoint: with `OPENAI_BASE_URL` in the run's environment, OpenCode gets a provider
`forge` (OpenAI-compatible chat completions at that URL, key from `OPENAI_API_KEY`), and a
model without a provider prefix is that provider's. Otherwise `model` is OpenCode's
`provider/model` and the provider's own variables carry its credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import signal
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx

from forge.core.events import Usage
from forge.executors import entries
from forge.executors.base import (
    Executor,
    ExecutorEvent,
    ExecutorOutput,
    ExecutorResult,
    ExecutorStartFailed,
    PermissionMode,
    RunContext,
    executor_environment,
)
from forge.executors.permissions import Decision, PermissionAnswer
from forge.executors.process import decode_line, describe_exit, signal_group
from forge.executors.strays import kill_strays

# The provider Forge defines for an `OPENAI_BASE_URL` endpoint.
PROVIDER = "forge"
# What keeps OpenCode off the network when it starts (no sandbox may have one).
QUIET_ENV = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_SHARE": "1",
}
# OpenCode's permission rules per mode (the last matching rule wins). The `question` tool
# asks the user free-form questions, which Forge has no channel for.
PERMISSION_RULES: Mapping[PermissionMode, Mapping[str, str]] = {
    "bypass": {"*": "allow", "question": "deny"},
    "accept_edits": {"edit": "allow", "bash": "ask", "webfetch": "ask", "question": "deny"},
    "ask": {
        "edit": "ask",
        "bash": "ask",
        "webfetch": "ask",
        "websearch": "ask",
        "question": "deny",
    },
}
_USERNAME = "opencode"
_LISTENING = re.compile(r"listening on (http://[^\s]+)")
# How many lines of the server's output to quote when it fails.
_OUTPUT_TAIL = 20
_DEFAULT_STARTUP_SECONDS = 60.0
# Failed model calls OpenCode may retry before the run gives up (it would retry forever).
_DEFAULT_MAX_RETRIES = 3
_REQUEST_SECONDS = 30.0
# How long a killed server may take to exit and close its output.
_GONE_SECONDS = 2.0
# The error of a session that was aborted (by an interrupt): not a failure of its own.
_ABORTED_ERRORS = frozenset({"MessageAbortedError"})
# How OpenCode's error for a refused tool call begins.
_REJECTED_PREFIX = "The user rejected permission"


class OpenCodeExecutor(Executor):
    """Runs one prompt through `opencode serve`; see the module docstring."""

    kind = "opencode"
    credential_env = (
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENROUTER_API_KEY",
        "GOOGLE_GENERATIVE_AI_API_KEY",
        "GROQ_API_KEY",
        "XAI_API_KEY",
        "DEEPSEEK_API_KEY",
        "MISTRAL_API_KEY",
        "OPENCODE_API_KEY",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "NO_PROXY",
    )
    permission_modes: ClassVar[tuple[PermissionMode, ...]] = ("bypass", "accept_edits", "ask")

    def __init__(self) -> None:
        self.events = OpenCodeEvents()
        self._server: OpenCodeServer | None = None
        self._client: httpx.AsyncClient | None = None
        self._interrupted = False
        # Set when the run has nothing more to read (idle, failed or stopped).
        self._finished = asyncio.Event()
        # The wait for the user's answer to a permission request (cancelled by interrupt).
        self._waiting: asyncio.Future[PermissionAnswer] | None = None

    async def run(self, ctx: RunContext) -> AsyncGenerator[ExecutorOutput, None]:
        if self._interrupted:
            yield ExecutorResult(outcome="interrupted", message="interrupted before it started")
            return
        settings = ctx.settings
        startup = _number(settings.get("startup_timeout_seconds"), _DEFAULT_STARTUP_SECONDS)
        env = server_environment(ctx)
        await asyncio.to_thread(prepare_home, ctx.home)
        argv = [
            *ctx.program("opencode"),
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            *ctx.extra_args(),
        ]
        self._server = server = await OpenCodeServer.start(argv, env, ctx, startup)
        try:
            if self._interrupted:  # interrupt() came while the server was starting
                yield self._result()
                return
            async with server.client() as client:
                self._client = client
                async for output in self._converse(client, ctx):
                    yield output
        finally:
            self._client = None
            self._finished.set()
            await server.stop()

    async def interrupt(self, grace_seconds: float) -> None:
        self._interrupted = True
        server, client, session_id = self._server, self._client, self.events.session_id
        if self._waiting is not None:
            self._waiting.cancel()
        if server is None:
            return  # not started yet: run() sees the flag
        if grace_seconds > 0 and client is not None and session_id:
            with contextlib.suppress(httpx.HTTPError):
                await client.post(f"/session/{session_id}/abort", timeout=grace_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), grace_seconds)
        # Whatever is still running: its events stream ends, and run() ends with it.
        await server.stop()

    # ---- one conversation turn -----------------------------------------------------------------

    async def _converse(
        self, client: httpx.AsyncClient, ctx: RunContext
    ) -> AsyncGenerator[ExecutorOutput, None]:
        events = self.events
        try:
            async with client.stream("GET", "/event", timeout=_stream_timeout()) as response:
                response.raise_for_status()
                stream = sse_data(response.aiter_lines())
                # The first event says the subscription is live: nothing after it is missed.
                await anext(stream, None)
                events.failure = await self._open_session(client, ctx)
                if not events.failure:
                    async for event in self._follow(client, ctx, stream):
                        yield event
        except httpx.HTTPError as exc:
            if not self._interrupted and not events.idle:
                events.failure = events.failure or f"lost the OpenCode server: {exc!r}"
        self._finished.set()
        yield self._result()

    async def _follow(
        self, client: httpx.AsyncClient, ctx: RunContext, stream: AsyncIterator[str]
    ) -> AsyncIterator[ExecutorEvent]:
        """The session's events until it is idle, answering OpenCode's requests on the way."""
        events = self.events
        max_retries = int(_number(ctx.settings.get("max_retries"), _DEFAULT_MAX_RETRIES))
        async for data in stream:
            event = events.translate(data)
            if event is None:
                pass
            elif event.executor_event_type == "permission.asked":
                async for asked in self._answer_permission(client, ctx, event):
                    yield asked
            else:
                yield event
                if event.executor_event_type == "question.asked":
                    await self._refuse_question(client, event.raw)
            if events.retries > max_retries and not events.failure:
                events.failure = (
                    f"the model call failed {events.retries} times: {events.retry_message}"
                )
                await self._abort(client)
            if events.idle:
                return

    async def _open_session(self, client: httpx.AsyncClient, ctx: RunContext) -> str:
        """Create or find the session and send the prompt; a failure's message, or ""."""
        if ctx.resume_session_id:
            found = await client.get(f"/session/{ctx.resume_session_id}")
            if found.status_code != 200:
                return f"OpenCode has no session {ctx.resume_session_id} ({_describe(found)})"
            session_id = ctx.resume_session_id
        else:
            created = await client.post("/session", json={})
            new_id = _json_object(created).get("id")
            if created.status_code != 200 or not isinstance(new_id, str) or not new_id:
                return f"OpenCode did not create a session ({_describe(created)})"
            session_id = new_id
        self.events.session_id = session_id
        sent = await client.post(f"/session/{session_id}/prompt_async", json=prompt_body(ctx))
        if sent.status_code >= 300:
            return f"OpenCode refused the prompt ({_describe(sent)})"
        return ""

    async def _answer_permission(
        self, client: httpx.AsyncClient, ctx: RunContext, event: ExecutorEvent
    ) -> AsyncIterator[ExecutorEvent]:
        """Yield the request (as a `permission_request` when the user is asked), then answer
        OpenCode with the user's decision or the mode's."""
        raw = event.raw
        request = raw["properties"]
        permission = str(request.get("permission", ""))
        tool = self.events.tool_of(request) or permission
        call = request.get("tool")
        call_id = call.get("callID") if isinstance(call, dict) else None
        decision: Decision = "once"
        message = ""
        permissions = ctx.permissions
        if not needs_user(ctx.permission_mode, permission):
            yield event
        elif permissions is None:
            yield event
            decision, message = "reject", "Nobody can approve tool calls in this run."
        elif permissions.always_allowed(tool):
            yield event
        else:
            pid, asked = permissions.ask(
                tool,
                detail=permission_detail(request),
                input=request.get("metadata"),
                tool_call_id=call_id if isinstance(call_id, str) else None,
                executor_event_type=event.executor_event_type,
                raw=raw,
            )
            yield ExecutorEvent(
                asked.executor_event_type, raw, asked.entry, session_id=self.events.session_id
            )
            self._waiting = asyncio.ensure_future(permissions.decision(pid, tool))
            try:
                answer = await self._waiting
            except asyncio.CancelledError:
                if not self._interrupted:
                    raise
                answer = PermissionAnswer("reject", "the run was interrupted")
            finally:
                self._waiting = None
            decision = answer.decision
            message = "" if answer.allowed else answer.denial_reason()
        if decision == "reject" and isinstance(call_id, str):
            self.events.rejected_calls.add(call_id)
        body: dict[str, Any] = {"reply": decision}
        if message:
            body["message"] = message  # OpenCode gives it to the model with the refusal
        try:
            await client.post(f"/permission/{request.get('id')}/reply", json=body)
        except httpx.HTTPError as exc:
            if not self._interrupted:
                text = f"could not answer OpenCode's permission request: {exc!r}"
                yield ExecutorEvent("", None, entries.error(text), self.events.session_id)

    async def _refuse_question(self, client: httpx.AsyncClient, raw: Any) -> None:
        request_id = raw["properties"].get("id")
        if isinstance(request_id, str):
            with contextlib.suppress(httpx.HTTPError):
                await client.post(f"/question/{request_id}/reject")

    async def _abort(self, client: httpx.AsyncClient) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await client.post(f"/session/{self.events.session_id}/abort")

    def _result(self) -> ExecutorResult:
        events, server = self.events, self._server
        failure = events.failure
        outcome: Literal["succeeded", "failed", "interrupted"]
        if self._interrupted:
            outcome, message = "interrupted", "interrupted"
        elif failure:
            outcome, message = "failed", failure
        elif events.idle:
            outcome, message = "succeeded", "the session is idle"
        else:
            outcome, message = "failed", "the OpenCode server stopped before the session was idle"
        if outcome == "failed" and server is not None and server.output_tail():
            message += "\n" + server.output_tail()
        return ExecutorResult(
            outcome=outcome,
            exit_code=0 if outcome == "succeeded" else 1,
            message=message,
            usage=events.usage,
            session_id=events.session_id,
        )


# ---- configuration -------------------------------------------------------------------------------


def server_environment(ctx: RunContext) -> dict[str, str]:
    """The environment of `opencode serve`: the run's, OpenCode's config, no network at start."""
    env = executor_environment(ctx)
    env.update(QUIET_ENV)
    env["OPENCODE_CONFIG_CONTENT"] = json.dumps(opencode_config(ctx, env))
    env["OPENCODE_PERMISSION"] = json.dumps(PERMISSION_RULES[ctx.permission_mode])
    env["OPENCODE_SERVER_USERNAME"] = _USERNAME
    env["OPENCODE_SERVER_PASSWORD"] = secrets.token_urlsafe(24)
    return env


def opencode_config(ctx: RunContext, env: Mapping[str, str]) -> dict[str, Any]:
    """OpenCode's config for the run: the provider for `OPENAI_BASE_URL`, the model, and the
    `config` setting merged over it."""
    config: dict[str, Any] = {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
    }
    model = model_ref(ctx.model, env)
    base_url = env.get("OPENAI_BASE_URL", "").strip()
    if base_url:
        options = {"baseURL": base_url}
        if env.get("OPENAI_API_KEY"):
            options["apiKey"] = "{env:OPENAI_API_KEY}"
        models = {model[1]: {"name": model[1]}} if model and model[0] == PROVIDER else {}
        config["provider"] = {
            PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Forge endpoint",
                "options": options,
                "models": models,
            }
        }
    if model:
        config["model"] = "/".join(model)
        if model[0] == PROVIDER:  # titles too: no other provider is reachable
            config["small_model"] = "/".join(model)
    extra = ctx.settings.get("config")
    if isinstance(extra, dict):
        config = _merged(config, extra)
    return config


def model_ref(model: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(provider, model) for OpenCode; a bare name is the `forge` provider's when there is one."""
    model = model.strip()
    if not model:
        return None
    provider, slash, name = model.partition("/")
    if slash:
        return provider, name
    if env.get("OPENAI_BASE_URL", "").strip():
        return PROVIDER, model
    return None


def prompt_body(ctx: RunContext) -> dict[str, Any]:
    """The body of `prompt_async`: the prompt, image attachments, and the run's choices."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": ctx.prompt_with_extras()}]
    for attachment in ctx.attachments:
        if attachment.is_image:
            parts.append(
                {
                    "type": "file",
                    "mime": attachment.media_type,
                    "filename": attachment.name,
                    "url": attachment.path.as_uri(),
                }
            )
    body: dict[str, Any] = {"parts": parts}
    model = model_ref(ctx.model, ctx.env)
    if model:  # a resumed session would keep its last model otherwise
        body["model"] = {"providerID": model[0], "modelID": model[1]}
    for key, setting in (("agent", "agent"), ("system", "system_prompt")):
        value = ctx.settings.get(setting)
        if isinstance(value, str) and value.strip():
            body[key] = value
    return body


def prepare_home(home: Path | None) -> None:
    """Keep OpenCode's background install of its plugin package off the network.

    OpenCode installs `@opencode-ai/plugin` into its config directory with npm; an `.npmrc`
    there (read for installs in that directory only) makes npm use its cache alone, so the
    install fails at once instead of waiting on a network the sandbox may not have.
    """
    if home is None:
        return
    config_dir = home / ".config" / "opencode"
    npmrc = config_dir / ".npmrc"
    if not npmrc.exists():
        config_dir.mkdir(parents=True, exist_ok=True)
        npmrc.write_text("offline=true\n")


def needs_user(mode: PermissionMode, permission: str) -> bool:
    """Whether an OpenCode permission request goes to the user in this mode."""
    if mode == "bypass":
        return False
    if mode == "accept_edits":
        return permission != "edit"
    return True


def permission_detail(request: Mapping[str, Any]) -> str:
    """One line for a permission request: what it is for."""
    patterns = request.get("patterns")
    listed = ", ".join(str(p) for p in patterns) if isinstance(patterns, list) else ""
    permission = str(request.get("permission", ""))
    return f"{permission}: {listed}" if listed else permission


# ---- the event stream ----------------------------------------------------------------------------


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data` of each server-sent event (multi-line data joined with newlines)."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment (keep-alive)
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:  # the stream ended in the middle of an event
        yield "\n".join(data)


class OpenCodeEvents:
    """Turns OpenCode's events into `ExecutorEvent`s for one session (and its subagents').

    Keeps what the run needs: the session id, usage from `step-finish` parts, whether the
    session went idle, why it failed, and the model call retries.
    """

    def __init__(self, session_id: str = "") -> None:
        self.session_id = session_id
        self.usage = Usage()
        self.idle = False
        self.failure = ""
        self.retries = 0
        self.retry_message = ""
        # Tool calls the user refused (their error is a denial, not a failure).
        self.rejected_calls: set[str] = set()
        self._children: set[str] = set()
        self._roles: dict[str, str] = {}
        self._started_calls: set[str] = set()
        self._tools_by_call: dict[str, str] = {}
        self._steps: dict[str, Usage] = {}

    def translate(self, data: str) -> ExecutorEvent | None:
        """The event one server-sent event's data stands for; None for other sessions'
        events, streaming deltas and the server's own events. Never raises."""
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError):
            broken = entries.error("unreadable OpenCode event", code="unparsable_event", raw=data)
            return self._event("", None, broken)
        kind = raw.get("type") if isinstance(raw, dict) else None
        props = raw.get("properties") if isinstance(raw, dict) else None
        if not isinstance(kind, str) or not isinstance(props, dict):
            return self._event("", raw, entries.system(f"unexpected OpenCode event: {data}"))
        if kind == "session.created":
            self._note_child(props)
        if not self._concerns(kind, props):
            return None
        entry: dict[str, Any] | None
        try:
            entry = self._entry(kind, props)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            entry = entries.system(f"unexpected OpenCode {kind} event ({exc!r})")
        return self._event(kind, raw, entry)

    def tool_of(self, request: Mapping[str, Any]) -> str:
        """The tool a permission request is for, when its call was seen."""
        call = request.get("tool")
        call_id = call.get("callID") if isinstance(call, dict) else None
        return self._tools_by_call.get(call_id, "") if isinstance(call_id, str) else ""

    # ---- which events ---------------------------------------------------------------------------

    def _note_child(self, props: dict[str, Any]) -> None:
        info = props.get("info")
        if isinstance(info, dict) and info.get("parentID") in {self.session_id, *self._children}:
            self._children.add(str(info.get("id")))

    def _concerns(self, kind: str, props: dict[str, Any]) -> bool:
        if kind == "message.part.delta":
            return False  # the whole part follows in message.part.updated
        session = props.get("sessionID")
        if session is None:
            return kind == "session.error"  # an error without a session is still ours
        return bool(self.session_id) and session in {self.session_id, *self._children}

    # ---- entries ---------------------------------------------------------------------------------

    def _entry(self, kind: str, props: dict[str, Any]) -> dict[str, Any] | None:
        main = props.get("sessionID") in (None, self.session_id)
        if kind == "message.part.updated":
            return self._part_entry(props["part"])
        if kind == "message.updated":
            info = props["info"]
            self._roles[str(info.get("id"))] = str(info.get("role"))
            return None
        if kind == "session.status":
            return self._status_entry(props["status"], main)
        if kind == "session.idle":
            self.idle = self.idle or main
            return None
        if kind == "session.error":
            return self._error_entry(props.get("error"), main)
        if kind == "todo.updated":
            items = [
                {"content": str(t.get("content", "")), "status": str(t.get("status", ""))}
                for t in props["todos"]
                if isinstance(t, dict)
            ]
            return entries.todo(items)
        if kind == "question.asked":
            return entries.system("OpenCode asked a question; Forge cannot answer it, refused")
        return None

    def _status_entry(self, status: dict[str, Any], main: bool) -> dict[str, Any] | None:
        if status.get("type") != "retry":
            return None
        message = str(status.get("message", ""))
        if main:
            self.retries = max(self.retries, int(status.get("attempt") or 0))
            self.retry_message = message
        return entries.system(f"retrying the model call ({status.get('attempt')}): {message}")

    def _error_entry(self, error: Any, main: bool) -> dict[str, Any]:
        name = str(error.get("name", "")) if isinstance(error, dict) else ""
        data = error.get("data") if isinstance(error, dict) else None
        message = str(data.get("message", "")) if isinstance(data, dict) else ""
        message = message or name or "OpenCode reported an error"
        if name in _ABORTED_ERRORS:
            return entries.system(f"the session was aborted: {message}")
        if main and not self.failure:
            self.failure = f"{name}: {message}" if name else message
        return entries.error(message, code=name or None)

    def _part_entry(self, part: dict[str, Any]) -> dict[str, Any] | None:
        kind = part.get("type")
        if kind == "text":
            return self._text_entry(part)
        if kind == "reasoning":
            done = "end" in (part.get("time") or {})
            return entries.thinking(part["text"]) if done and part.get("text") else None
        if kind == "tool":
            return self._tool_entry(part)
        if kind == "step-finish":
            return self._step_usage(part)
        return None

    def _text_entry(self, part: dict[str, Any]) -> dict[str, Any] | None:
        text = part.get("text")
        if not isinstance(text, str) or not text or part.get("synthetic") or part.get("ignored"):
            return None
        role = self._roles.get(str(part.get("messageID")))
        if role == "user" or (role is None and "time" not in part):
            # A subagent's prompt is in its `task` tool call already.
            main = part.get("sessionID") == self.session_id
            return entries.user_message(text) if main else None
        if "end" in (part.get("time") or {}):
            return entries.assistant_message(text)
        return None  # still streaming

    def _tool_entry(self, part: dict[str, Any]) -> dict[str, Any] | None:
        tool, call_id, state = str(part["tool"]), str(part["callID"]), part["state"]
        self._tools_by_call[call_id] = tool
        status = state.get("status")
        if status == "running":
            if call_id in self._started_calls:
                return None  # progress of a call already reported
            self._started_calls.add(call_id)
            return _tool_call(tool, "running", call_id, state)
        if status == "completed":
            return _tool_call(tool, "success", call_id, state, output=state.get("output"))
        if status == "error":
            error = str(state.get("error", ""))
            denied = call_id in self.rejected_calls or error.startswith(_REJECTED_PREFIX)
            return _tool_call(tool, "denied" if denied else "failed", call_id, state, error=error)
        return None  # pending: the arguments are still streaming

    def _step_usage(self, part: dict[str, Any]) -> dict[str, Any]:
        tokens = part.get("tokens") or {}
        cache = tokens.get("cache") or {}
        step = Usage(
            input_tokens=int(tokens.get("input") or 0),
            # OpenCode counts reasoning apart; Forge counts it as output.
            output_tokens=int(tokens.get("output") or 0) + int(tokens.get("reasoning") or 0),
            cache_read_tokens=int(cache.get("read") or 0),
            cache_write_tokens=int(cache.get("write") or 0),
            cost_usd=float(part.get("cost") or 0.0),
        )
        self._steps[str(part.get("id"))] = step  # a part updated twice counts once
        self.usage = Usage(
            input_tokens=sum(s.input_tokens for s in self._steps.values()),
            output_tokens=sum(s.output_tokens for s in self._steps.values()),
            cache_read_tokens=sum(s.cache_read_tokens for s in self._steps.values()),
            cache_write_tokens=sum(s.cache_write_tokens for s in self._steps.values()),
            cost_usd=sum(s.cost_usd for s in self._steps.values()),
        )
        return entries.usage(step, reason=part.get("reason"))

    def _event(self, kind: str, raw: Any, entry: dict[str, Any] | None) -> ExecutorEvent:
        return ExecutorEvent(
            executor_event_type=kind, raw=raw, entry=entry, session_id=self.session_id
        )


def _tool_call(
    tool: str,
    status: entries.ToolStatus,
    call_id: str,
    state: Mapping[str, Any],
    *,
    output: Any = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A `tool_call` entry, with `detail`, `path` and `command` from OpenCode's arguments."""
    arguments = state.get("input")
    arguments = arguments if isinstance(arguments, dict) else {}
    path = arguments.get("filePath") or arguments.get("path")
    command = arguments.get("command") if tool == "bash" else None
    detail = next(
        (
            value.strip().splitlines()[0]
            for key in ("command", "filePath", "path", "pattern", "url", "query", "description")
            if isinstance(value := arguments.get(key), str) and value.strip()
        ),
        None,
    )
    return entries.tool_call(
        tool,
        status,
        tool_call_id=call_id,
        input=arguments,
        output=output,
        detail=detail,
        path=path if isinstance(path, str) else None,
        command=command if isinstance(command, str) else None,
        error=error,
    )


# ---- the server process --------------------------------------------------------------------------


class OpenCodeServer:
    """One `opencode serve` process: started, listening, and stopped with all it started."""

    def __init__(self, process: asyncio.subprocess.Process, password: str, ctx: RunContext) -> None:
        self.process = process
        self.url = ""
        self.password = password
        self._ctx = ctx
        self._tail: deque[str] = deque(maxlen=_OUTPUT_TAIL)
        self._readers: list[asyncio.Task[None]] = []
        self._stopped = False

    @classmethod
    async def start(
        cls, argv: list[str], env: dict[str, str], ctx: RunContext, timeout: float
    ) -> OpenCodeServer:
        """Start the server and wait until it listens. Raises `ExecutorStartFailed`."""
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=ctx.workspace,
                env=env,
                # Its own process group, in the runner's session (see ProcessExecutor).
                process_group=0,
            )
        except OSError as exc:
            raise ExecutorStartFailed(
                f"cannot start {argv[0]} in {ctx.workspace}: {exc.strerror or exc}"
            ) from exc
        server = cls(process, env["OPENCODE_SERVER_PASSWORD"], ctx)
        listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        assert process.stdout is not None and process.stderr is not None
        server._readers = [
            asyncio.create_task(server._read(process.stdout, listening)),
            asyncio.create_task(server._read(process.stderr, listening)),
        ]
        exited = asyncio.create_task(process.wait())
        waiting: set[asyncio.Future[Any]] = {listening, exited}
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            exited.cancel()
        if listening in done:
            server.url = listening.result()
            return server
        why = (
            f"{argv[0]} serve {describe_exit(process.returncode)}"
            if process.returncode is not None
            else f"{argv[0]} serve did not listen within {timeout:g} s"
        )
        await server.stop()
        raise ExecutorStartFailed(f"{why}\n{server.output_tail()}".rstrip())

    def client(self) -> httpx.AsyncClient:
        """An HTTP client for the server (no proxies: it is on 127.0.0.1)."""
        return httpx.AsyncClient(
            base_url=self.url,
            auth=httpx.BasicAuth(_USERNAME, self.password),
            timeout=_REQUEST_SECONDS,
            trust_env=False,
        )

    def output_tail(self) -> str:
        """The server's last lines of output, for error messages."""
        return "\n".join(self._tail)

    async def stop(self) -> None:
        """Kill the server, its process group and every process it started; wait for them."""
        if not self._stopped:
            self._stopped = True
            signal_group(self.process.pid, signal.SIGKILL)
            # OpenCode runs shell commands in sessions of their own, outside the group.
            await asyncio.to_thread(kill_strays, self._ctx)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), _GONE_SECONDS)
        if self._readers:  # the last lines (why it failed), unless something holds the pipes
            await asyncio.wait(self._readers, timeout=_GONE_SECONDS)
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def _read(self, stream: asyncio.StreamReader, listening: asyncio.Future[str]) -> None:
        # Always read, so the server never blocks on a full pipe.
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than the buffer: dropped
                continue
            if not line:
                return
            text = decode_line(line)
            found = _LISTENING.search(text)
            if found and not listening.done():
                listening.set_result(found.group(1).rstrip("/"))
            elif text.strip():
                self._tail.append(text)


# ---- small helpers -------------------------------------------------------------------------------


def _stream_timeout() -> httpx.Timeout:
    # Events may not come for as long as a tool runs: no read timeout on the stream.
    return httpx.Timeout(_REQUEST_SECONDS, read=None)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _describe(response: httpx.Response) -> str:
    return f"HTTP {response.status_code}: {response.text[:500]}"


def _number(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return default


def _merged(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in, nested objects merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged
