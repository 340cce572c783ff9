"""The `codex` executor: OpenAI's Codex CLI, one `codex exec --json` process per run.

The prompt goes to stdin (`-` as the prompt argument); a later message continues the thread
with `codex exec resume <thread_id>`. Codex prints one JSON event a line (`thread.started`,
`turn.started`, `item.started`/`item.updated`/`item.completed`, `turn.completed`,
`turn.failed`, `error`); `CodexStream` turns them into entries. Its configuration and session
store live in `$HOME/.codex` (the run's private home).

The endpoint: with `OPENAI_BASE_URL` in the run's environment, Codex is given a model provider
for it (Responses API, key from `OPENAI_API_KEY` or `CODEX_API_KEY`), because Codex's built-in
OpenAI provider ignores that variable; without it, Codex's own defaults apply.

`codex exec` cannot ask anyone: it forces the approval policy to "never", so a tool call that
needs approval is refused on the spot. Hence no `ask` permission mode (docs/executors/codex.md).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from forge.core.events import Usage
from forge.executors import entries
from forge.executors.base import (
    ExecutorEvent,
    ExecutorOutput,
    ExecutorResult,
    PermissionMode,
    RunContext,
)
from forge.executors.process import ProcessExecutor, Stream, stderr_event

# Codex's counters in `turn.completed.usage` and the `Usage` fields they feed.
_USAGE_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
)
# The name of the model provider Forge defines for an `OPENAI_BASE_URL` endpoint.
_PROVIDER = "forge"


class CodexExecutor(ProcessExecutor):
    """Runs `codex exec --json` (or `codex exec resume`) in the workspace."""

    kind = "codex"
    credential_env = ("OPENAI_API_KEY", "CODEX_API_KEY", "OPENAI_BASE_URL")
    permission_modes: ClassVar[tuple[PermissionMode, ...]] = ("bypass", "accept_edits")

    def __init__(self) -> None:
        super().__init__()
        self.stream = CodexStream()

    async def run(self, ctx: RunContext) -> AsyncGenerator[ExecutorOutput, None]:
        self.stream = CodexStream(ctx.state_dir)
        # Codex runs commands in a pty, a session of its own: ProcessExecutor also ends what
        # they leave in the background (`forge.executors.strays`).
        async for output in super().run(ctx):
            yield output

    def argv(self, ctx: RunContext) -> list[str]:
        args = [*ctx.program("codex"), "exec"]
        if ctx.resume_session_id:
            args.append("resume")
        args += ["--json", "--skip-git-repo-check"]
        if ctx.permission_mode == "bypass":
            # Forge's sandbox does the isolating; Codex's own may not work inside it.
            args.append("--dangerously-bypass-approvals-and-sandbox")
        else:  # accept_edits: edits and commands inside the workspace, nothing else
            args += ["-c", 'sandbox_mode="workspace-write"']
        args += provider_overrides(self.environment(ctx))
        if ctx.model:
            args += ["-m", ctx.model]
        for attachment in ctx.attachments:
            if attachment.is_image:
                args += ["-i", str(attachment.path)]
        args += ctx.extra_args()
        if ctx.resume_session_id:
            args.append(ctx.resume_session_id)
        args.append("-")  # the prompt comes on stdin
        return args

    async def events_for_line(
        self, stream: Stream, text: str, ctx: RunContext
    ) -> AsyncIterator[ExecutorEvent]:
        if stream == "stderr":
            yield stderr_event(text)
            return
        yield self.stream.event(text)

    def result(self, returncode: int, ctx: RunContext) -> ExecutorResult:
        return self.turn_result(
            returncode,
            program="codex",
            completed=self.stream.completed,
            failure=self.stream.failure,
            incomplete="ended without completing the turn",
            usage=self.stream.usage,
            session_id=self.stream.session_id,
        )


def provider_overrides(env: Mapping[str, str]) -> list[str]:
    """`-c` arguments that point Codex at `OPENAI_BASE_URL`, when it is set."""
    base_url = env.get("OPENAI_BASE_URL", "").strip()
    if not base_url:
        return []
    provider = {"name": "Forge endpoint", "base_url": base_url, "wire_api": "responses"}
    key_env = next((name for name in ("OPENAI_API_KEY", "CODEX_API_KEY") if env.get(name)), "")
    if key_env:
        provider["env_key"] = key_env
    table = ", ".join(f"{key} = {json.dumps(value)}" for key, value in provider.items())
    return [
        "-c",
        f'model_provider="{_PROVIDER}"',
        "-c",
        f"model_providers.{_PROVIDER}={{ {table} }}",
    ]


class CodexStream:
    """Reads the JSONL of one `codex exec --json` run: entries, session id, usage, failure.

    Codex reports the whole thread's token counters at the end of each turn; the counters at
    the end of the previous run are kept in `state_dir` so a run reports only what it used
    (without a state dir, a resumed run reports the thread's totals).
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir
        self.session_id = ""
        self.usage = Usage()
        self.completed = False
        self.failure = ""

    def event(self, text: str) -> ExecutorEvent:
        """The event one stdout line stands for (never raises)."""
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            if text.lstrip().startswith(("{", "[")):  # a broken or truncated event
                broken = entries.error("unreadable codex event", code="unparsable_event", raw=text)
                return ExecutorEvent(executor_event_type="", raw=None, entry=broken)
            return ExecutorEvent(
                executor_event_type="", raw=None, entry=entries.system(text, stream="stdout")
            )
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            odd = entries.system(f"unexpected codex output: {text}", stream="stdout")
            return ExecutorEvent(executor_event_type="", raw=value, entry=odd)
        kind: str = value["type"]
        entry = self._entry(kind, value)
        session_id = self.session_id if kind == "thread.started" else ""
        return ExecutorEvent(
            executor_event_type=kind, raw=value, entry=entry, session_id=session_id
        )

    # ---- one event -----------------------------------------------------------------------------

    def _run_usage(self, totals: dict[str, int]) -> Usage:
        """What this run used, from the thread's counters now and after the last run."""
        before: dict[str, int] = {}
        ledger = self._ledger()
        if ledger is not None:
            before = _read_counters(ledger)
            _write_counters(ledger, totals)
        spent = {name: max(0, totals[name] - before.get(name, 0)) for name in _USAGE_FIELDS}
        return Usage(
            # Codex's input count includes the cached part; Forge counts them apart.
            input_tokens=max(0, spent["input_tokens"] - spent["cached_input_tokens"]),
            output_tokens=spent["output_tokens"],
            cache_read_tokens=spent["cached_input_tokens"],
            cache_write_tokens=spent["cache_write_input_tokens"],
        )

    def _ledger(self) -> Path | None:
        if self.state_dir is None or not self.session_id:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in self.session_id)
        return self.state_dir / "codex" / f"usage-{safe}.json"

    def _entry(self, kind: str, value: dict[str, Any]) -> dict[str, Any] | None:
        if kind == "thread.started":
            thread_id = value.get("thread_id")
            if isinstance(thread_id, str) and thread_id:
                self.session_id = thread_id
            return entries.system("codex thread started", session_id=self.session_id or None)
        if kind == "turn.started":
            return None
        if kind in ("item.started", "item.updated", "item.completed"):
            item = value.get("item")
            if not isinstance(item, dict):
                return entries.error(f"codex {kind} without an item", code="unknown_event")
            return _item_entry(kind.removeprefix("item."), item)
        if kind == "turn.completed":
            self.completed = True
            usage = value.get("usage")
            if isinstance(usage, dict):
                self.usage = self._run_usage(
                    {name: _int(usage.get(name)) for name in _USAGE_FIELDS}
                )
            return entries.usage(self.usage)
        if kind == "turn.failed":
            self.failure = _message(value.get("error")) or "the turn failed"
            return entries.error(self.failure, code="turn_failed")
        if kind == "error":
            message = _message(value) or "codex error"
            if message.startswith("Reconnecting..."):  # a retry Codex reports; not the end
                return entries.system(message, level="warning")
            return entries.error(message, code="codex_error")
        return entries.system(f"unknown codex event {kind}")


