"""`GeminiStream`, `GeminiExecutor.argv` and the settings file, on streams recorded from the real
Gemini CLI.

tests/fixtures/gemini/: `hello`, `resume_failed_tools`, `auto_edit_denied`, `interrupted` and
`http_error` were recorded from gemini 0.61.0 (`-p "" --output-format stream-json`) against the
scripted server; `malformed` is recorded lines with one cut short and lines that are no Gemini
event; `other_events` holds shapes the scripted runs do not produce (a whole assistant message,
a policy denial, warning and error events, cached tokens), written after the CLI's
`StreamJsonFormatter` output in its bundle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forge.core.events import Usage
from forge.executors import ExecutorEvent, RunContext, executor_class
from forge.executors.gemini import GeminiExecutor, GeminiStream, write_settings

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "gemini"


def read(name: str) -> tuple[GeminiStream, list[ExecutorEvent]]:
    stream = GeminiStream()
    events: list[ExecutorEvent] = []
    for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines():
        if line.strip():
            events += stream.events(line)
    return stream, events + stream.flush()


def entries(events: list[ExecutorEvent]) -> list[dict[str, Any]]:
    return [e.entry for e in events if e.entry is not None]


def test_hello_run() -> None:
    stream, events = read("hello")
    session = "fa7fcad1-8941-4c97-8657-b973be57b440"
    assert events[0].session_id == session and stream.session_id == session
    assert entries(events) == [
        {
            "kind": "system",
            "text": "gemini session started",
            "session_id": session,
            "model": "gemini-2.5-flash",
        },
        {"kind": "user_message", "text": "Create hello.py that prints hello, then run it."},
        {"kind": "assistant_message", "text": "I will create hello.py and run it."},
        {
            "kind": "tool_call",
            "tool": "write_file",
            "action": "file_edit",
            "status": "running",
            "tool_call_id": "write_file__call_65208ad016bc",
            "detail": "hello.py",
            "path": "hello.py",
            "input": {"file_path": "hello.py", "content": "print('hello')\n"},
        },
        {
            "kind": "tool_call",
            "tool": "write_file",
            "action": "file_edit",
            "status": "success",
            "tool_call_id": "write_file__call_65208ad016bc",
            "detail": "hello.py",
            "path": "hello.py",
            "input": {"file_path": "hello.py", "content": "print('hello')\n"},
        },
        {
            "kind": "tool_call",
            "tool": "run_shell_command",
            "action": "command_run",
            "status": "running",
            "tool_call_id": "run_shell_command__call_1d363cd4157d",
            "detail": "python3 hello.py",
            "command": "python3 hello.py",
            "input": {"command": "python3 hello.py"},
        },
        {
            "kind": "tool_call",
            "tool": "run_shell_command",
            "action": "command_run",
            "status": "success",
            "tool_call_id": "run_shell_command__call_1d363cd4157d",
            "detail": "python3 hello.py",
            "command": "python3 hello.py",
            "input": {"command": "python3 hello.py"},
            "output": "hello",
        },
        {"kind": "assistant_message", "text": "hello.py prints hello."},
        {"kind": "usage", **Usage(input_tokens=300, output_tokens=60).model_dump()},
    ]
    # The text pieces pass through raw, without entries; the whole message follows them.
    deltas = [e for e in events if e.raw and e.raw.get("delta")]
    assert len(deltas) == 5 and all(d.entry is None for d in deltas)
    assert stream.completed and not stream.failure
    assert stream.usage == Usage(input_tokens=300, output_tokens=60)


def test_failed_tools() -> None:
    stream, events = read("resume_failed_tools")
    calls = [e for e in entries(events) if e["kind"] == "tool_call"]
    assert [(c["tool"], c["action"], c["status"]) for c in calls] == [
        ("run_shell_command", "command_run", "running"),
        ("read_file", "file_read", "running"),
        # Gemini CLI reports a command that exits non-zero as a successful tool call.
        ("run_shell_command", "command_run", "success"),
        ("read_file", "file_read", "failed"),
    ]
    assert calls[3]["error"] == "File not found: /tmp/gm/rec/ws/missing.txt"
    assert stream.usage == Usage(input_tokens=200, output_tokens=40)


def test_tool_the_approval_mode_does_not_offer_is_denied() -> None:
    _, events = read("auto_edit_denied")
    finished = [e for e in entries(events) if e["kind"] == "tool_call" and e["status"] != "running"]
    assert [(c["tool"], c["status"]) for c in finished] == [
        ("write_file", "success"),
        ("run_shell_command", "denied"),
    ]
    assert finished[1]["error"].startswith('Tool "run_shell_command" not found')


def test_interrupted_run_has_no_result() -> None:
    stream, events = read("interrupted")
    assert [e["kind"] for e in entries(events)] == ["system", "user_message", "tool_call"]
    assert not stream.completed and stream.usage == Usage()


def test_api_error_fails_the_run() -> None:
    stream, events = read("http_error")
    last = entries(events)[-1]
    assert (last["kind"], last["code"]) == ("error", "result_error")
    assert "no scripted route" in stream.failure
    assert stream.completed


def test_other_events() -> None:
    stream, events = read("other_events")
    found = entries(events)
    assert found[1] == {"kind": "assistant_message", "text": "A whole message."}
    assert (found[2]["action"], found[2]["detail"], found[2]["path"]) == ("search", "hello", ".")
    assert found[3]["status"] == "success"
    assert (found[4]["tool"], found[4]["status"], found[4]["error"]) == (
        "unknown",
        "denied",
        "denied by policy",
    )
    assert found[5] == {
        "kind": "system",
        "text": "Loop detected, stopping execution",
        "level": "warning",
    }
    assert found[6] == {
        "kind": "error",
        "message": "Maximum session turns exceeded",
        "code": "gemini_error",
    }
    assert stream.usage == Usage(input_tokens=400, cache_read_tokens=600, output_tokens=40)


def test_malformed_and_truncated_lines_become_entries() -> None:
    stream, events = read("malformed")
    found = entries(events)
    assert [e["kind"] for e in found] == [
        "system",  # init
        "assistant_message",  # the delta before the broken line
        "error",  # the truncated tool_use
        "system",  # plain text
        "system",  # a JSON string
        "system",  # a type that is no string
        "system",  # an event type the CLI may add later
        "assistant_message",  # the delta before the result
        "usage",
    ]
    assert found[1]["text"] == "I will creat"
    assert found[2]["code"] == "unparsable_event"
    assert found[2]["raw"].startswith('{"type":"tool_use"')
    assert found[3] == {"kind": "system", "text": "plain text on stdout", "stream": "stdout"}
    assert found[6]["text"] == "unknown gemini event telemetry"
    assert stream.completed


@pytest.mark.parametrize(
    "line", ["", "{", '{"type":', "\x00", "[" * 100_000, '{"type": "result", "stats": 3}']
)
def test_garbage_never_raises(line: str) -> None:
    events = GeminiStream().events(line)
    assert events and all(e.entry is not None for e in events)


def context(tmp_path: Path, **fields: Any) -> RunContext:
    return RunContext(
        request_id="req_1", agent_id="ag_1", workspace=tmp_path, prompt="hi", **fields
    )


def test_argv(tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        settings={"command": "node /opt/gemini.js", "additional_params": "--debug"},
        model="gemini-2.5-pro",
        resume_session_id="s-1",
        permission_mode="accept_edits",
    )
    assert GeminiExecutor().argv(ctx) == [
        "node",
        "/opt/gemini.js",
        "-p",
        "",
        "--output-format",
        "stream-json",
        "--approval-mode",
        "auto_edit",
        "-m",
        "gemini-2.5-pro",
        "--resume",
        "s-1",
        "--debug",
    ]
    plain = GeminiExecutor().argv(context(tmp_path))
    assert plain == [
        "gemini",
        "-p",
        "",
        "--output-format",
        "stream-json",
        "--approval-mode",
        "yolo",
    ]


def test_environment(tmp_path: Path) -> None:
    env = GeminiExecutor().environment(context(tmp_path, env={"GEMINI_TELEMETRY_ENABLED": "true"}))
    assert env["GEMINI_CLI_TRUST_WORKSPACE"] == "true"
    assert env["GEMINI_TELEMETRY_ENABLED"] == "false"


def test_settings_are_merged(tmp_path: Path) -> None:
    path = tmp_path / ".gemini" / "settings.json"
    path.parent.mkdir()
    path.write_text(
        json.dumps({"ui": {"theme": "x"}, "telemetry": {"enabled": True, "target": "y"}})
    )
    write_settings(path, {"GEMINI_API_KEY": "k"})
    settings = json.loads(path.read_text())
    assert settings["ui"] == {"theme": "x"}
    assert settings["telemetry"] == {"enabled": False, "target": "y"}
    assert settings["security"] == {"auth": {"selectedType": "gemini-api-key"}}
    assert settings["general"]["enableAutoUpdate"] is False
    assert settings["ide"] == {"enabled": False}

    # A chosen auth type is kept; Vertex AI users get none forced on them.
    path.write_text(json.dumps({"security": {"auth": {"selectedType": "oauth-personal"}}}))
    write_settings(path, {"GEMINI_API_KEY": "k"})
    assert json.loads(path.read_text())["security"]["auth"]["selectedType"] == "oauth-personal"
    other = tmp_path / "other.json"
    write_settings(other, {"GEMINI_API_KEY": "k", "GOOGLE_GENAI_USE_VERTEXAI": "true"})
    assert "security" not in json.loads(other.read_text())
    # A broken file is replaced, not fatal.
    path.write_text("{not json")
    write_settings(path, {})
    assert json.loads(path.read_text())["privacy"] == {"usageStatisticsEnabled": False}


def test_registered_kind_and_modes() -> None:
    assert executor_class("gemini") is GeminiExecutor
    assert GeminiExecutor.permission_modes == ("bypass", "accept_edits")
    assert {"GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL"} <= set(GeminiExecutor.credential_env)
