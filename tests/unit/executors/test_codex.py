"""`CodexStream` and `CodexExecutor.argv` on streams recorded from the real `codex exec --json`.

tests/fixtures/codex/: `hello`, `resume_failed_command`, `interrupted` and `http_error` were
recorded from codex 0.169.0 against the scripted server; `malformed` is recorded lines with
one cut short and lines that are no Codex event; `other_items` holds item shapes the scripted
runs do not produce (todo list, MCP call, web search, failed file change), written after
Codex's `exec_events.rs`, and a recorded `error` item.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forge.core.events import Usage
from forge.executors import ExecutorEvent, RunContext, executor_class
from forge.executors.base import Attachment
from forge.executors.codex import CodexExecutor, CodexStream, provider_overrides

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "codex"


def read(name: str, state_dir: Path | None = None) -> tuple[CodexStream, list[ExecutorEvent]]:
    stream = CodexStream(state_dir)
    lines = (FIXTURES / f"{name}.jsonl").read_text().splitlines()
    return stream, [stream.event(line) for line in lines if line.strip()]


def kinds(events: list[ExecutorEvent]) -> list[str | None]:
    return [e.entry["kind"] if e.entry else None for e in events]


def test_hello_run() -> None:
    stream, events = read("hello")
    session = "01a1ffdf-e3c1-7370-a025-752cf9ef7715"
    assert [e.executor_event_type for e in events] == [
        "thread.started",
        "turn.started",
        "item.completed",
        "item.completed",
        "item.started",
        "item.completed",
        "item.started",
        "item.completed",
        "item.completed",
        "turn.completed",
    ]
    assert events[0].session_id == session and stream.session_id == session
    assert events[0].entry == {
        "kind": "system",
        "text": "codex thread started",
        "session_id": session,
    }
    assert events[1].entry is None
    assert events[2].entry == {"kind": "thinking", "text": "Write the file, then run it."}
    assert events[3].entry == {
        "kind": "assistant_message",
        "text": "I will create hello.py and run it.",
    }
    path = "/tmp/cx/rec/ws/hello.py"
    assert events[4].entry == {
        "kind": "tool_call",
        "tool": "file_change",
        "action": "file_edit",
        "status": "running",
        "tool_call_id": "item_2",
        "detail": f"add {path}",
        "path": path,
        "input": {"changes": [{"path": path, "kind": "add"}]},
    }
    assert events[5].entry is not None and events[5].entry["status"] == "success"
    command = "/bin/bash -lc 'python3 hello.py'"
    assert events[6].entry == {
        "kind": "tool_call",
        "tool": "command_execution",
        "action": "command_run",
        "status": "running",
        "tool_call_id": "item_3",
        "detail": command,
        "command": command,
        "input": {"command": command},
    }
    assert events[7].entry is not None
    assert (events[7].entry["status"], events[7].entry["output"]) == ("success", "hello\n")
    assert events[8].entry == {"kind": "assistant_message", "text": "hello.py prints hello."}
    assert events[9].entry == {
        "kind": "usage",
        **Usage(input_tokens=300, output_tokens=60).model_dump(),
    }
    assert stream.completed and not stream.failure
    assert stream.usage == Usage(input_tokens=300, output_tokens=60)
    # Every raw event is kept.
    assert all(isinstance(e.raw, dict) for e in events)


def test_failed_command_and_usage_across_runs(tmp_path: Path) -> None:
    first, _ = read("hello", tmp_path)
    assert first.usage == Usage(input_tokens=300, output_tokens=60)
    # The resumed run's turn.completed counts the whole thread (500 in, 100 out) ...
    stream, events = read("resume_failed_command", tmp_path)
    calls = [e.entry for e in events if e.entry and e.entry["kind"] == "tool_call"]
    assert [(c["status"], c.get("error")) for c in calls] == [
        ("running", None),
        ("failed", "exit code 3"),
    ]
    assert calls[1]["output"] == "broken\n"
    # ... the run reports what it used, from the counters the first run left in the state dir.
    assert stream.usage == Usage(input_tokens=200, output_tokens=40)
    assert stream.session_id == "01a1ffdf-e3c1-7370-a025-752cf9ef7715"


def test_without_state_dir_the_thread_totals_are_reported() -> None:
    stream, _ = read("resume_failed_command")
    assert stream.usage == Usage(input_tokens=500, output_tokens=100)


def test_interrupted_run_has_no_end() -> None:
    stream, events = read("interrupted")
    assert kinds(events) == ["system", None, "tool_call"]
    assert not stream.completed and stream.usage == Usage()


def test_http_error_retries_then_fails() -> None:
    stream, events = read("http_error")
    retries = [e.entry for e in events if e.entry and e.entry["kind"] == "system"][1:]
    assert len(retries) == 5
    assert all(r["level"] == "warning" and r["text"].startswith("Reconnecting") for r in retries)
    errors = [e.entry for e in events if e.entry and e.entry["kind"] == "error"]
    assert [e["code"] for e in errors] == ["codex_error", "turn_failed"]
    assert "404 Not Found" in stream.failure
    assert not stream.completed


def test_other_items() -> None:
    stream, events = read("other_items")
    entries = [e.entry for e in events]
    assert entries[1] == {
        "kind": "error",
        "message": "Model metadata for `scripted-model` not found. Defaulting to fallback "
        "metadata; this can degrade performance and cause issues.",
        "code": "codex_item_error",
    }
    assert entries[3] == {
        "kind": "todo",
        "items": [
            {"content": "write hello.py", "status": "pending"},
            {"content": "run it", "status": "pending"},
        ],
    }
    assert entries[4] is not None and entries[4]["items"][0]["status"] == "completed"
    mcp = [entries[5], entries[6]]
    assert [(m["tool"], m["action"], m["status"]) for m in mcp if m] == [
        ("mcp__docs__lookup", "mcp", "running"),
        ("mcp__docs__lookup", "mcp", "failed"),
    ]
    assert mcp[1] is not None and mcp[1]["error"] == "server went away"
    assert mcp[1]["input"] == {"q": "hello"}
    search = [entries[7], entries[8]]
    assert [(s["action"], s["status"], s["detail"]) for s in search if s] == [
        ("search", "running", "python print"),
        ("search", "success", "python print"),
    ]
    change = entries[10]
    assert change is not None
    assert (change["status"], change["detail"]) == ("failed", "update /w/a.py, delete /w/b.py")
    assert "path" not in change  # two files: no single path
    assert entries[11] == {
        "kind": "system",
        "text": "codex item collab_tool_call",
        "item_type": "collab_tool_call",
    }
    # Cached input is counted apart from the rest of the input.
    assert stream.usage == Usage(
        input_tokens=600, cache_read_tokens=400, cache_write_tokens=50, output_tokens=30
    )


def test_malformed_and_truncated_lines_become_entries() -> None:
    stream, events = read("malformed")
    entries: list[dict[str, Any]] = [e.entry for e in events if e.entry is not None]
    assert [e["kind"] for e in entries] == [
        "system",  # thread.started
        "error",  # the truncated event
        "system",  # plain text
        "system",  # a JSON array
        "system",  # an object without a type
        "error",  # an item event without an item
        "system",  # an event type Codex may add later
        "usage",
    ]
    assert entries[1]["code"] == "unparsable_event"
    assert entries[1]["raw"].startswith('{"type":"item.started"')
    assert entries[2] == {"kind": "system", "text": "not json at all", "stream": "stdout"}
    assert events[4].raw == [1, 2, 3]
    assert entries[6]["text"] == "unknown codex event something.new"
    assert stream.completed


@pytest.mark.parametrize(
    "line",
    ["", "{", '{"type":', "\x00\x01", "[" * 100_000, '{"type": "turn.completed", "usage": 5}'],
)
def test_garbage_never_raises(line: str) -> None:
    event = CodexStream().event(line)
    assert event.entry is not None


def context(tmp_path: Path, **fields: Any) -> RunContext:
    return RunContext(
        request_id="req_1",
        agent_id="ag_1",
        workspace=tmp_path,
        prompt="hi",
        **fields,
    )


def test_argv_new_run(tmp_path: Path) -> None:
    image = Attachment(name="a.png", media_type="image/png", path=tmp_path / "a.png")
    text = Attachment(name="a.txt", media_type="text/plain", path=tmp_path / "a.txt")
    ctx = context(
        tmp_path,
        settings={"command": "/opt/codex --flag", "additional_params": ["--ephemeral"]},
        model="gpt-5.5",
        attachments=(image, text),
    )
    assert CodexExecutor().argv(ctx) == [
        "/opt/codex",
        "--flag",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "-m",
        "gpt-5.5",
        "-i",
        str(tmp_path / "a.png"),
        "--ephemeral",
        "-",
    ]


def test_argv_resume_with_endpoint_and_accept_edits(tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        resume_session_id="thread-1",
        permission_mode="accept_edits",
        env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "k"},
    )
    argv = CodexExecutor().argv(ctx)
    assert argv[:5] == ["codex", "exec", "resume", "--json", "--skip-git-repo-check"]
    assert argv[5:7] == ["-c", 'sandbox_mode="workspace-write"']
    assert "--dangerously-bypass-approvals-and-sandbox" not in argv
    assert argv[-2:] == ["thread-1", "-"]
    assert 'model_provider="forge"' in argv


def test_provider_overrides() -> None:
    assert provider_overrides({}) == []
    args = provider_overrides({"OPENAI_BASE_URL": 'http://h/"v1', "CODEX_API_KEY": "k"})
    assert args[:2] == ["-c", 'model_provider="forge"']
    assert args[2] == "-c"
    assert args[3] == (
        'model_providers.forge={ name = "Forge endpoint", base_url = "http://h/\\"v1", '
        'wire_api = "responses", env_key = "CODEX_API_KEY" }'
    )
    # No key: no env_key (Codex would refuse to start with an unset one).
    assert "env_key" not in provider_overrides({"OPENAI_BASE_URL": "http://h"})[3]


def test_registered_kind_and_modes() -> None:
    assert executor_class("codex") is CodexExecutor
    assert CodexExecutor.permission_modes == ("bypass", "accept_edits")
    assert {"OPENAI_API_KEY", "OPENAI_BASE_URL"} <= set(CodexExecutor.credential_env)


def test_stream_json_round_trip() -> None:
    # The raw event is the parsed JSON, exactly.
    line = (FIXTURES / "hello.jsonl").read_text().splitlines()[7]
    assert CodexStream().event(line).raw == json.loads(line)
