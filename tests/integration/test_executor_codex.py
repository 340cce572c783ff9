"""The real Codex CLI driven through `CodexExecutor`, against the scripted Responses API server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.support.openai_responses_wire  # noqa: F401  (registers /v1/responses)
from forge.executors import ExecutorEvent, RunContext
from forge.executors.codex import CodexExecutor
from tests.integration.conftest import ForgeServer
from tests.support.agent_clis import cli_path
from tests.support.executors import entries_of, run_executor
from tests.support.executors import leftover_processes as shared_leftovers
from tests.support.model_server import Reply, Script, ScriptedModelServer, ToolCall
from tests.support.scenarios import hello_then_resume_through_forge

pytestmark = pytest.mark.integration

# A model Codex knows, so it offers its `apply_patch` tool (for unknown names it does not).
MODEL = "gpt-5.5"
HELLO_PATCH = "*** Begin Patch\n*** Add File: hello.py\n+print('hello')\n*** End Patch\n"


def hello_script() -> list[Reply]:
    return [
        Reply(
            text="I will create hello.py and run it.",
            thinking="Write the file, then run it.",
            tool_calls=[ToolCall("apply_patch", {"input": HELLO_PATCH})],
        ),
        Reply(tool_calls=[ToolCall("exec_command", {"cmd": "python3 hello.py"})]),
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
        agent_id="ag_codex",
        workspace=workspace,
        prompt=prompt,
        env={"OPENAI_BASE_URL": f"{server.url}/v1", "OPENAI_API_KEY": "test-key"},
        settings={"command": cli_path("codex")},
        model=MODEL,
        home=home,
        state_dir=home.parent / "state",
        **fields,
    )


def tool_calls(events: list[ExecutorEvent]) -> list[dict[str, Any]]:
    return [e.entry for e in events if e.entry and e.entry["kind"] == "tool_call"]


def leftover_processes(workspace: Path) -> list[str]:
    return shared_leftovers(workspace, cli_path("codex"), "codex-linux-x64")


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
    events, result = await run_executor(CodexExecutor(), ctx)

    assert (git_repo / "hello.py").read_text() == "print('hello')\n"
    finished = [c for c in tool_calls(events) if c["status"] != "running"]
    assert [(c["action"], c["status"]) for c in finished] == [
        ("file_edit", "success"),
        ("command_run", "success"),
    ]
    started = [c for c in tool_calls(events) if c["status"] == "running"]
    assert [c["tool_call_id"] for c in started] == [c["tool_call_id"] for c in finished]
    assert finished[0]["path"] == str(git_repo / "hello.py")
    assert "python3 hello.py" in finished[1]["command"]
    assert finished[1]["output"] == "hello\n"
    assert [e["text"] for e in entries_of(events, "thinking")] == ["Write the file, then run it."]
    assert [e["text"] for e in entries_of(events, "assistant_message")] == [
        "I will create hello.py and run it.",
        "hello.py prints hello.",
    ]
    assert result.outcome == "succeeded", result.message
    started_thread = [e for e in events if e.executor_event_type == "thread.started"]
    assert result.session_id and started_thread[0].session_id == result.session_id
    # Three model requests of 100 input and 20 output tokens each.
    assert (result.usage.input_tokens, result.usage.output_tokens) == (300, 60)
    assert not [r for r in model_server.requests if r.path != "/v1/responses"]

    # The next message continues the same Codex thread, with the earlier turns in the request.
    second = context(
        git_repo,
        home,
        model_server,
        "Now say goodbye.",
        request_id="req_2",
        resume_session_id=result.session_id,
    )
    events, resumed = await run_executor(CodexExecutor(), second)
    assert resumed.outcome == "succeeded", resumed.message
    assert resumed.session_id == result.session_id
    last = model_server.model_requests()[-1].text()
    assert "Create hello.py that prints hello" in last and "Now say goodbye." in last
    assert "hello.py prints hello." in last
    assert [e["text"] for e in entries_of(events, "assistant_message")] == ["Done."]
    # Codex counts the whole thread; the run reports only its own request.
    assert (resumed.usage.input_tokens, resumed.usage.output_tokens) == (100, 20)


def _bwrap_without_argv0() -> bool:
    """Codex 0.169 uses the first `bwrap` on PATH for its own sandbox; with a bubblewrap older
    than 0.9 (no `--argv0`, Debian 12's 0.8.0) its fallback re-exec fails ("Failed to execvp
    linux"), so every sandboxed command fails. Without a system bwrap it uses its bundled one."""
    program = shutil.which("bwrap")
    if program is None:
        return False
    help_text = subprocess.run([program, "--help"], capture_output=True, text=True).stdout
    return "--argv0" not in help_text


@pytest.mark.skipif(
    _bwrap_without_argv0(),
    reason="Codex's own sandbox fails with a system bubblewrap older than 0.9 (no --argv0)",
)
async def test_failed_command_and_sandboxed_edits(git_repo: Path, tmp_path: Path) -> None:
    script = [
        Reply(tool_calls=[ToolCall("exec_command", {"cmd": "echo broken >&2; exit 3"})]),
        Reply(tool_calls=[ToolCall("apply_patch", {"input": HELLO_PATCH})]),
        Reply(text="Tried."),
    ]
    with ScriptedModelServer(Script(script)) as server:
        ctx = context(git_repo, tmp_path / "home", server, "try", permission_mode="accept_edits")
        events, result = await run_executor(CodexExecutor(), ctx)
    finished = [c for c in tool_calls(events) if c["status"] != "running"]
    assert [(c["action"], c["status"]) for c in finished] == [
        ("command_run", "failed"),
        ("file_edit", "success"),
    ]
    assert finished[0]["error"] == "exit code 3"
    assert (git_repo / "hello.py").exists()  # the workspace is writable in workspace-write
    assert result.outcome == "succeeded"


async def test_interrupt_during_a_long_command(git_repo: Path, tmp_path: Path) -> None:
    # A job in the background too: it leaves the pty's process group as well as Codex's.
    script = [Reply(tool_calls=[ToolCall("exec_command", {"cmd": "sleep 29 & sleep 30"})])]
    with ScriptedModelServer(Script(script)) as server:
        executor = CodexExecutor()
        ctx = context(git_repo, tmp_path / "home", server, "sleep for a while")

        async def interrupt_when_sleeping(event: ExecutorEvent) -> None:
            entry = event.entry or {}
            if entry.get("kind") == "tool_call" and entry.get("status") == "running":
                await processes_running(git_repo, "sleep", 2)  # both commands
                asyncio.get_running_loop().create_task(executor.interrupt(grace_seconds=2))

        events, result = await run_executor(
            executor, ctx, on_event=interrupt_when_sleeping, timeout=30
        )
    assert result.outcome == "interrupted"
    assert any("sleep 30" in c.get("command", "") for c in tool_calls(events))
    assert leftover_processes(git_repo) == []


def test_ask_is_not_offered() -> None:
    # `codex exec` forces the approval policy to "never": nothing could answer a request.
    assert "ask" not in CodexExecutor.permission_modes


def test_through_forge(forge_server: Any, git_repo: Path) -> None:
    with ScriptedModelServer(Script(hello_script())) as model:
        server: ForgeServer = forge_server(
            f"""
[profiles.codex]
executor = "codex"
command = "{cli_path("codex")}"
model = "{MODEL}"
permission_mode = "bypass"
env = {{ OPENAI_BASE_URL = "{model.url}/v1", OPENAI_API_KEY = "test-key" }}
"""
        )
        hello_then_resume_through_forge(
            server,
            profile="codex",
            repo=git_repo,
            executor="codex",
            last_request_text=lambda: model.model_requests()[-1].text(),
        )
