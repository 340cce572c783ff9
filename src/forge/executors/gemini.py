"""The `gemini` executor: Google's Gemini CLI in headless mode, one process per run.

`gemini -p "" --output-format stream-json` with the prompt on stdin (Gemini CLI prepends its
stdin to the `-p` text); a later message continues the session with `--resume <session_id>`.
The CLI prints one JSON event a line (`init`, `message`, `tool_use`, `tool_result`, `error`,
`result`); `GeminiStream` turns them into entries. Assistant text comes in `delta` pieces: each
piece is passed on as it comes (raw, without an entry) and the whole message becomes one
`assistant_message` entry when it ends.

Before each run the executor writes the settings headless runs need into the run's private
home (`~/.gemini/settings.json`, merged with what is there): API-key authentication when
`GEMINI_API_KEY` is given (with `GOOGLE_GEMINI_BASE_URL` the CLI would otherwise pick its
"gateway" mode, which headless mode refuses), and no telemetry, usage statistics, update checks
or IDE connection, so the CLI never waits on a network it cannot reach.

Headless Gemini CLI cannot ask anyone: a tool that needs approval is not offered to the model
at all. Hence no `ask` permission mode (docs/executors/gemini.md).
"""

from __future__ import annotations

import asyncio
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

_APPROVAL_MODES: dict[str, str] = {"bypass": "yolo", "accept_edits": "auto_edit"}

# Settings Forge always applies: nothing that reaches out to Google on its own.
_QUIET_SETTINGS: dict[str, dict[str, Any]] = {
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "ide": {"enabled": False},
}


class GeminiExecutor(ProcessExecutor):
    """Runs `gemini -p "" --output-format stream-json` in the workspace."""

    kind = "gemini"
    credential_env = (
        "GEMINI_API_KEY",
        "GOOGLE_GEMINI_BASE_URL",
        "GOOGLE_API_KEY",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
        "GOOGLE_VERTEX_BASE_URL",
    )
    permission_modes: ClassVar[tuple[PermissionMode, ...]] = ("bypass", "accept_edits")

    def __init__(self) -> None:
        super().__init__()
        self.stream = GeminiStream()

    async def run(self, ctx: RunContext) -> AsyncGenerator[ExecutorOutput, None]:
        self.stream = GeminiStream()
        if ctx.home is not None:
            settings_path = ctx.home / ".gemini" / "settings.json"
            await asyncio.to_thread(write_settings, settings_path, self.environment(ctx))
        # Gemini CLI starts each shell command in a session of its own; ProcessExecutor ends
        # those too (`forge.executors.strays`).
        async for output in super().run(ctx):
            if isinstance(output, ExecutorResult):
                # Text of a message cut short (an interrupted run) still becomes an entry.
                for event in self.stream.flush():
                    yield event
            yield output

    def argv(self, ctx: RunContext) -> list[str]:
        args = [*ctx.program("gemini"), "-p", "", "--output-format", "stream-json"]
        args += ["--approval-mode", _APPROVAL_MODES.get(ctx.permission_mode, "yolo")]
        if ctx.model:
            args += ["-m", ctx.model]
        if ctx.resume_session_id:
            args += ["--resume", ctx.resume_session_id]
        return args + ctx.extra_args()

    def environment(self, ctx: RunContext) -> dict[str, str]:
        env = super().environment(ctx)
        # The workspace is Forge's own; the CLI would otherwise refuse to act in an untrusted
        # folder. One process instead of the CLI relaunching itself with more heap.
        env.setdefault("GEMINI_CLI_TRUST_WORKSPACE", "true")
        env.setdefault("GEMINI_CLI_NO_RELAUNCH", "true")
        env["GEMINI_TELEMETRY_ENABLED"] = "false"
        return env

    async def events_for_line(
        self, stream: Stream, text: str, ctx: RunContext
    ) -> AsyncIterator[ExecutorEvent]:
        if stream == "stderr":
            yield stderr_event(text)
            return
        for event in self.stream.events(text):
            yield event

    def result(self, returncode: int, ctx: RunContext) -> ExecutorResult:
        return self.turn_result(
            returncode,
            program="gemini",
            completed=self.stream.completed,
            failure=self.stream.failure,
            incomplete="ended without a result",
            usage=self.stream.usage,
            session_id=self.stream.session_id,
        )


def write_settings(path: Path, env: Mapping[str, str]) -> None:
    """Merge what a headless run needs into the CLI's user settings file at `path`."""
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {}
    settings: dict[str, Any] = current if isinstance(current, dict) else {}
    for section, values in _QUIET_SETTINGS.items():
        part = settings.get(section)
        settings[section] = {**(part if isinstance(part, dict) else {}), **values}
    uses_other_auth = any(
        env.get(name) == "true" for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA")
    )
    if env.get("GEMINI_API_KEY") and not uses_other_auth:
        security = settings.get("security")
        security = security if isinstance(security, dict) else {}
        auth = security.get("auth")
        auth = auth if isinstance(auth, dict) else {}
        auth.setdefault("selectedType", "gemini-api-key")
        settings["security"] = {**security, "auth": auth}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


