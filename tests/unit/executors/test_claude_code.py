"""The Claude Code adapter's parser and command line, on streams recorded from the real CLI
(`tests/fixtures/claude_code/`, written by its `record.py`)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from forge.core.events import Usage
from forge.executors import executor_class
from forge.executors.base import Attachment, ExecutorEvent, RunContext
from forge.executors.claude_code import (
    ClaudeCodeExecutor,
    ClaudeStreamParser,
    control_allow,
    control_deny,
    result_usage,
    user_message,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "claude_code"
# Where record.py ran the CLI.
RECORDED_WORKSPACE = Path("/tmp/forge-claude-fixtures/ws")


def replay(name: str, parser: ClaudeStreamParser | None = None) -> list[ExecutorEvent]:
    parser = parser or ClaudeStreamParser(workspace=RECORDED_WORKSPACE)
    events: list[ExecutorEvent] = []
    for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines():
        events.extend(parser.events_for_text(line))
    return events


def entries(events: list[ExecutorEvent], kind: str | None = None) -> list[dict[str, Any]]:
    return [e.entry for e in events if e.entry is not None and kind in (None, e.entry.get("kind"))]


def tool_calls(events: list[ExecutorEvent]) -> list[tuple[str, str, str]]:
    return [(e["tool"], e["action"], e["status"]) for e in entries(events, "tool_call")]


def context(tmp_path: Path, **fields: Any) -> RunContext:
    fields.setdefault("prompt", "make hello")
    fields.setdefault("request_id", "req_1")
    return RunContext(agent_id="ag_1", workspace=tmp_path, **fields)


# ---- recorded streams ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.jsonl")), ids=lambda p: p.stem)
def test_every_line_gives_events_and_keeps_its_json(path: Path) -> None:
    parser = ClaudeStreamParser()
    for line in path.read_text().splitlines():
        events = parser.events_for_text(line)
        assert events
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            assert all(event.raw == value for event in events)
        else:
            assert all(
                event.entry and event.entry["kind"] in ("system", "error") for event in events
            )


def test_hello_session() -> None:
    parser = ClaudeStreamParser(workspace=RECORDED_WORKSPACE)
    events = replay("hello", parser)
    session_id = events[0].session_id
    assert session_id and all(event.session_id == session_id for event in events)
    assert parser.session_id == session_id

    init = events[0]
    assert init.executor_event_type == "system/init"
    assert init.entry == {
        "kind": "system",
        "text": "Claude Code session started",
        "model": "claude-sonnet-4-5",
        "cwd": str(RECORDED_WORKSPACE),
        "permission_mode": "bypassPermissions",
        "version": "2.1.330",
    }
    # Progress events keep their raw event and have no entry.
    assert any(e.executor_event_type == "system/thinking_tokens" and not e.entry for e in events)

    assert [e["text"] for e in entries(events, "thinking")] == [
        "The user wants a script; write it, then run it."
    ]
    assert [e["text"] for e in entries(events, "assistant_message")] == [
        "I'll create hello.py.",
        "Done: hello.py prints hello.",
    ]
    assert tool_calls(events) == [
        ("Write", "file_edit", "running"),
        ("Write", "file_edit", "success"),
        ("Bash", "command_run", "running"),
        ("Bash", "command_run", "success"),
    ]
    write_running, write_done, bash_running, bash_done = entries(events, "tool_call")
    assert write_running["path"] == str(RECORDED_WORKSPACE / "hello.py")
    assert write_running["detail"] == "hello.py"
    assert write_running["input"]["content"] == "print('hello')\n"
    assert write_done["tool_call_id"] == write_running["tool_call_id"]
    assert "File created successfully" in write_done["output"]
    assert bash_running["command"] == bash_running["detail"] == "python3 hello.py"
    assert bash_done["tool_call_id"] == bash_running["tool_call_id"]
    assert bash_done["output"] == "hello"

    result = events[-1]
    assert result.executor_event_type == "result/success"
    [usage] = entries(events, "usage")
    assert usage["input_tokens"] == 300 and usage["output_tokens"] == 60
    assert (usage["cache_read_tokens"], usage["cache_write_tokens"]) == (40, 50)
    assert usage["cost_usd"] > 0 and usage["num_turns"] == 3
    assert parser.usage == Usage(
        input_tokens=300,
        output_tokens=60,
        cache_read_tokens=40,
        cache_write_tokens=50,
        cost_usd=usage["cost_usd"],
    )
    assert parser.final is not None and parser.final["subtype"] == "success"


def test_permission_requests_and_a_denied_tool() -> None:
    events = replay("ask")
    requests = [e for e in events if e.executor_event_type == "control_request/can_use_tool"]
    assert [r.raw["request"]["tool_name"] for r in requests] == ["Write", "Bash"]
    # The executor answers these; the parser only passes them through.
    assert all(r.entry is None for r in requests)
    assert tool_calls(events) == [
        ("Write", "file_edit", "running"),
        ("Write", "file_edit", "success"),
        ("Bash", "command_run", "running"),
        ("Bash", "command_run", "denied"),
    ]
    denied = entries(events, "tool_call")[-1]
    assert denied["error"] == "The user denied this tool call: not now"


def test_interrupted_tool_and_turn() -> None:
    events = replay("interrupt")
    assert tool_calls(events) == [
        ("Bash", "command_run", "running"),
        ("Bash", "command_run", "failed"),
    ]
    assert any(e.executor_event_type == "control_response" for e in events)
    assert entries(events, "user_message") == [
        {"kind": "user_message", "text": "[Request interrupted by user for tool use]"}
    ]
    # Not expecting the interrupt, the error result is an error ...
    [error] = entries(events, "error")
    assert error["code"] == "error_during_execution"
    # ... expecting it, a plain note.
    parser = ClaudeStreamParser()
    parser.stopping = True
    events = replay("interrupt", parser)
    assert not entries(events, "error")
    assert {"kind": "system", "text": "the turn was interrupted"} in entries(events, "system")
    assert parser.usage.input_tokens > 0


def test_a_tool_the_user_refused_reads_as_denied() -> None:
    parser = ClaudeStreamParser()
    lines = (FIXTURES / "interrupt.jsonl").read_text().splitlines()
    tool_use_id = next(
        block["id"]
        for line in lines
        if '"tool_use"' in line
        for block in json.loads(line)["message"]["content"]
    )
    parser.denied(tool_use_id)
    events = [event for line in lines for event in parser.events_for_text(line)]
    assert tool_calls(events)[-1] == ("Bash", "command_run", "denied")


def test_todo_write_is_also_a_todo_entry() -> None:
    events = replay("todo")
    assert tool_calls(events) == [
        ("TodoWrite", "todo", "running"),
        ("TodoWrite", "todo", "success"),
        ("Read", "file_read", "running"),
        ("Read", "file_read", "failed"),
    ]
    assert entries(events, "todo") == [
        {
            "kind": "todo",
            "items": [
                {"content": "Write hello.py", "status": "in_progress"},
                {"content": "Run it", "status": "pending"},
            ],
        }
    ]
    failed = entries(events, "tool_call")[-1]
    assert failed["error"].startswith("File does not exist")
    assert failed["detail"] == "missing.txt"


def test_task_tools_keep_a_todo_list() -> None:
    events = replay("tasks")
    lists = [[(i["content"], i["status"]) for i in e["items"]] for e in entries(events, "todo")]
    assert lists == [
        [("Write hello.py", "pending")],
        [("Write hello.py", "pending"), ("Run it", "pending")],
        [("Write hello.py", "in_progress"), ("Run it", "pending")],
        [("Write hello.py", "completed"), ("Run it", "pending")],
        [("Write hello.py", "completed"), ("Run it", "pending")],  # TaskList
    ]
    assert {call[1] for call in tool_calls(events)} == {"todo"}


def test_model_api_error(tmp_path: Path) -> None:
    parser = ClaudeStreamParser()
    events = replay("api_error", parser)
    errors = entries(events, "error")
    assert errors[0]["code"] == "invalid_request_error"
    assert errors[0]["status"] == 400
    assert "text content blocks must be non-empty" in errors[0]["message"]
    assert not entries(events, "assistant_message")
    executor = ClaudeCodeExecutor()
    executor.parser = parser
    result = executor.result(1, context(tmp_path))
    assert result.outcome == "failed"
    assert "text content blocks must be non-empty" in result.message
    assert result.session_id == parser.session_id


def test_model_api_retry_is_a_system_note() -> None:
    events = replay("api_retry")
    [retry] = [e for e in events if e.executor_event_type == "system/api_retry"]
    assert retry.entry == {
        "kind": "system",
        "text": "model request failed (401); retry 1 of 10",
        "subtype": "api_retry",
    }
    assert entries(events, "assistant_message")[-1]["text"] == "Done after a retry."


def test_resuming_a_missing_session_fails_with_the_cli_message(tmp_path: Path) -> None:
    parser = ClaudeStreamParser()
    events = replay("resume_missing", parser)
    assert events[0].executor_event_type == "result/error_during_execution"
    executor = ClaudeCodeExecutor()
    executor.parser = parser
    result = executor.result(1, context(tmp_path))
    assert (result.outcome, result.exit_code) == ("failed", 1)
    assert result.message == (
        "No conversation found with session ID: 3f1c9a70-0000-4000-8000-000000000000"
    )


def test_malformed_and_truncated_lines_become_entries() -> None:
    parser = ClaudeStreamParser(workspace=RECORDED_WORKSPACE)
    lines = (FIXTURES / "malformed.jsonl").read_text().splitlines()
    per_line = [parser.events_for_text(line) for line in lines]
    truncated, text, array, no_type, bad_message, unknown_result, new_kind = per_line[1:8]
    assert truncated[0].raw is None
    assert truncated[0].entry == {
        "kind": "error",
        "message": "unreadable output line from claude",
        "code": "unreadable_output",
        "raw": lines[1],
    }
    assert text[0].entry == {
        "kind": "system",
        "text": "Warning: something printed as plain text on stdout",
        "stream": "stdout",
    }
    assert array[0].entry is not None and array[0].entry["raw"] == "[1, 2, 3]"
    assert no_type[0].entry is not None and no_type[0].entry["kind"] == "error"
    assert no_type[0].raw == {"subtype": "init", "session_id": "no-type"}
    assert bad_message[0].entry is not None and bad_message[0].entry["kind"] == "error"
    assert unknown_result[0].entry is not None
    assert unknown_result[0].entry["tool"] == "unknown"
    assert new_kind[0].executor_event_type == "brand_new_event"
    assert new_kind[0].entry is None
    # The rest of the stream still reads as the whole session.
    rest = [event for events in per_line[8:] for event in events]
    assert ("Bash", "command_run", "success") in tool_calls(rest)
    assert parser.final is not None and parser.final["subtype"] == "success"


async def test_stderr_lines_and_a_run_without_result(tmp_path: Path) -> None:
    executor = ClaudeCodeExecutor()
    ctx = context(tmp_path)
    events = [e async for e in executor.events_for_line("stderr", "Error: bad flag", ctx)]
    assert [(e.executor_event_type, e.entry) for e in events] == [
        ("stderr", {"kind": "system", "text": "Error: bad flag", "stream": "stderr"})
    ]
    result = executor.result(1, ctx)
    assert (result.outcome, result.exit_code) == ("failed", 1)
    assert result.message == "claude exited with code 1 without a result: Error: bad flag"


def test_usage_without_the_per_turn_breakdown() -> None:
    message = {
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 3,
            "cache_creation_input_tokens": 2,
        },
        "total_cost_usd": 0.5,
    }
    assert result_usage(message) == Usage(
        input_tokens=10, output_tokens=5, cache_read_tokens=3, cache_write_tokens=2, cost_usd=0.5
    )
    assert result_usage({"usage": "nonsense", "total_cost_usd": True}) == Usage()


# ---- what goes to the CLI ------------------------------------------------------------------------


def test_command_line_per_mode(tmp_path: Path) -> None:
    executor = ClaudeCodeExecutor()
    base = ["-p", "--output-format", "stream-json", "--verbose", "--input-format", "stream-json"]
    argv = executor.argv(context(tmp_path))
    assert argv == ["claude", *base, "--permission-mode", "bypassPermissions"]
    argv = executor.argv(context(tmp_path, permission_mode="accept_edits"))
    assert argv[len(base) + 1 :] == [
        "--permission-mode",
        "acceptEdits",
        "--permission-prompt-tool",
        "stdio",
    ]
    argv = executor.argv(
        context(
            tmp_path,
            permission_mode="ask",
            model="claude-sonnet-4-5",
            resume_session_id="s-1",
            settings={
                "command": "/opt/claude --debug",
                "additional_params": ["--max-budget-usd", "2"],
                "system_prompt": "Be brief.",
            },
        )
    )
    assert argv == [
        "/opt/claude",
        "--debug",
        *base,
        "--permission-mode",
        "default",
        "--permission-prompt-tool",
        "stdio",
        "--model",
        "claude-sonnet-4-5",
        "--resume",
        "s-1",
        "--append-system-prompt",
        "Be brief.",
        "--max-budget-usd",
        "2",
    ]


def test_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("forge.executors.claude_code._is_root", lambda: True)
    executor = ClaudeCodeExecutor()
    home = tmp_path / "home"
    env = executor.environment(
        context(tmp_path, home=home, env={"ANTHROPIC_API_KEY": "k", "DISABLE_TELEMETRY": "0"})
    )
    assert env["ANTHROPIC_API_KEY"] == "k"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["DISABLE_AUTOUPDATER"] == "1"
    assert env["DISABLE_TELEMETRY"] == "0"  # the run's own env wins
    assert env["HOME"] == str(home)
    assert env["CLAUDE_CODE_TMPDIR"].startswith(str(home))
    assert env["IS_SANDBOX"] == "1"  # bypass as root
    env = executor.environment(context(tmp_path, permission_mode="ask"))
    assert "IS_SANDBOX" not in env
    monkeypatch.setattr("forge.executors.claude_code._is_root", lambda: False)
    assert "IS_SANDBOX" not in executor.environment(context(tmp_path))


def test_user_message_carries_images(tmp_path: Path) -> None:
    png = tmp_path / "shot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\0" * (5 * 1024 * 1024 + 1))
    ctx = context(
        tmp_path,
        resume_session_id="s-1",
        settings={"append_prompt": "Be careful."},
        attachments=(
            Attachment("shot.png", "image/png", png),
            Attachment("notes.txt", "text/plain", notes),
            Attachment("huge.png", "image/png", huge),
        ),
    )
    message = user_message(ctx)
    assert message["type"] == "user" and message["session_id"] == "s-1"
    text, image = message["message"]["content"]
    assert text["type"] == "text"
    assert text["text"].startswith("make hello\n\nBe careful.")
    assert "notes.txt (text/plain)" in text["text"] and "huge.png" in text["text"]
    assert image == {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(png.read_bytes()).decode(),
        },
    }


def test_control_responses() -> None:
    assert control_allow("r1", {"command": "ls"}) == {
        "type": "control_response",
        "response": {
            "subtype": "success",
            "request_id": "r1",
            "response": {"behavior": "allow", "updatedInput": {"command": "ls"}},
        },
    }
    assert control_deny("r2", "no")["response"]["response"] == {
        "behavior": "deny",
        "message": "no",
    }


def test_registered_kind() -> None:
    cls = executor_class("claude_code")
    assert cls is ClaudeCodeExecutor
    assert set(cls.permission_modes) == {"bypass", "accept_edits", "ask"}
    assert {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "CLAUDE_CODE_OAUTH_TOKEN"} <= set(
        cls.credential_env
    )
