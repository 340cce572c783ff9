"""The `opencode` executor's parts: the event translation, replayed from streams recorded from
the real `opencode serve` (tests/fixtures/opencode, re-recorded by its record.py), the SSE
reader, the configuration it gives OpenCode, and starting and stopping the server with real
processes."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from forge.executors import RunContext, executor_class
from forge.executors.base import Attachment, ExecutorEvent, ExecutorStartFailed
from forge.executors.opencode import (
    PERMISSION_RULES,
    QUIET_ENV,
    OpenCodeEvents,
    OpenCodeExecutor,
    model_ref,
    needs_user,
    opencode_config,
    permission_detail,
    prepare_home,
    prompt_body,
    server_environment,
    sse_data,
)
from tests.support.executors import entries_of, run_executor

FIXTURES = Path(__file__).parents[2] / "fixtures" / "opencode"


async def _lines(lines: list[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def replay(name: str) -> tuple[list[ExecutorEvent], OpenCodeEvents]:
    """The events a recorded stream stands for, and the translator's state after it."""
    lines = (FIXTURES / f"{name}.sse").read_text().splitlines()
    translator = OpenCodeEvents(lines[0].removeprefix(": session "))
    events = []
    async for data in sse_data(_lines(lines)):
        event = translator.translate(data)
        if event is not None:
            events.append(event)
    return events, translator


def kinds(events: list[ExecutorEvent]) -> list[str]:
    return [str(e.entry["kind"]) for e in events if e.entry is not None]


def tool_calls(events: list[ExecutorEvent]) -> list[tuple[str, str]]:
    return [(str(c["tool"]), str(c["status"])) for c in entries_of(events, "tool_call")]


def context(tmp_path: Path, **changes: Any) -> RunContext:
    fields: dict[str, Any] = {
        # Unique: what a run leaves behind is found by these ids.
        "request_id": "req_" + secrets.token_hex(6),
        "agent_id": "ag_" + secrets.token_hex(6),
        "workspace": tmp_path,
        "prompt": "Create hello.py",
        "env": {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "OPENAI_API_KEY": "k"},
        "model": "scripted-model",
        "home": tmp_path / "home",
    }
    return RunContext(**{**fields, **changes})


# ---- recorded streams ----------------------------------------------------------------------------


async def test_hello() -> None:
    events, translator = await replay("hello")

    assert kinds(events) == [
        "user_message",
        "thinking",
        "tool_call",
        "assistant_message",
        "tool_call",
        "usage",
        "tool_call",
        "tool_call",
        "usage",
        "assistant_message",
        "usage",
    ]
    write_running, write_done, run_running, run_done = entries_of(events, "tool_call")
    assert (write_running["action"], write_running["status"]) == ("file_edit", "running")
    assert write_running["path"] == "hello.py"
    assert write_running["input"] == {"filePath": "hello.py", "content": "print('hello')\n"}
    assert (write_done["status"], write_done["tool_call_id"]) == (
        "success",
        write_running["tool_call_id"],
    )
    assert (run_running["action"], run_running["command"]) == ("command_run", "python3 hello.py")
    assert (run_done["status"], run_done["output"]) == ("success", "hello\n")
    assert entries_of(events, "thinking") == [
        {"kind": "thinking", "text": "A one-line script will do."}
    ]
    assert entries_of(events, "assistant_message")[-1]["text"] == "Done: hello.py prints hello."
    assert entries_of(events, "usage")[0] == {
        "kind": "usage",
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cost_usd": 0.0,
        "reason": "tool-calls",
    }
    assert translator.idle and not translator.failure
    assert (translator.usage.input_tokens, translator.usage.output_tokens) == (300, 60)
    for event in events:
        assert event.executor_event_type == event.raw["type"]
        assert event.session_id == translator.session_id
    # Deltas, and the server's own events, are not part of the run.
    types = {e.executor_event_type for e in events}
    assert not types & {"message.part.delta", "server.connected", "plugin.added", "file.edited"}


async def test_resume() -> None:
    events, translator = await replay("resume")

    assert entries_of(events, "user_message") == [
        {"kind": "user_message", "text": "Now say goodbye."}
    ]
    assert [e["text"] for e in entries_of(events, "assistant_message")] == ["Goodbye."]
    assert translator.idle and translator.usage.input_tokens == 100


