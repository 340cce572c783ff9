"""The real Gemini CLI driven through `GeminiExecutor`, against the scripted Gemini API server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.support.gemini_wire  # noqa: F401  (registers /v1beta/models/*)
from forge.executors import ExecutorEvent, RunContext
from forge.executors.gemini import GeminiExecutor
from tests.integration.conftest import ForgeServer
from tests.support.agent_clis import cli_path
from tests.support.executors import entries_of, run_executor
from tests.support.executors import leftover_processes as shared_leftovers
from tests.support.model_server import Reply, Script, ScriptedModelServer, ToolCall
from tests.support.scenarios import hello_then_resume_through_forge

pytestmark = pytest.mark.integration

MODEL = "gemini-2.5-flash"


def hello_script() -> list[Reply]:
    return [
        Reply(
            text="I will create hello.py and run it.",
            tool_calls=[
                ToolCall("write_file", {"file_path": "hello.py", "content": "print('hello')\n"})
            ],
        ),
        Reply(tool_calls=[ToolCall("run_shell_command", {"command": "python3 hello.py"})]),
        Reply(text="hello.py prints hello."),
    ]


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    server = ScriptedModelServer(Script(hello_script()))
    with server:
        yield server


def context(
    workspace: Path, home: Path, server: ScriptedModelServer, prompt: str, **fields: Any
) -> RunContext:
    return RunContext(
        request_id=fields.pop("request_id", "req_1"),
        agent_id="ag_gemini",
        workspace=workspace,
        prompt=prompt,
        env={"GOOGLE_GEMINI_BASE_URL": server.url, "GEMINI_API_KEY": "test-key"},
        settings={"command": cli_path("gemini")},
        model=MODEL,
        home=home,
        **fields,
    )


def tool_calls(events: list[ExecutorEvent]) -> list[dict[str, Any]]:
    return [e.entry for e in events if e.entry and e.entry["kind"] == "tool_call"]


def agent_requests(server: ScriptedModelServer) -> list[str]:
    """The bodies of the requests that asked for an agent turn (not side questions)."""
    return [r.text() for r in server.model_requests() if "streamGenerateContent" in r.path]


def leftover_processes(workspace: Path) -> list[str]:
    return shared_leftovers(workspace, cli_path("gemini"))


async def processes_running(workspace: Path, text: str, count: int) -> None:
    """Wait (at most 10 s) until `count` processes in the workspace name `text`."""
    for _ in range(200):
        if len([p for p in leftover_processes(workspace) if text in p]) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} processes running {text!r} did not appear")


async def test_hello_then_resume(
    git_repo: Path, tmp_path: Path, model_server: ScriptedModelServer
) -> None:
    home = tmp_path / "home"
    ctx = context(git_repo, home, model_server, "Create hello.py that prints hello, then run it.")
    events, result = await run_executor(GeminiExecutor(), ctx)

    assert (git_repo / "hello.py").read_text() == "print('hello')\n"
    calls = tool_calls(events)
    assert [(c["tool"], c["action"], c["status"]) for c in calls] == [
        ("write_file", "file_edit", "running"),
        ("write_file", "file_edit", "success"),
        ("run_shell_command", "command_run", "running"),
        ("run_shell_command", "command_run", "success"),
    ]
    assert calls[0]["tool_call_id"] == calls[1]["tool_call_id"]
    assert (calls[1]["path"], calls[3]["command"]) == ("hello.py", "python3 hello.py")
    assert "hello" in calls[3]["output"]
    assert [e["text"] for e in entries_of(events, "user_message")] == [
        "Create hello.py that prints hello, then run it."
    ]
    assert [e["text"] for e in entries_of(events, "assistant_message")] == [
        "I will create hello.py and run it.",
        "hello.py prints hello.",
    ]
    assert result.outcome == "succeeded", result.message
    init = [e for e in events if e.executor_event_type == "init"]
    assert result.session_id and init[0].session_id == result.session_id
    assert (result.usage.input_tokens, result.usage.output_tokens) == (300, 60)
    # Settings for a closed network were written into the private home.
    settings = json.loads((home / ".gemini" / "settings.json").read_text())
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert settings["privacy"]["usageStatisticsEnabled"] is False

    second = context(
        git_repo,
        home,
        model_server,
        "Now say goodbye.",
        request_id="req_2",
        resume_session_id=result.session_id,
    )
    events, resumed = await run_executor(GeminiExecutor(), second)
    assert resumed.outcome == "succeeded", resumed.message
    assert resumed.session_id == result.session_id
    last = agent_requests(model_server)[-1]
    assert "Create hello.py that prints hello" in last and "Now say goodbye." in last
    assert "hello.py prints hello." in last
    assert [e["text"] for e in entries_of(events, "assistant_message")] == ["Done."]
    assert (resumed.usage.input_tokens, resumed.usage.output_tokens) == (100, 20)


async def test_accept_edits_refuses_commands(git_repo: Path, tmp_path: Path) -> None:
    # auto_edit: edits run; the shell needs approval, which headless mode cannot ask for, so
    # the CLI does not offer it and the model's call is refused.
    with ScriptedModelServer(Script(hello_script())) as server:
        ctx = context(git_repo, tmp_path / "home", server, "hello", permission_mode="accept_edits")
        events, result = await run_executor(GeminiExecutor(), ctx)
        offered = server.model_requests()[-1].text()
    finished = [c for c in tool_calls(events) if c["status"] != "running"]
    assert [(c["tool"], c["status"]) for c in finished] == [
        ("write_file", "success"),
        ("run_shell_command", "denied"),
    ]
    assert (git_repo / "hello.py").exists()
    assert '"run_shell_command"' not in json.dumps(json.loads(offered).get("tools"))
    assert result.outcome == "succeeded"


async def test_interrupt_during_a_long_command(git_repo: Path, tmp_path: Path) -> None:
    script = [Reply(tool_calls=[ToolCall("run_shell_command", {"command": "sleep 30"})])]
    with ScriptedModelServer(Script(script)) as server:
        executor = GeminiExecutor()
        ctx = context(git_repo, tmp_path / "home", server, "sleep for a while")

        async def interrupt_when_sleeping(event: ExecutorEvent) -> None:
            entry = event.entry or {}
            if entry.get("kind") == "tool_call" and entry.get("status") == "running":
                # Once the command runs (in a session of its own, outside the CLI's group).
                await processes_running(git_repo, "sleep 30", 1)
                asyncio.get_running_loop().create_task(executor.interrupt(grace_seconds=2))

        events, result = await run_executor(
            executor, ctx, on_event=interrupt_when_sleeping, timeout=30
        )
    assert result.outcome == "interrupted"
    assert any(c.get("command") == "sleep 30" for c in tool_calls(events))
    assert leftover_processes(git_repo) == []


def test_ask_is_not_offered() -> None:
    # Headless Gemini CLI drops every tool that would need approval from what the model sees.
    assert "ask" not in GeminiExecutor.permission_modes


def test_through_forge(forge_server: Any, git_repo: Path) -> None:
    with ScriptedModelServer(Script(hello_script())) as model:
        server: ForgeServer = forge_server(
            f"""
[profiles.gemini]
executor = "gemini"
command = "{cli_path("gemini")}"
model = "{MODEL}"
permission_mode = "bypass"
env = {{ GOOGLE_GEMINI_BASE_URL = "{model.url}", GEMINI_API_KEY = "test-key" }}
"""
        )
        hello_then_resume_through_forge(
            server,
            profile="gemini",
            repo=git_repo,
            executor="gemini",
            last_request_text=lambda: agent_requests(model)[-1],
        )
