"""The `opencode` executor driving the real OpenCode CLI (`opencode serve`) against the scripted
model server (OpenAI chat completions), directly and once end to end through `forge serve`."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from pathlib import Path
from typing import Any

import pytest

from forge.executors import ExecutorEvent, ExecutorResult, RunContext
from forge.executors.opencode import OpenCodeExecutor
from forge.executors.permissions import Permissions
from tests.integration.conftest import ForgeServer
from tests.support.agent_clis import cli_path
from tests.support.executors import entries_of, run_executor
from tests.support.executors import leftover_processes as shared_leftovers
from tests.support.model_server import RecordedRequest, Reply, Script, ScriptedModelServer, ToolCall
from tests.support.scenarios import hello_then_resume_through_forge

pytestmark = pytest.mark.integration

MODEL = "scripted-model"
PROMPT = "Create hello.py that prints hello, then run it."


def is_side_request(request: RecordedRequest) -> bool:
    """OpenCode's session title generation, answered without using up a scripted reply."""
    body = request.body if isinstance(request.body, dict) else {}
    messages = body.get("messages") or [{}]
    return "title generator" in str(messages[0].get("content", ""))


def hello_replies() -> list[Reply]:
    return [
        Reply(
            text="I'll create the file.",
            thinking="A one-line script will do.",
            tool_calls=[ToolCall("write", {"filePath": "hello.py", "content": "print('hello')\n"})],
        ),
        Reply(tool_calls=[ToolCall("bash", {"command": "python3 hello.py", "description": "Run"})]),
        Reply(text="Done: hello.py prints hello."),
    ]


def script(replies: list[Reply]) -> Script:
    return Script(replies, skip=is_side_request)


def context(workspace: Path, model: ScriptedModelServer, home: Path, **changes: Any) -> RunContext:
    ctx = RunContext(
        # Unique: what a run leaves behind is found by these ids.
        request_id="req_" + secrets.token_hex(6),
        agent_id="ag_" + secrets.token_hex(6),
        workspace=workspace,
        prompt=PROMPT,
        env={"OPENAI_BASE_URL": f"{model.url}/v1", "OPENAI_API_KEY": "test-key"},
        settings={"command": cli_path("opencode")},
        model=MODEL,
        home=home,
    )
    return dataclasses.replace(ctx, **changes)


def tool_calls(events: list[ExecutorEvent]) -> list[dict[str, Any]]:
    return [dict(e) for e in entries_of(events, "tool_call")]


def leftover_processes(workspace: Path) -> list[str]:
    return shared_leftovers(workspace, cli_path("opencode"))


