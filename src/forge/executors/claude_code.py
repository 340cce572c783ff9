"""The Claude Code executor: `claude -p` speaking stream-json both ways.

One `claude` process per run:

    claude -p --output-format stream-json --verbose --input-format stream-json
           --permission-mode MODE [--permission-prompt-tool stdio] [--model M] [--resume ID]

The prompt goes in as one stream-json user message (images attached as base64 image blocks) and
stdin stays open: Claude Code's control protocol runs over it. The CLI asks for tool approval
with a `control_request` (`can_use_tool`) on stdout and gets our `control_response` on stdin;
an interrupt is a `control_request` (`interrupt`) we send. When the turn's `result` arrives,
stdin is closed and the CLI exits.

`ClaudeStreamParser` turns the output lines into events and entries without any I/O, so it is
tested on recorded streams; `ClaudeCodeExecutor` adds the process and the control protocol.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from forge.core.events import Outcome, Usage
from forge.executors import entries
from forge.executors.base import (
    Attachment,
    ExecutorEvent,
    ExecutorResult,
    PermissionMode,
    RunContext,
)
from forge.executors.permissions import Permissions, UnknownPermission
from forge.executors.process import (
    ProcessExecutor,
    Stream,
    describe_exit,
    stderr_event,
    write_and_close,
)

# Claude Code's own names for Forge's permission modes.
_CLI_PERMISSION_MODES: dict[PermissionMode, str] = {
    "bypass": "bypassPermissions",
    "accept_edits": "acceptEdits",
    "ask": "default",
}
# Keep the CLI off the network except for the model API (the sandbox may have none at all).
_QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}
# The Messages API refuses larger images; those are only listed in the prompt text.
_IMAGE_LIMIT_BYTES = 5 * 1024 * 1024
_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# How many stderr lines to quote when the CLI fails without a result.
_STDERR_TAIL = 20


class ClaudeCodeExecutor(ProcessExecutor):
    """Runs the `claude` CLI for one turn; see the module docstring."""

    kind = "claude_code"
    # The Anthropic/Claude variables the CLI reads. Cloud credentials for Bedrock or Vertex
    # (AWS_*, GOOGLE_*) are generic and not taken from the platform: put them in a profile's env.
    credential_env = (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_CUSTOM_HEADERS",
        "ANTHROPIC_MODEL",
        "ANTHROPIC_SMALL_FAST_MODEL",
        "ANTHROPIC_DEFAULT_OPUS_MODEL",
        "ANTHROPIC_DEFAULT_SONNET_MODEL",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL",
        "CLAUDE_CODE_SUBAGENT_MODEL",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "CLAUDE_CODE_USE_BEDROCK",
        "ANTHROPIC_BEDROCK_BASE_URL",
        "AWS_BEARER_TOKEN_BEDROCK",
        "CLAUDE_CODE_USE_VERTEX",
        "ANTHROPIC_VERTEX_BASE_URL",
        "ANTHROPIC_VERTEX_PROJECT_ID",
        "CLAUDE_CODE_USE_FOUNDRY",
        "ANTHROPIC_FOUNDRY_API_KEY",
    )
    permission_modes = ("bypass", "accept_edits", "ask")

    def __init__(self) -> None:
        super().__init__()
        self.parser = ClaudeStreamParser()
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL)
        self._stopping = False
        # Set once the process has ended and its output is read (`result` was called).
        self._ended = asyncio.Event()
        # The permission request waiting for the user, which `interrupt` refuses.
        self._asking: tuple[Permissions, str] | None = None

    # ---- the process ---------------------------------------------------------------------------

    def argv(self, ctx: RunContext) -> list[str]:
        # The first hook of a run: from here on, paths in entries read relative to the workspace.
        self.parser.workspace = ctx.workspace
        argv = [
            *ctx.program("claude"),
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--input-format",
            "stream-json",
            "--permission-mode",
            _CLI_PERMISSION_MODES[ctx.permission_mode],
        ]
        if ctx.permission_mode != "bypass":
            # Whatever Claude Code would ask a person comes to us as a control request.
            argv += ["--permission-prompt-tool", "stdio"]
        if ctx.model:
            argv += ["--model", ctx.model]
        if ctx.resume_session_id:
            argv += ["--resume", ctx.resume_session_id]
        system_prompt = ctx.settings.get("system_prompt")
        if isinstance(system_prompt, str) and system_prompt.strip():
            # Appended: replacing Claude Code's own system prompt would lose its tool rules.
            argv += ["--append-system-prompt", system_prompt]
        return argv + ctx.extra_args()

    def environment(self, ctx: RunContext) -> dict[str, str]:
        env = super().environment(ctx)
        for name, value in _QUIET_ENV.items():
            env.setdefault(name, value)
        if ctx.home is not None:
            # Its scratch files (tool output, pasted images) stay in the private home too.
            env.setdefault("CLAUDE_CODE_TMPDIR", str(ctx.home / ".claude-tmp"))
        if ctx.permission_mode == "bypass" and _is_root():
            # Claude Code refuses bypassPermissions as root unless told it runs in a sandbox,
            # which a Forge agent does.
            env.setdefault("IS_SANDBOX", "1")
        return env

    async def feed(self, stdin: asyncio.StreamWriter, ctx: RunContext) -> None:
        # stdin stays open for the control protocol; it is closed when the turn ends.
        message = await asyncio.to_thread(user_message, ctx)
        await self._send(message)

    async def events_for_line(
        self, stream: Stream, text: str, ctx: RunContext
    ) -> AsyncIterator[ExecutorEvent]:
        if stream == "stderr":
            self._stderr_tail.append(text)
            yield stderr_event(text)
            return
        message = decode(text)
        if message is None:
            yield self.parser.unreadable(text)
            return
        if message.get("type") == "control_request":
            async for event in self._control_request(message, ctx):
                yield event
            return
        for event in self.parser.events(message):
            yield event
        if message.get("type") == "result":
            # The turn is over: without more input the CLI finishes and exits.
            await self._close_stdin()

    def result(self, returncode: int, ctx: RunContext) -> ExecutorResult:
        self._ended.set()
        final = self.parser.final
        outcome: Outcome
        if self.interrupted or self._stopping:
            outcome, message = "interrupted", f"interrupted; claude {describe_exit(returncode)}"
        elif final is not None:
            failed = bool(final.get("is_error")) or final.get("subtype") != "success"
            outcome = "failed" if failed else "succeeded"
            message = result_message(final) if failed else "claude finished its turn"
        else:
            outcome = "failed"
            message = f"claude {describe_exit(returncode)} without a result"
            if self._stderr_tail:
                message += ": " + "\n".join(self._stderr_tail)
        return ExecutorResult(
            outcome=outcome,
            exit_code=returncode,
            message=message,
            usage=self.parser.usage,
            session_id=self.session_id or self.parser.session_id,
        )

    async def interrupt(self, grace_seconds: float) -> None:
        """Ask Claude Code to stop the turn (control protocol), then signal if it lingers."""
        self._stopping = True
        self.parser.stopping = True
        if self._asking is not None:
            permissions, permission_id = self._asking
            with contextlib.suppress(UnknownPermission):  # answered meanwhile
                permissions.answer(permission_id, "reject", "the run was stopped")
        if grace_seconds > 0 and self.stdin is not None:
            request = {
                "type": "control_request",
                "request_id": "forge_interrupt_" + secrets.token_hex(4),
                "request": {"subtype": "interrupt"},
            }
            if await self._send(request):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace_seconds):
                        await self._ended.wait()
        await super().interrupt(grace_seconds)

    # ---- the control protocol ------------------------------------------------------------------

    async def _control_request(
        self, message: dict[str, Any], ctx: RunContext
    ) -> AsyncIterator[ExecutorEvent]:
        request = message.get("request")
        request_id = message.get("request_id")
        subtype = request.get("subtype") if isinstance(request, dict) else None
        event_type = f"control_request/{subtype}" if isinstance(subtype, str) else "control_request"
        if not isinstance(request, dict) or not isinstance(request_id, str):
            yield self.parser.unreadable(json.dumps(message), event_type)
            return
        if subtype != "can_use_tool":
            # Hooks, MCP and elicitation requests: nothing here serves them.
            await self._send(control_error(request_id, f"Forge does not handle {subtype!r}"))
            yield ExecutorEvent(executor_event_type=event_type, raw=message, entry=None)
            return
        async for event in self._can_use_tool(request_id, request, message, ctx):
            yield event

    async def _can_use_tool(
        self, request_id: str, request: dict[str, Any], message: dict[str, Any], ctx: RunContext
    ) -> AsyncIterator[ExecutorEvent]:
        """Answer Claude Code's question whether a tool may run, asking the user if need be."""
        event_type = "control_request/can_use_tool"
        tool = str(request.get("tool_name") or "")
        tool_input = _dict(request.get("input"))
        tool_use_id = request.get("tool_use_id")
        tool_use_id = tool_use_id if isinstance(tool_use_id, str) else None
        permissions = ctx.permissions
        without_asking = ctx.permission_mode == "bypass" or (
            permissions is not None and permissions.always_allowed(tool)
        )
        if without_asking and not self._stopping:
            await self._send(control_allow(request_id, tool_input))
            yield ExecutorEvent(executor_event_type=event_type, raw=message, entry=None)
            return
        if permissions is None or self._stopping:
            reason = (
                "The run is being stopped; the tool was not run."
                if self._stopping
                else "Nobody can answer permission requests for this run; the tool was not run."
            )
            self.parser.denied(tool_use_id)
            await self._send(control_deny(request_id, reason))
            entry = entries.system(reason, tool=tool)
            yield ExecutorEvent(executor_event_type=event_type, raw=message, entry=entry)
            return
        permission_id, event = permissions.ask(
            tool,
            detail=tool_detail(tool, tool_input, ctx.workspace),
            input=tool_input,
            tool_call_id=tool_use_id,
            executor_event_type=event_type,
            raw=message,
        )
        yield event
        self._asking = (permissions, permission_id)
        try:
            answer = await permissions.decision(permission_id, tool)
        finally:
            self._asking = None
        if answer.allowed:
            await self._send(control_allow(request_id, tool_input))
        else:
            self.parser.denied(tool_use_id)
            await self._send(control_deny(request_id, answer.denial_reason()))

    async def _send(self, message: Mapping[str, Any]) -> bool:
        """Write one stream-json line to the CLI; False when its stdin is closed."""
        stdin = self.stdin
        if stdin is None or stdin.is_closing():
            return False
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    async def _close_stdin(self) -> None:
        stdin, self.stdin = self.stdin, None
        if stdin is not None:
            await write_and_close(stdin, b"")


