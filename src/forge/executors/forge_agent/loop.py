"""The built-in agent: a model, the workspace tools, and the loop between them.

Each turn sends the whole conversation to the model (`ChatClient`), yields what it said, runs
the tool calls it asked for (asking the user first where the permission mode says so) and adds
their results to the conversation, until the model answers without a tool call, `max_turns` is
reached, or the run is interrupted. The conversation is stored after every turn
(`SessionStore`), so a later run can continue it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncGenerator, Coroutine
from typing import Any, ClassVar, TypeVar

from forge.core.events import Outcome, Usage
from forge.executors import entries
from forge.executors.base import (
    Executor,
    ExecutorError,
    ExecutorEvent,
    ExecutorOutput,
    ExecutorResult,
    ExecutorStartFailed,
    PermissionMode,
    RunContext,
    executor_environment,
)
from forge.executors.forge_agent.client import (
    ChatClient,
    ModelServerError,
    ModelTurn,
    ToolCallRequest,
    usage_from_wire,
)
from forge.executors.forge_agent.session import (
    SessionStore,
    close_open_tool_calls,
    new_session_id,
)
from forge.executors.forge_agent.settings import AgentSettings
from forge.executors.forge_agent.tools import (
    COMMAND_TOOLS,
    EDIT_TOOLS,
    TOOL_DEFINITIONS,
    ToolSummary,
    WorkspaceTools,
    describe,
)
from forge.executors.permissions import Permissions, UnknownPermission

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Longest wait before retrying a model request, whatever the server's Retry-After says.
_MAX_RETRY_DELAY_SECONDS = 60.0


_INTERRUPTED = "Interrupted: the run was stopped before the tool call finished."


class _Stopped(Exception):
    """The run was interrupted while it waited for something."""


class ForgeAgentExecutor(Executor):
    """Forge's own coding agent for any OpenAI-compatible chat-completions endpoint."""

    kind = "forge"
    credential_env = ("OPENAI_API_KEY", "OPENAI_BASE_URL")
    permission_modes: ClassVar[tuple[PermissionMode, ...]] = ("bypass", "accept_edits", "ask")

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._tools: WorkspaceTools | None = None
        self._grace_seconds = 0.0

    async def interrupt(self, grace_seconds: float) -> None:
        self._grace_seconds = grace_seconds
        if self._tools is not None:
            self._tools.grace_seconds = grace_seconds
        self._stop.set()

    async def run(self, ctx: RunContext) -> AsyncGenerator[ExecutorOutput, None]:
        if self._stop.is_set():
            yield ExecutorResult(outcome="interrupted", message="interrupted before it started")
            return
        env = executor_environment(ctx)
        settings = AgentSettings.from_context(ctx, env)
        if ctx.permission_mode != "bypass" and ctx.permissions is None:
            raise ExecutorError(f"permission_mode {ctx.permission_mode!r} needs ctx.permissions")
        store = SessionStore.for_context(ctx)
        if ctx.resume_session_id:
            if store is None:
                raise ExecutorStartFailed(
                    "resuming a forge session needs the run's state_dir (or home), where the "
                    "conversation is stored"
                )
            session_id = ctx.resume_session_id
            messages = await asyncio.to_thread(store.load, session_id)
        else:
            session_id, messages = new_session_id(), []
        # The model's commands get the run's environment without the model's credentials.
        command_env = {k: v for k, v in env.items() if k not in self.credential_env}
        tools = WorkspaceTools(
            ctx.workspace,
            env=command_env,
            max_output_chars=settings.max_tool_output_chars,
            command_timeout=settings.command_timeout,
        )
        tools.grace_seconds = self._grace_seconds
        self._tools = tools
        client = ChatClient(
            settings.base_url, settings.api_key, timeout_seconds=settings.request_timeout
        )
        conversation = _Conversation(self, ctx, settings, tools, client, store, session_id)
        conversation.messages = messages
        try:
            async with contextlib.aclosing(conversation.run()) as outputs:
                async for output in outputs:
                    yield output
        finally:
            await client.aclose()

    async def stoppable(self, work: Coroutine[Any, Any, T]) -> T:
        """Await `work`, cancelling it when the run is interrupted (then `_Stopped`)."""
        if self._stop.is_set():
            work.close()
            raise _Stopped
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()  # the HTTP stream closes, a command's process group is killed
                await asyncio.wait({task})
        if task.cancelled():
            raise _Stopped
        return task.result()

    def check_stopped(self) -> None:
        if self._stop.is_set():
            raise _Stopped