async def test_ask_reject_then_once() -> None:
    events, translator = await replay("ask")

    asked = [e for e in events if e.executor_event_type == "permission.asked"]
    assert [a.raw["properties"]["permission"] for a in asked] == ["edit", "edit"]
    assert translator.tool_of(asked[0].raw["properties"]) == "write"
    assert permission_detail(asked[0].raw["properties"]) == "edit: ask.py"
    assert tool_calls(events) == [
        ("write", "running"),
        ("write", "denied"),
        ("write", "running"),
        ("write", "success"),
    ]
    denied = entries_of(events, "tool_call")[1]
    assert "not in this repository" in str(denied["error"])
    assert translator.idle and not translator.failure


async def test_a_refusal_the_executor_gave_is_a_denial_whatever_its_text() -> None:
    lines = (FIXTURES / "ask.sse").read_text().splitlines()
    lines = [line.replace("The user rejected permission", "Refused") for line in lines]
    translator = OpenCodeEvents(lines[0].removeprefix(": session "))
    events = []
    async for data in sse_data(_lines(lines)):
        event = translator.translate(data)
        if event is None:
            continue
        events.append(event)
        if event.executor_event_type == "permission.asked" and not translator.rejected_calls:
            translator.rejected_calls.add(event.raw["properties"]["tool"]["callID"])

    assert tool_calls(events)[:2] == [("write", "running"), ("write", "denied")]


async def test_accept_edits_asks_for_commands_only() -> None:
    events, _ = await replay("accept_edits")

    asked = [e.raw["properties"] for e in events if e.executor_event_type == "permission.asked"]
    assert [(a["permission"], a["patterns"]) for a in asked] == [("bash", ["ls"])]
    assert tool_calls(events) == [
        ("write", "running"),
        ("write", "success"),
        ("bash", "running"),
        ("bash", "success"),
    ]


async def test_todo_and_subagent() -> None:
    lines = (FIXTURES / "todo_and_subagent.sse").read_text().splitlines()
    translator = OpenCodeEvents(lines[0].removeprefix(": session "))
    events: list[ExecutorEvent] = []
    idle_after: list[str] = []
    async for data in sse_data(_lines(lines)):
        event = translator.translate(data)
        if event is not None:
            events.append(event)
            if translator.idle and not idle_after:
                idle_after.append(event.raw["properties"]["sessionID"])

    assert entries_of(events, "todo")[0]["items"] == [
        {"content": "Write hello.py", "status": "completed"},
        {"content": "Run it", "status": "in_progress"},
    ]
    assert tool_calls(events) == [
        ("todowrite", "running"),
        ("todowrite", "success"),
        ("task", "running"),
        ("task", "success"),
    ]
    assert entries_of(events, "tool_call")[0]["action"] == "todo"
    assert entries_of(events, "tool_call")[2]["action"] == "task"
    # The subagent's session is followed (its answer, its usage), its prompt is not a user's,
    # and its going idle does not end the run.
    texts = [e["text"] for e in entries_of(events, "assistant_message")]
    assert texts == ["The subagent's answer.", "All done."]
    assert [e["text"] for e in entries_of(events, "user_message")] == [
        "Create hello.py that prints hello, then run it."
    ]
    assert idle_after == [translator.session_id]
    assert translator.usage.input_tokens == 400


async def test_interrupted() -> None:
    events, translator = await replay("interrupt")

    assert ("bash", "running") in tool_calls(events)
    aborted = [e for e in events if e.executor_event_type == "session.error"]
    assert aborted and aborted[0].entry is not None
    assert aborted[0].entry["kind"] == "system"
    assert not translator.failure  # an abort is not a failure of its own


async def test_retries_are_reported_and_counted() -> None:
    events, translator = await replay("retries_exhausted")

    retries = [e for e in entries_of(events, "system") if "retrying" in str(e["text"])]
    assert len(retries) == 2 and "Cannot connect to API" in str(retries[0]["text"])
    assert translator.retries == 2
    assert "Cannot connect to API" in translator.retry_message