async def test_hello_then_resume(git_repo: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with ScriptedModelServer(script(hello_replies())) as model:
        events, result = await run_executor(
            OpenCodeExecutor(), context(git_repo, model, home), timeout=60
        )

        assert result.outcome == "succeeded", result.message
        assert (git_repo / "hello.py").read_text() == "print('hello')\n"
        calls = tool_calls(events)
        assert [(c["action"], c["status"]) for c in calls] == [
            ("file_edit", "running"),
            ("file_edit", "success"),
            ("command_run", "running"),
            ("command_run", "success"),
        ]
        assert calls[3]["command"] == "python3 hello.py" and "hello" in calls[3]["output"]
        assert calls[0]["tool_call_id"] == calls[1]["tool_call_id"]
        assert [e["text"] for e in entries_of(events, "thinking")] == ["A one-line script will do."]
        assert entries_of(events, "assistant_message")[-1]["text"] == "Done: hello.py prints hello."
        assert entries_of(events, "user_message") == [{"kind": "user_message", "text": PROMPT}]
        assert result.usage.input_tokens == 300 and result.usage.output_tokens == 60
        session_id = result.session_id
        assert session_id.startswith("ses_")
        assert all(e.session_id == session_id for e in events)
        assert leftover_processes(git_repo) == []

        # A new server process continues the session from the store in the private HOME.
        model.script.replies.append(Reply(text="Goodbye."))
        second = context(
            git_repo, model, home, prompt="Now say goodbye.", resume_session_id=session_id
        )
        events, result = await run_executor(OpenCodeExecutor(), second, timeout=60)

        assert (result.outcome, result.session_id) == ("succeeded", session_id)
        assert entries_of(events, "assistant_message")[-1]["text"] == "Goodbye."
        last = model.model_requests()[-1].text()
        assert PROMPT in last and "Now say goodbye." in last and "Wrote file" in last
        assert result.usage.input_tokens == 100


async def test_resuming_an_unknown_session_fails(git_repo: Path, tmp_path: Path) -> None:
    with ScriptedModelServer(script([])) as model:
        ctx = context(git_repo, model, tmp_path / "home", resume_session_id="ses_missing")
        _, result = await run_executor(OpenCodeExecutor(), ctx, timeout=60)
    assert result.outcome == "failed"
    assert "ses_missing" in result.message


async def interrupt_during_sleep(
    workspace: Path, home: Path, grace_seconds: float
) -> tuple[list[ExecutorEvent], ExecutorResult, list[str]]:
    """Run a scripted `sleep 30`, interrupt once it runs; the events, result and the sleeps
    that were running."""
    replies = [Reply(tool_calls=[ToolCall("bash", {"command": "sleep 30", "description": "Wait"})])]
    executor = OpenCodeExecutor()
    sleeping: list[str] = []
    stopping: list[asyncio.Task[None]] = []

    async def interrupt_once_sleeping() -> None:
        for _ in range(200):
            sleeping[:] = [p for p in leftover_processes(workspace) if "sleep 30" in p]
            if sleeping:
                break
            await asyncio.sleep(0.05)
        await executor.interrupt(grace_seconds)

    def on_event(event: ExecutorEvent) -> None:
        entry = event.entry or {}
        if entry.get("kind") == "tool_call" and entry.get("status") == "running" and not stopping:
            stopping.append(asyncio.create_task(interrupt_once_sleeping()))

    with ScriptedModelServer(script(replies)) as model:
        ctx = context(workspace, model, home)
        events, result = await run_executor(executor, ctx, on_event=on_event, timeout=60)
        await asyncio.gather(*stopping)
    return events, result, sleeping


async def test_interrupt_during_a_long_command(git_repo: Path, tmp_path: Path) -> None:
    events, result, sleeping = await interrupt_during_sleep(git_repo, tmp_path / "home", 1.0)

    assert sleeping, "the command never ran"
    assert result.outcome == "interrupted"
    assert result.session_id.startswith("ses_")
    assert any(c.get("command") == "sleep 30" for c in tool_calls(events))
    assert leftover_processes(git_repo) == []


async def test_interrupt_at_once_kills_everything(git_repo: Path, tmp_path: Path) -> None:
    _, result, sleeping = await interrupt_during_sleep(git_repo, tmp_path / "home", 0)

    assert sleeping, "the command never ran"
    assert result.outcome == "interrupted"
    # The command runs in a session of its own, not in the server's process group.
    assert leftover_processes(git_repo) == []


async def test_ask_reject_then_once(git_repo: Path, tmp_path: Path) -> None:
    write = {"filePath": "hello.py", "content": "print('hello')\n"}
    replies = [
        Reply(tool_calls=[ToolCall("write", write)]),
        Reply(text="Trying again.", tool_calls=[ToolCall("write", write)]),
        Reply(text="Written."),
    ]
    permissions = Permissions(timeout_seconds=30)
    answers = iter([("reject", "not in this repository"), ("once", "")])
    file_before_second_answer: list[bool] = []

    def on_event(event: ExecutorEvent) -> None:
        entry = event.entry or {}
        if entry.get("kind") == "permission_request":
            decision, message = next(answers)
            if decision == "once":
                file_before_second_answer.append((git_repo / "hello.py").exists())
            permissions.answer(entry["permission_id"], decision, message)  # type: ignore[arg-type]

    with ScriptedModelServer(script(replies)) as model:
        ctx = context(
            git_repo, model, tmp_path / "home", permission_mode="ask", permissions=permissions
        )
        events, result = await run_executor(OpenCodeExecutor(), ctx, on_event=on_event, timeout=60)

        assert result.outcome == "succeeded", result.message
        asked = entries_of(events, "permission_request")
        assert [(a["tool"], a["action"]) for a in asked] == [("write", "file_edit")] * 2
        assert asked[0]["tool_call_id"] == replies[0].tool_calls[0].id
        assert file_before_second_answer == [False]
        assert (git_repo / "hello.py").read_text() == "print('hello')\n"
        assert [(c["tool"], c["status"]) for c in tool_calls(events)] == [
            ("write", "running"),
            ("write", "denied"),
            ("write", "running"),
            ("write", "success"),
        ]
        # The refusal and the user's reason reached the model as the tool's result.
        second_request = [r for r in model.model_requests() if not is_side_request(r)][1]
        tool_results = [m for m in second_request.body["messages"] if m["role"] == "tool"]
        assert "rejected" in tool_results[-1]["content"]
        assert "not in this repository" in tool_results[-1]["content"]


def test_through_forge(forge_server: Any, git_repo: Path) -> None:
    with ScriptedModelServer(script([*hello_replies(), Reply(text="Goodbye.")])) as model:
        server: ForgeServer = forge_server(
            f"""
[profiles.opencode]
executor = "opencode"
command = "{cli_path("opencode")}"
model = "{MODEL}"
permission_mode = "bypass"
env = {{ OPENAI_BASE_URL = "{model.url}/v1", OPENAI_API_KEY = "test-key" }}
"""
        )
        done = hello_then_resume_through_forge(
            server,
            profile="opencode",
            repo=git_repo,
            executor="opencode",
            prompt=PROMPT,
            last_request_text=lambda: model.model_requests()[-1].text(),
        )
        for event in (e for e in done.first if e["event_type"] == "agent.event"):
            assert event["opencode_event_type"] == event["executor_event_type"]
        assert done.first[-1]["session_id"].startswith("ses_")