def _item_entry(phase: str, item: dict[str, Any]) -> dict[str, Any] | None:
    """The entry for one item event; `phase` is started, updated or completed."""
    item_type = item.get("type")
    item_id = item.get("id") if isinstance(item.get("id"), str) else None
    done = phase == "completed"
    if item_type == "agent_message":
        return entries.assistant_message(_text(item)) if done else None
    if item_type == "reasoning":
        return entries.thinking(_text(item)) if done else None
    if item_type == "command_execution":
        command = _text(item, "command")
        status = _tool_status(item, done, ok=item.get("exit_code") in (0, None))
        return entries.tool_call(
            "command_execution",
            status,
            tool_call_id=item_id,
            action="command_run",
            command=command,
            detail=command,
            input={"command": command},
            output=item.get("aggregated_output") if done else None,
            error=_exit_error(item) if status == "failed" else None,
        )
    if item_type == "file_change":
        changes = [c for c in item.get("changes") or [] if isinstance(c, dict)]
        paths = [str(c.get("path", "")) for c in changes]
        detail = ", ".join(f"{c.get('kind', 'update')} {c.get('path', '')}" for c in changes)
        return entries.tool_call(
            "file_change",
            _tool_status(item, done),
            tool_call_id=item_id,
            action="file_edit",
            path=paths[0] if len(paths) == 1 else None,
            detail=detail,
            input={"changes": changes},
        )
    if item_type == "mcp_tool_call":
        server, tool = _text(item, "server"), _text(item, "tool")
        status = _tool_status(item, done, ok=not item.get("error"))
        return entries.tool_call(
            f"mcp__{server}__{tool}",
            status,
            tool_call_id=item_id,
            action="mcp",
            detail=f"{server}.{tool}",
            input=item.get("arguments"),
            output=item.get("result") if done else None,
            error=_message(item.get("error")) if status == "failed" else None,
        )
    if item_type == "web_search":
        query = _text(item, "query")
        return entries.tool_call(
            "web_search",
            "success" if done else "running",
            tool_call_id=item_id,
            action="search",
            detail=query,
            input={"query": query, "action": item.get("action")},
        )
    if item_type == "todo_list":
        todos = [
            {
                "content": str(todo.get("text", "")),
                "status": "completed" if todo.get("completed") else "pending",
            }
            for todo in item.get("items") or []
            if isinstance(todo, dict)
        ]
        return entries.todo(todos)
    if item_type == "error":
        return entries.error(_text(item, "message") or "codex error", code="codex_item_error")
    if not done:
        return None
    return entries.system(f"codex item {item_type}", item_type=str(item_type))


def _tool_status(
    item: dict[str, Any], done: bool, *, ok: bool = True
) -> Literal["running", "success", "failed", "denied"]:
    status = item.get("status")
    if status == "declined":
        return "denied"
    if status == "failed" or (done and not ok):
        return "failed"
    if done or status == "completed":
        return "success"
    return "running"


def _exit_error(item: dict[str, Any]) -> str:
    code = item.get("exit_code")
    return f"exit code {code}" if isinstance(code, int) else "the command failed"


def _text(item: dict[str, Any], key: str = "text") -> str:
    value = item.get(key)
    return value if isinstance(value, str) else ""


def _message(value: Any) -> str:
    if isinstance(value, dict):
        message = value.get("message")
        return message if isinstance(message, str) else ""
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _read_counters(path: Path) -> dict[str, int]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {name: _int(value.get(name)) for name in _USAGE_FIELDS}


def _write_counters(path: Path, counters: dict[str, int]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(counters))
    except OSError:
        pass  # usage then counts from the thread's start next time; not worth failing a run