class GeminiStream:
    """Reads the stream-json of one headless Gemini CLI run: entries, session, usage, failure."""

    def __init__(self) -> None:
        self.session_id = ""
        self.usage = Usage()
        self.completed = False
        self.failure = ""
        # The assistant message being streamed, piece by piece.
        self._text: list[str] = []
        # Tool calls seen in `tool_use`, by id: their name and parameters, for `tool_result`.
        self._tools: dict[str, tuple[str, dict[str, Any]]] = {}

    def events(self, text: str) -> list[ExecutorEvent]:
        """The events one stdout line stands for (never raises)."""
        event = self._event(text)
        if _is_text_piece(event.raw):
            self._text.append(_str(event.raw.get("content")))
            return [event]
        # Anything else ends the message being streamed.
        return [*self.flush(), event]

    def flush(self) -> list[ExecutorEvent]:
        """The streamed assistant message so far as one entry (none when there is no text)."""
        text, self._text = "".join(self._text), []
        if not text.strip():
            return []
        # Stands for the `delta` events before it, which carry the raw pieces.
        return [
            ExecutorEvent(
                executor_event_type="message",
                raw=None,
                entry=entries.assistant_message(text),
            )
        ]

    # ---- one event -----------------------------------------------------------------------------

    def _event(self, text: str) -> ExecutorEvent:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            if text.lstrip().startswith(("{", "[")):  # a broken or truncated event
                broken = entries.error("unreadable gemini event", code="unparsable_event", raw=text)
                return ExecutorEvent(executor_event_type="", raw=None, entry=broken)
            plain = entries.system(text, stream="stdout")
            return ExecutorEvent(executor_event_type="", raw=None, entry=plain)
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            odd = entries.system(f"unexpected gemini output: {text}", stream="stdout")
            return ExecutorEvent(executor_event_type="", raw=value, entry=odd)
        kind: str = value["type"]
        if _is_text_piece(value):  # an entry once the message is whole (`flush`)
            return ExecutorEvent(executor_event_type=kind, raw=value, entry=None)
        entry = self._entry(kind, value)
        session_id = self.session_id if kind == "init" else ""
        return ExecutorEvent(
            executor_event_type=kind, raw=value, entry=entry, session_id=session_id
        )

    def _entry(self, kind: str, value: dict[str, Any]) -> dict[str, Any] | None:
        if kind == "init":
            session_id = value.get("session_id")
            if isinstance(session_id, str) and session_id:
                self.session_id = session_id
            model = value.get("model") if isinstance(value.get("model"), str) else None
            return entries.system(
                "gemini session started", session_id=self.session_id or None, model=model
            )
        if kind == "message":
            content = _str(value.get("content"))
            if value.get("role") == "user":
                return entries.user_message(content)
            return entries.assistant_message(content) if content.strip() else None
        if kind == "tool_use":
            return self._tool_use(value)
        if kind == "tool_result":
            return self._tool_result(value)
        if kind == "error":
            message = _str(value.get("message")) or "gemini error"
            if value.get("severity") == "warning":
                return entries.system(message, level="warning")
            return entries.error(message, code="gemini_error")
        if kind == "result":
            return self._result(value)
        return entries.system(f"unknown gemini event {kind}")

    def _tool_use(self, value: dict[str, Any]) -> dict[str, Any]:
        name = _str(value.get("tool_name")) or "unknown"
        tool_id = _str(value.get("tool_id")) or None
        parameters = value.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else {}
        if tool_id:
            self._tools[tool_id] = (name, parameters)
        return entries.tool_call(name, "running", tool_call_id=tool_id, **_described(parameters))

    def _tool_result(self, value: dict[str, Any]) -> dict[str, Any]:
        tool_id = _str(value.get("tool_id")) or None
        name, parameters = self._tools.get(tool_id or "", ("unknown", {}))
        error = value.get("error")
        error = error if isinstance(error, dict) else {}
        status: Literal["success", "failed", "denied"] = "success"
        if value.get("status") != "success":
            # A call the policy refused is reported as an error of this type.
            denied = error.get("type") in ("tool_not_registered", "policy_violation")
            status = "denied" if denied else "failed"
        return entries.tool_call(
            name,
            status,
            tool_call_id=tool_id,
            output=value.get("output"),
            error=_str(error.get("message")) or None,
            **_described(parameters),
        )

    def _result(self, value: dict[str, Any]) -> dict[str, Any]:
        self.completed = True
        stats = value.get("stats")
        stats = stats if isinstance(stats, dict) else {}
        cached = _int(stats.get("cached"))
        # `input` is the part of the prompt not served from the cache.
        fresh = (
            _int(stats["input"]) if "input" in stats else _int(stats.get("input_tokens")) - cached
        )
        self.usage = Usage(
            input_tokens=max(0, fresh),
            output_tokens=_int(stats.get("output_tokens")),
            cache_read_tokens=cached,
        )
        if value.get("status") != "success":
            error = value.get("error")
            self.failure = (
                _str(error.get("message")) if isinstance(error, dict) else ""
            ) or "gemini reported an error"
            return entries.error(self.failure, code="result_error")
        return entries.usage(self.usage)


def _is_text_piece(value: Any) -> bool:
    """Whether a raw event is a piece (`delta`) of a streamed assistant message."""
    return (
        isinstance(value, dict)
        and value.get("type") == "message"
        and value.get("role") == "assistant"
        and bool(value.get("delta"))
    )


def _described(parameters: dict[str, Any]) -> dict[str, Any]:
    """`input` plus the `path`, `command` and one-line `detail` of a tool's parameters."""
    path = next(
        (
            _str(parameters.get(key))
            for key in ("file_path", "absolute_path", "path", "dir_path")
            if _str(parameters.get(key))
        ),
        "",
    )
    command = _str(parameters.get("command"))
    pattern = _str(parameters.get("pattern")) or _str(parameters.get("query"))
    return {
        "input": parameters or None,
        "path": path or None,
        "command": command or None,
        "detail": command or pattern or path or None,
    }


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