async def test_malformed_lines_become_entries_and_the_rest_is_read() -> None:
    events, translator = await replay("malformed")

    broken = [e for e in events if e.entry is not None and e.entry["kind"] == "error"]
    assert [b.entry["code"] for b in broken if b.entry] == ["unparsable_event"] * 2
    assert broken[0].raw is None and str(broken[0].entry["raw"]).startswith('{"id"')  # type: ignore[index]
    assert broken[1].entry["raw"] == "<html>502 Bad Gateway</html>"  # type: ignore[index]
    odd = [e for e in events if e.raw == ["not", "an", "event"]]
    assert odd and odd[0].entry is not None and odd[0].entry["kind"] == "system"
    bad_status = [e for e in events if e.executor_event_type == "session.status" and e.entry]
    assert bad_status[0].entry is not None and bad_status[0].entry["kind"] == "system"
    unknown = [e for e in events if e.executor_event_type == "brand.new"]
    assert unknown and unknown[0].entry is None and unknown[0].raw["type"] == "brand.new"
    assert tool_calls(events)[-2:] == [("bash", "running"), ("bash", "success")]
    assert translator.idle


def test_events_of_other_sessions_are_left_out() -> None:
    translator = OpenCodeEvents("ses_mine")
    other = {"type": "session.idle", "properties": {"sessionID": "ses_other"}}
    mine = {"type": "session.idle", "properties": {"sessionID": "ses_mine"}}

    assert translator.translate(json.dumps(other)) is None
    assert not translator.idle
    event = translator.translate(json.dumps(mine))
    assert event is not None and event.session_id == "ses_mine" and translator.idle


def test_a_session_error_fails_the_run() -> None:
    translator = OpenCodeEvents("ses_mine")
    error = {"name": "APIError", "data": {"message": "model not found", "statusCode": 404}}
    event = translator.translate(
        json.dumps(
            {"type": "session.error", "properties": {"sessionID": "ses_mine", "error": error}}
        )
    )
    assert event is not None
    assert event.entry == {"kind": "error", "message": "model not found", "code": "APIError"}
    assert translator.failure == "APIError: model not found"


def test_a_step_updated_twice_counts_once() -> None:
    translator = OpenCodeEvents("ses_1")
    part = {
        "id": "prt_1",
        "sessionID": "ses_1",
        "messageID": "msg_1",
        "type": "step-finish",
        "reason": "stop",
        "cost": 0.25,
        "tokens": {"input": 10, "output": 5, "reasoning": 3, "cache": {"read": 7, "write": 2}},
    }
    line = json.dumps(
        {"type": "message.part.updated", "properties": {"part": part, "sessionID": "ses_1"}}
    )
    translator.translate(line)
    translator.translate(line)
    usage = translator.usage
    assert (usage.input_tokens, usage.output_tokens) == (10, 8)
    assert (usage.cache_read_tokens, usage.cache_write_tokens, usage.cost_usd) == (7, 2, 0.25)


async def test_sse_data() -> None:
    lines = [
        ": comment",
        "data: one",
        "",
        "event: x",
        "data:two",
        "data: lines",
        "",
        "id: 3",
        "data: end",
    ]
    assert [d async for d in sse_data(_lines(lines))] == ["one", "two\nlines", "end"]


# ---- configuration -------------------------------------------------------------------------------