class ClaudeStreamParser:
    """Turns Claude Code's stream-json output into `ExecutorEvent`s; keeps what a run needs
    afterwards (session id, the `result`, usage). No I/O, so recorded streams test it.

    `executor_event_type` is the raw `type`, with `/subtype` when the event has one
    (`system/init`, `result/success`, `control_request/can_use_tool`).
    """

    def __init__(self, workspace: Path | None = None) -> None:
        # Paths inside it are shown relative to it in `detail`.
        self.workspace = workspace
        self.session_id = ""
        # The last `result` event, once there is one.
        self.final: dict[str, Any] | None = None
        # Tokens and cost of this run (summed over its `result` events).
        self.usage = Usage()
        # Set when the run is being interrupted: the error result that follows is expected.
        self.stopping = False
        # tool_use_id -> (tool name, input) of the tool calls seen.
        self._tools: dict[str, tuple[str, dict[str, Any]]] = {}
        self._denied: set[str] = set()
        self._tasks = _TaskList()

    def denied(self, tool_use_id: str | None) -> None:
        """Remember that the user refused this tool call (its result reads as an error)."""
        if tool_use_id:
            self._denied.add(tool_use_id)

    def events_for_text(self, text: str) -> list[ExecutorEvent]:
        """The events of one output line."""
        message = decode(text)
        if message is None:
            return [self.unreadable(text)]
        return list(self.events(message))

    def unreadable(self, text: str, event_type: str = "") -> ExecutorEvent:
        """An output line that is not a stream-json event: kept as text in an entry."""
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")) or event_type:
            entry = entries.error(
                "unreadable output line from claude", code="unreadable_output", raw=text
            )
        else:
            entry = entries.system(text, stream="stdout")
        return ExecutorEvent(executor_event_type=event_type, raw=None, entry=entry)

    def events(self, message: dict[str, Any]) -> Iterator[ExecutorEvent]:
        """The events of one decoded stream-json message."""
        kind = message.get("type")
        subtype = message.get("subtype")
        if kind == "control_request":
            request = message.get("request")
            subtype = request.get("subtype") if isinstance(request, dict) else None
        event_type = str(kind) if isinstance(kind, str) else ""
        if isinstance(subtype, str) and event_type:
            event_type += "/" + subtype
        session_id = message.get("session_id")
        if isinstance(session_id, str) and session_id:
            self.session_id = session_id
        else:
            session_id = ""
        found: list[dict[str, Any] | None] = list(self._entries(message, kind, subtype))
        for entry in found or [None]:
            yield ExecutorEvent(
                executor_event_type=event_type, raw=message, entry=entry, session_id=session_id
            )

    # ---- one message -----------------------------------------------------------------------------

    def _entries(
        self, message: dict[str, Any], kind: Any, subtype: Any
    ) -> Iterator[dict[str, Any]]:
        if not isinstance(kind, str):
            yield entries.error("claude sent an event without a type", code="unreadable_output")
        elif kind in ("assistant", "user") and not isinstance(message.get("message"), dict):
            yield entries.error(
                f"claude sent a {kind} event without a message", code="unreadable_output"
            )
        elif kind == "assistant":
            yield from self._assistant(message)
        elif kind == "user":
            yield from self._user(message)
        elif kind == "result":
            yield from self._result(message)
        elif kind == "system":
            yield from self._system(message, subtype)

    def _assistant(self, message: dict[str, Any]) -> Iterator[dict[str, Any]]:
        content = _content_blocks(message)
        if message.get("error") or message.get("is_api_error_message"):
            # The CLI reports a failed model request as a synthetic assistant message.
            code = message.get("api_error_type") or message.get("error")
            yield entries.error(
                _text_of(content) or "the model request failed",
                code=str(code) if code else None,
                status=message.get("api_error_status"),
            )
            return
        for block in content:
            block_type = block.get("type")
            if block_type == "text" and str(block.get("text") or "").strip():
                yield entries.assistant_message(str(block["text"]))
            elif block_type == "thinking" and str(block.get("thinking") or "").strip():
                yield entries.thinking(str(block["thinking"]))
            elif block_type == "tool_use":
                yield from self._tool_use(block)

    def _tool_use(self, block: dict[str, Any]) -> Iterator[dict[str, Any]]:
        name = str(block.get("name") or "unknown")
        tool_input = _dict(block.get("input"))
        tool_use_id = block.get("id") if isinstance(block.get("id"), str) else None
        if tool_use_id:
            self._tools[tool_use_id] = (name, tool_input)
        yield self._tool_call(name, "running", tool_use_id, tool_input, input=tool_input)
        if name == "TodoWrite" and isinstance(tool_input.get("todos"), list):
            yield entries.todo([_todo_item(item) for item in tool_input["todos"]])

    def _tool_call(
        self,
        name: str,
        status: entries.ToolStatus,
        tool_use_id: str | None,
        tool_input: dict[str, Any],
        **extra: Any,
    ) -> dict[str, Any]:
        command = tool_input.get("command")
        return entries.tool_call(
            name,
            status,
            tool_call_id=tool_use_id,
            detail=tool_detail(name, tool_input, self.workspace) or None,
            path=_tool_path(tool_input) or None,
            command=command if isinstance(command, str) else None,
            **extra,
        )

    def _user(self, message: dict[str, Any]) -> Iterator[dict[str, Any]]:
        structured = message.get("tool_use_result")
        meta = _tool_result_meta(message)
        for block in _content_blocks(message):
            block_type = block.get("type")
            if block_type == "tool_result":
                yield from self._tool_result(block, structured, meta)
            elif block_type == "text" and str(block.get("text") or "").strip():
                yield entries.user_message(str(block["text"]))
        content = (message.get("message") or {}).get("content")
        if isinstance(content, str) and content.strip():
            yield entries.user_message(content)

    def _tool_result(
        self, block: dict[str, Any], structured: Any, meta: dict[str, dict[str, Any]]
    ) -> Iterator[dict[str, Any]]:
        tool_use_id = (
            block.get("tool_use_id") if isinstance(block.get("tool_use_id"), str) else None
        )
        # A result for a call this run did not see (it began before a resume): name unknown.
        name, tool_input = self._tools.get(tool_use_id or "", ("unknown", {}))
        output = _text_of(block.get("content"))
        decision = (meta.get(tool_use_id or "", {}).get("permission_decision") or {}).get(
            "decision"
        )
        if tool_use_id in self._denied or decision == "reject":
            yield self._tool_call(name, "denied", tool_use_id, tool_input, error=output)
            return
        if block.get("is_error"):
            yield self._tool_call(name, "failed", tool_use_id, tool_input, error=output)
            return
        yield self._tool_call(name, "success", tool_use_id, tool_input, output=output)
        if self._tasks.update(name, tool_input, structured):
            yield entries.todo(self._tasks.items())

    def _result(self, message: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.final = message
        used = result_usage(message)
        self.usage = Usage(
            input_tokens=self.usage.input_tokens + used.input_tokens,
            output_tokens=self.usage.output_tokens + used.output_tokens,
            cache_read_tokens=self.usage.cache_read_tokens + used.cache_read_tokens,
            cache_write_tokens=self.usage.cache_write_tokens + used.cache_write_tokens,
            cost_usd=self.usage.cost_usd + used.cost_usd,
        )
        failed = bool(message.get("is_error")) or message.get("subtype") != "success"
        if failed and self.stopping:
            yield entries.system("the turn was interrupted")
        elif failed:
            yield entries.error(result_message(message), code=str(message.get("subtype") or ""))
        extra = {key: message[key] for key in ("num_turns", "duration_ms") if key in message}
        yield entries.usage(used, **extra)

    def _system(self, message: dict[str, Any], subtype: Any) -> Iterator[dict[str, Any]]:
        if subtype == "init":
            yield entries.system(
                "Claude Code session started",
                model=message.get("model"),
                cwd=message.get("cwd"),
                permission_mode=message.get("permissionMode"),
                version=message.get("claude_code_version"),
            )
        elif subtype == "api_retry":
            status = message.get("error_status")
            yield entries.system(
                f"model request failed ({status or message.get('error') or 'no response'}); "
                f"retry {message.get('attempt')} of {message.get('max_retries')}",
                subtype=subtype,
            )
        elif subtype == "permission_denied":
            # Claude Code refused a tool itself (a rule, or nobody to ask); its result follows.
            self.denied(message.get("tool_use_id"))
        else:
            text = next(
                (
                    message[key]
                    for key in ("content", "text", "message")
                    if isinstance(message.get(key), str) and message[key].strip()
                ),
                None,
            )
            if text is None:
                return  # progress and UI state: the raw event is kept, no entry
            if message.get("level") == "error":
                yield entries.error(text, code=str(subtype))
            else:
                yield entries.system(text, subtype=subtype)


class _TaskList:
    """The task list Claude Code keeps with TaskCreate/TaskUpdate/TaskList (its todo list).

    Built from the tool calls of this run; a TaskList result replaces it whole.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, dict[str, Any]] = {}

    def items(self) -> list[dict[str, Any]]:
        return [dict(task) for task in self._tasks.values()]

    def update(self, tool: str, tool_input: dict[str, Any], result: Any) -> bool:
        """Apply one successful tool call; True when the list changed."""
        result = result if isinstance(result, dict) else {}
        if tool == "TaskCreate" and isinstance(result.get("task"), dict):
            task = result["task"]
            task_id = str(task.get("id") or len(self._tasks) + 1)
            self._tasks[task_id] = {
                "id": task_id,
                "content": str(task.get("subject") or tool_input.get("subject") or ""),
                "status": "pending",
            }
            return True
        if tool == "TaskUpdate":
            task_id = str(tool_input.get("taskId") or result.get("taskId") or "")
            status = tool_input.get("status")
            if status == "deleted":
                return self._tasks.pop(task_id, None) is not None
            task = self._tasks.setdefault(task_id, {"id": task_id, "content": "", "status": ""})
            if isinstance(status, str):
                task["status"] = status
            if isinstance(tool_input.get("subject"), str):
                task["content"] = tool_input["subject"]
            return True
        if tool == "TaskList" and isinstance(result.get("tasks"), list):
            self._tasks = {
                str(task.get("id")): {
                    "id": str(task.get("id")),
                    "content": str(task.get("subject") or ""),
                    "status": str(task.get("status") or ""),
                }
                for task in result["tasks"]
                if isinstance(task, dict)
            }
            return True
        return False


# ---- building messages ---------------------------------------------------------------------------


def user_message(ctx: RunContext) -> dict[str, Any]:
    """The stream-json user message of a run: the prompt, then its images as image blocks."""
    content: list[dict[str, Any]] = [{"type": "text", "text": ctx.prompt_with_extras()}]
    for attachment in ctx.attachments:
        block = _image_block(attachment)
        if block is not None:
            content.append(block)
    return {
        "type": "user",
        "message": {"role": "user", "content": content},
        "parent_tool_use_id": None,
        "session_id": ctx.resume_session_id,
    }


def _image_block(attachment: Attachment) -> dict[str, Any] | None:
    if not attachment.is_image or attachment.media_type not in _IMAGE_TYPES:
        return None
    try:
        data = attachment.path.read_bytes()
    except OSError:
        return None  # still listed in the prompt text
    if len(data) > _IMAGE_LIMIT_BYTES:
        return None
    return {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": attachment.media_type,
            "data": base64.b64encode(data).decode(),
        },
    }


def control_allow(request_id: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    return _control_success(request_id, {"behavior": "allow", "updatedInput": tool_input})


def control_deny(request_id: str, message: str) -> dict[str, Any]:
    return _control_success(request_id, {"behavior": "deny", "message": message})


def control_error(request_id: str, error: str) -> dict[str, Any]:
    return {
        "type": "control_response",
        "response": {"subtype": "error", "request_id": request_id, "error": error},
    }


def _control_success(request_id: str, response: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": response},
    }


# ---- reading messages ----------------------------------------------------------------------------


def decode(text: str) -> dict[str, Any] | None:
    """One stdout line as a stream-json message (a JSON object), or None."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def result_usage(message: Mapping[str, Any]) -> Usage:
    """Tokens and cost of the turn a `result` event ends.

    `model_usage_since_last_result` covers this turn for every model used; `usage` and
    `total_cost_usd` are the fallback (the cost is then the session's running total).
    """
    per_model = message.get("model_usage_since_last_result")
    if isinstance(per_model, dict) and per_model:
        models = [value for value in per_model.values() if isinstance(value, dict)]
        return Usage(
            input_tokens=sum(_int(m.get("inputTokens")) for m in models),
            output_tokens=sum(_int(m.get("outputTokens")) for m in models),
            cache_read_tokens=sum(_int(m.get("cacheReadInputTokens")) for m in models),
            cache_write_tokens=sum(_int(m.get("cacheCreationInputTokens")) for m in models),
            cost_usd=sum(_float(m.get("costUSD")) for m in models),
        )
    usage = _dict(message.get("usage"))
    return Usage(
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
        cache_write_tokens=_int(usage.get("cache_creation_input_tokens")),
        cost_usd=_float(message.get("total_cost_usd")),
    )


def result_message(message: Mapping[str, Any]) -> str:
    """What went wrong, from an error `result` event."""
    errors = message.get("errors")
    if isinstance(errors, list) and errors:
        return "; ".join(str(error) for error in errors)
    text = message.get("result")
    if isinstance(text, str) and text.strip():
        return text
    return f"claude ended the turn with {message.get('subtype') or 'an error'}"


def tool_detail(tool: str, tool_input: Mapping[str, Any], workspace: Path | None = None) -> str:
    """A one-line summary of a tool call: the command, the path, the pattern, ..."""
    path = _tool_path(tool_input)
    if path:
        if workspace is not None:
            with contextlib.suppress(ValueError):
                return str(Path(path).relative_to(workspace))
        return path
    for key in ("command", "pattern", "url", "query", "description", "subject", "skill"):
        value = tool_input.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip().splitlines()[0]
    if tool == "TodoWrite" and isinstance(tool_input.get("todos"), list):
        return f"{len(tool_input['todos'])} items"
    if tool == "TaskUpdate" and tool_input.get("taskId"):
        return f"#{tool_input['taskId']} {tool_input.get('status') or ''}".strip()
    return ""


def _tool_path(tool_input: Mapping[str, Any]) -> str:
    for key in ("file_path", "notebook_path", "path"):
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _todo_item(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        return {"content": str(item), "status": "pending"}
    return {"content": str(item.get("content") or ""), "status": str(item.get("status") or "")}


def _content_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    inner = message.get("message")
    content = inner.get("content") if isinstance(inner, dict) else None
    if not isinstance(content, list):
        return []
    return [block for block in content if isinstance(block, dict)]


def _tool_result_meta(message: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    meta = message.get("tool_result_meta")
    if not isinstance(meta, list):
        return {}
    return {str(item.get("id")): item for item in meta if isinstance(item, dict)}


def _text_of(content: Any) -> str:
    """The text of a message or tool result content (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            parts.append(str(block.get("text") or ""))
        elif block.get("type") == "image":
            parts.append("[image]")
    return "\n".join(parts)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