class _Conversation:
    """One run: the conversation so far, the model, the tools, and the usage summed up."""

    def __init__(
        self,
        executor: ForgeAgentExecutor,
        ctx: RunContext,
        settings: AgentSettings,
        tools: WorkspaceTools,
        client: ChatClient,
        store: SessionStore | None,
        session_id: str,
    ) -> None:
        self.executor = executor
        self.ctx = ctx
        self.settings = settings
        self.tools = tools
        self.client = client
        self.store = store
        self.session_id = session_id
        # The conversation so far, without the system prompt (as stored).
        self.messages: list[dict[str, Any]] = []
        self.usage = Usage()
        # The tool call under way (waiting for permission or running) and its arguments.
        self.current_call: tuple[ToolCallRequest, dict[str, Any]] | None = None

    async def run(self) -> AsyncGenerator[ExecutorOutput, None]:
        if self.store is None:
            yield self.event(
                "session.unsaved",
                None,
                entries.system(
                    "No state directory: this conversation is not stored and cannot be resumed."
                ),
            )
        try:
            self.messages.append(await asyncio.to_thread(self.user_message))
            await self.save()
            for _ in range(self.settings.max_turns):
                self.executor.check_stopped()
                turn: ModelTurn | None = None
                async for output in self.ask_model():
                    if isinstance(output, ModelTurn):
                        turn = output
                    else:
                        yield output
                if turn is None:
                    return  # ask_model yielded the failed result
                for event in self.turn_events(turn):
                    yield event
                self.messages.append(turn.message())
                await self.save()
                if not turn.tool_calls:
                    if turn.finish_reason == "length":
                        yield self.event(
                            "model.truncated",
                            {"finish_reason": "length"},
                            entries.system("The model's answer was cut off (max_tokens)."),
                        )
                    yield self.result("succeeded", "the model finished its answer")
                    return
                for call in turn.tool_calls:
                    self.executor.check_stopped()
                    async for event in self.tool_call(call):
                        yield event
                await self.save()
            message = f"stopped after max_turns ({self.settings.max_turns}) model turns"
            yield self.event(
                "run.max_turns",
                {"max_turns": self.settings.max_turns},
                entries.error(message, code="max_turns"),
            )
            yield self.result("failed", message)
        except _Stopped:
            if self.current_call is not None:
                call, arguments = self.current_call
                yield self.tool_event("tool.finished", call, arguments, "failed", _INTERRUPTED)
            self.messages = close_open_tool_calls(self.messages)
            await self.save()
            yield self.result("interrupted", "interrupted")

    # ---- the model -----------------------------------------------------------------------------

    async def ask_model(self) -> AsyncGenerator[ExecutorOutput | ModelTurn, None]:
        """One model turn (retrying 429 and 5xx answers), or a failed result."""
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [
                {"role": "system", "content": self.settings.system_prompt},
                *self.messages,
            ],
            "tools": TOOL_DEFINITIONS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.settings.max_tokens:
            body["max_tokens"] = self.settings.max_tokens
        attempt = 0
        while True:
            try:
                yield await self.executor.stoppable(self.client.complete(body))
                return
            except ModelServerError as exc:
                raw = {"error": str(exc), "status": exc.status, "attempt": attempt + 1}
                if exc.retryable and attempt < self.settings.max_retries:
                    delay = exc.retry_after
                    if delay is None:
                        delay = self.settings.retry_backoff_seconds * 2**attempt
                    delay = min(delay, _MAX_RETRY_DELAY_SECONDS)
                    yield self.event(
                        "model.retry",
                        {**raw, "retry_in_seconds": delay},
                        entries.system(f"{exc}; retrying in {delay:g} s"),
                    )
                    await self.executor.stoppable(asyncio.sleep(delay))
                    attempt += 1
                    continue
                yield self.event("model.error", raw, entries.error(str(exc), code="model_error"))
                yield self.result("failed", str(exc))
                return

    def turn_events(self, turn: ModelTurn) -> list[ExecutorEvent]:
        events = [
            self.event(
                "model.stream_problem",
                {"reason": problem.reason, "raw": problem.raw},
                entries.error(
                    f"unreadable model stream: {problem.reason}", code="bad_chunk", raw=problem.raw
                ),
            )
            for problem in turn.problems
        ]
        if turn.reasoning:
            events.append(
                self.event(
                    "model.reasoning",
                    {"reasoning_content": turn.reasoning},
                    entries.thinking(turn.reasoning),
                )
            )
        text_entry = entries.assistant_message(turn.text) if turn.text.strip() else None
        events.append(self.event("model.turn", turn.raw(), text_entry))
        if turn.usage is not None:
            usage = usage_from_wire(turn.usage)
            self.usage = _add(self.usage, usage)
            events.append(self.event("model.usage", turn.usage, entries.usage(usage)))
        return events

    # ---- tools ---------------------------------------------------------------------------------

    async def tool_call(self, call: ToolCallRequest) -> AsyncGenerator[ExecutorEvent, None]:
        """Run one tool call (asking first if needed) and add its result to the conversation."""
        name = call.name
        arguments = _arguments(call.arguments)
        if arguments is None:
            output = f"Error: the arguments of {name} must be a JSON object, got: {call.arguments}"
            yield self.tool_event("tool.finished", call, call.arguments, "failed", output)
            return
        self.current_call = (call, arguments)
        if self.needs_permission(name):
            permissions = self.ctx.permissions
            assert permissions is not None
            yield self.tool_event("tool.pending", call, arguments, "pending_approval")
            permission_id, request = permissions.ask(
                name,
                detail=describe(name, arguments).detail,
                input=arguments,
                tool_call_id=call.id,
                executor_event_type="permission.request",
                raw={"id": call.id, "name": name, "arguments": arguments},
            )
            yield dataclasses.replace(request, session_id=self.session_id)
            try:
                answer = await self.executor.stoppable(permissions.decision(permission_id, name))
            except _Stopped:
                await _withdraw(permissions, permission_id)
                raise
            if not answer.allowed:
                reason = answer.denial_reason()
                self.current_call = None
                yield self.tool_event("tool.finished", call, arguments, "denied", reason)
                return
        yield self.tool_event("tool.started", call, arguments, "running")
        result = await self.executor.stoppable(self.tools.call(name, arguments))
        status: entries.ToolStatus = "success" if result.ok else "failed"
        self.current_call = None
        yield self.tool_event("tool.finished", call, arguments, status, result.output)

    def needs_permission(self, tool: str) -> bool:
        mode = self.ctx.permission_mode
        if mode == "ask":
            asks = tool in EDIT_TOOLS or tool in COMMAND_TOOLS
        elif mode == "accept_edits":
            asks = tool in COMMAND_TOOLS
        else:
            asks = False
        permissions = self.ctx.permissions
        return asks and not (permissions is not None and permissions.always_allowed(tool))

    def tool_event(
        self,
        event_type: str,
        call: ToolCallRequest,
        arguments: dict[str, Any] | str,
        status: entries.ToolStatus,
        output: str | None = None,
    ) -> ExecutorEvent:
        """An event of a tool call. A finished call's output (what the model sees) joins the
        conversation as the tool's result."""
        raw: dict[str, Any] = {"id": call.id, "name": call.name, "arguments": arguments}
        if output is not None:
            self.messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
            raw.update(status=status, output=output)
        summary = describe(call.name, arguments) if isinstance(arguments, dict) else ToolSummary()
        ok = status == "success"
        entry = entries.tool_call(
            call.name,
            status,
            tool_call_id=call.id,
            input=arguments,
            output=output if ok else None,
            error=None if ok else output,
            path=summary.path,
            command=summary.command,
            detail=summary.detail,
        )
        return self.event(event_type, raw, entry)

    # ---- the conversation ----------------------------------------------------------------------

    def user_message(self) -> dict[str, Any]:
        """The prompt (with append_prompt and attachments listed), images as data URLs."""
        text = self.ctx.prompt_with_extras()
        images = [a for a in self.ctx.attachments if a.is_image]
        if not images:
            return {"role": "user", "content": text}
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
        for image in images:
            data = base64.b64encode(image.path.read_bytes()).decode()
            url = f"data:{image.media_type};base64,{data}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        return {"role": "user", "content": parts}

    async def save(self) -> None:
        if self.store is not None:
            await asyncio.to_thread(
                self.store.save, self.session_id, list(self.messages), self.settings.model
            )

    def event(self, event_type: str, raw: Any, entry: dict[str, Any] | None) -> ExecutorEvent:
        return ExecutorEvent(
            executor_event_type=event_type, raw=raw, entry=entry, session_id=self.session_id
        )

    def result(self, outcome: Outcome, message: str) -> ExecutorResult:
        return ExecutorResult(
            outcome=outcome, message=message, usage=self.usage, session_id=self.session_id
        )


async def _withdraw(permissions: Permissions, permission_id: str) -> None:
    """Close a permission request nobody will wait for any more (the run was stopped)."""
    with contextlib.suppress(UnknownPermission):
        permissions.answer(permission_id, "reject", "the run was stopped")
        await permissions.decision(permission_id, timeout_seconds=0)


def _arguments(text: str) -> dict[str, Any] | None:
    """A tool call's arguments as an object ("" counts as no arguments), None if invalid."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _add(total: Usage, more: Usage) -> Usage:
    return Usage(
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
        cache_read_tokens=total.cache_read_tokens + more.cache_read_tokens,
        cache_write_tokens=total.cache_write_tokens + more.cache_write_tokens,
        cost_usd=total.cost_usd + more.cost_usd,
    )