def test_config_for_an_openai_compatible_endpoint(tmp_path: Path) -> None:
    ctx = context(tmp_path, settings={"config": {"provider": {"forge": {"name": "Mine"}}}})
    config = opencode_config(ctx, ctx.env)

    provider = config["provider"]["forge"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["name"] == "Mine"  # the `config` setting is merged over Forge's
    assert provider["options"] == {
        "baseURL": "http://127.0.0.1:1/v1",
        "apiKey": "{env:OPENAI_API_KEY}",
    }
    assert provider["models"] == {"scripted-model": {"name": "scripted-model"}}
    assert config["model"] == config["small_model"] == "forge/scripted-model"
    assert config["autoupdate"] is False and config["share"] == "disabled"


def test_config_for_an_opencode_provider(tmp_path: Path) -> None:
    ctx = context(tmp_path, env={"ANTHROPIC_API_KEY": "k"}, model="anthropic/claude-sonnet-4-5")
    config = opencode_config(ctx, ctx.env)

    assert "provider" not in config and "small_model" not in config
    assert config["model"] == "anthropic/claude-sonnet-4-5"
    assert model_ref("openrouter/anthropic/claude", {}) == ("openrouter", "anthropic/claude")
    assert model_ref("bare", {}) is None
    assert model_ref("", {"OPENAI_BASE_URL": "http://x"}) is None


def test_server_environment(tmp_path: Path) -> None:
    env = server_environment(context(tmp_path, permission_mode="ask"))

    assert {k: env[k] for k in QUIET_ENV} == QUIET_ENV
    assert json.loads(env["OPENCODE_PERMISSION"]) == PERMISSION_RULES["ask"]
    assert json.loads(env["OPENCODE_CONFIG_CONTENT"])["model"] == "forge/scripted-model"
    assert env["HOME"] == str(tmp_path / "home")
    assert env["OPENAI_API_KEY"] == "k"
    assert len(env["OPENCODE_SERVER_PASSWORD"]) >= 24
    again = server_environment(context(tmp_path))
    assert again["OPENCODE_SERVER_PASSWORD"] != env["OPENCODE_SERVER_PASSWORD"]
    assert json.loads(again["OPENCODE_PERMISSION"]) == {"*": "allow", "question": "deny"}


def test_who_answers_a_permission_request() -> None:
    assert not needs_user("bypass", "bash")
    assert not needs_user("accept_edits", "edit") and needs_user("accept_edits", "bash")
    assert needs_user("ask", "edit") and needs_user("ask", "external_directory")


def test_prompt_body(tmp_path: Path) -> None:
    image = Attachment("shot.png", "image/png", tmp_path / "shot.png")
    text = Attachment("notes.txt", "text/plain", tmp_path / "notes.txt")
    ctx = context(
        tmp_path,
        attachments=(image, text),
        settings={"agent": "plan", "system_prompt": "Be brief.", "append_prompt": "Thanks."},
    )
    body = prompt_body(ctx)

    assert body["parts"][0]["type"] == "text"
    assert "Thanks." in body["parts"][0]["text"] and "notes.txt" in body["parts"][0]["text"]
    assert body["parts"][1] == {
        "type": "file",
        "mime": "image/png",
        "filename": "shot.png",
        "url": (tmp_path / "shot.png").as_uri(),
    }
    assert len(body["parts"]) == 2
    assert body["model"] == {"providerID": "forge", "modelID": "scripted-model"}
    assert (body["agent"], body["system"]) == ("plan", "Be brief.")


def test_prepare_home_keeps_npm_offline_in_the_config_dir(tmp_path: Path) -> None:
    prepare_home(tmp_path)
    assert (tmp_path / ".config" / "opencode" / ".npmrc").read_text() == "offline=true\n"
    prepare_home(None)  # the runner's own HOME is left alone


def test_registered() -> None:
    assert executor_class("opencode") is OpenCodeExecutor
    assert OpenCodeExecutor.permission_modes == ("bypass", "accept_edits", "ask")
    assert {"OPENAI_BASE_URL", "OPENAI_API_KEY"} <= set(OpenCodeExecutor.credential_env)


# ---- the server process --------------------------------------------------------------------------


async def test_a_missing_program_cannot_start(tmp_path: Path) -> None:
    ctx = context(tmp_path, settings={"command": str(tmp_path / "no-such-opencode")})
    with pytest.raises(ExecutorStartFailed, match="cannot start"):
        await run_executor(OpenCodeExecutor(), ctx, timeout=10)


async def test_a_server_that_exits_at_once(tmp_path: Path) -> None:
    ctx = context(tmp_path, settings={"command": "sh -c 'echo broken config >&2; exit 3'"})
    with pytest.raises(ExecutorStartFailed, match=r"exited with code 3\nbroken config"):
        await run_executor(OpenCodeExecutor(), ctx, timeout=10)


async def test_a_server_that_never_listens(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    ctx = context(
        workspace,
        # A child in the server's process group, and one in a session of its own.
        settings={
            "command": "sh -c 'sleep 30 & setsid sleep 31 & exec sleep 32'",
            "startup_timeout_seconds": 0.5,
        },
    )
    with pytest.raises(ExecutorStartFailed, match=r"did not listen within 0\.5 s"):
        await run_executor(OpenCodeExecutor(), ctx, timeout=10)
    assert _processes_in(workspace) == []


async def test_interrupt_before_the_run(tmp_path: Path) -> None:
    executor = OpenCodeExecutor()
    await executor.interrupt(1.0)
    _, result = await run_executor(executor, context(tmp_path), timeout=10)
    assert result.outcome == "interrupted"


def _processes_in(directory: Path) -> list[int]:
    """Live (not zombie) processes whose working directory is `directory`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if cwd == str(directory) and state != "Z":
            found.append(int(entry.name))
    return found
