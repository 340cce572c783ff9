"""The built-in agent (`ForgeAgentExecutor`) driven for real against the scripted model server
(OpenAI chat completions, streamed): files, commands, resumed sessions, interrupts, permissions,
attachments and model-server failures; then once end to end through `forge serve`."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge.executors import ExecutorEvent, RunContext
from forge.executors.base import Attachment
from forge.executors.forge_agent import ForgeAgentExecutor
from forge.executors.permissions import Decision, Permissions
from tests.integration.conftest import ForgeServer, free_port
from tests.support.executors import entries_of, run_executor
from tests.support.executors import leftover_processes as shared_leftovers
from tests.support.model_server import (
    RecordedRequest,
    Reply,
    Response,
    Script,
    ScriptedModelServer,
    ToolCall,
    json_response,
    sse,
)
from tests.support.scenarios import hello_then_resume_through_forge

pytestmark = pytest.mark.integration

MODEL = "qwen3-coder"
HELLO = "Create hello.py that prints hello, then run it."


def hello_script() -> list[Reply]:
    return [
        Reply(
            text="I will create hello.py and run it.",
            thinking="Write the file, then run it.",
            tool_calls=[
                ToolCall("write_file", {"path": "hello.py", "content": "print('hello')\n"})
            ],
        ),
        Reply(tool_calls=[ToolCall("run_command", {"command": "python3 hello.py"})]),
        Reply(text="hello.py prints hello."),
    ]


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer(Script(hello_script())) as server:
        yield server


def context(
    workspace: Path, server: ScriptedModelServer | str, prompt: str = HELLO, **fields: Any
) -> RunContext:
    base_url = server if isinstance(server, str) else f"{server.url}/v1"
    values: dict[str, Any] = {
        "request_id": "req_1",
        "agent_id": "ag_forge",
        "workspace": workspace,
        "prompt": prompt,
        "env": {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key"},
        "model": MODEL,
        "home": workspace.parent / "home",
        "state_dir": workspace.parent / "state",
    }
    values.update(fields)
    return RunContext(**values)


def tool_calls(events: list[ExecutorEvent]) -> list[dict[str, Any]]:
    return [e.entry for e in events if e.entry and e.entry["kind"] == "tool_call"]


def finished(events: list[ExecutorEvent]) -> list[dict[str, Any]]:
    return [c for c in tool_calls(events) if c["status"] not in ("running", "pending_approval")]


def processes_in(workspace: Path) -> list[str]:
    return shared_leftovers(workspace)


def tool_results(request: RecordedRequest) -> list[str]:
    return [m["content"] for m in request.body["messages"] if m["role"] == "tool"]


# ---- (a) + (b) the hello.py scenario, then the same session continued ----------------------------


async def test_hello_then_resume(git_repo: Path, model_server: ScriptedModelServer) -> None:
    events, result = await run_executor(ForgeAgentExecutor(), context(git_repo, model_server))

    assert (git_repo / "hello.py").read_text() == "print('hello')\n"
    done = finished(events)
    assert [(c["tool"], c["action"], c["status"]) for c in done] == [
        ("write_file", "file_edit", "success"),
        ("run_command", "command_run", "success"),
    ]
    started = [c for c in tool_calls(events) if c["status"] == "running"]
    assert [c["tool_call_id"] for c in started] == [c["tool_call_id"] for c in done]
    assert done[0]["path"] == "hello.py"
    assert done[1]["command"] == "python3 hello.py"
    assert done[1]["output"] == "hello\n[the command exited with code 0]"
    assert [e["text"] for e in entries_of(events, "thinking")] == ["Write the file, then run it."]
    assert [e["text"] for e in entries_of(events, "assistant_message")] == [
        "I will create hello.py and run it.",
        "hello.py prints hello.",
    ]
    assert len(entries_of(events, "usage")) == 3
    assert result.outcome == "succeeded", result.message
    assert result.session_id.startswith("fs_")
    assert {e.session_id for e in events} == {result.session_id}
    assert (result.usage.input_tokens, result.usage.output_tokens) == (300, 60)
    # Raw events: the assembled model turn and the tool results as JSON.
    turns = [e.raw for e in events if e.executor_event_type == "model.turn"]
    assert turns[0]["tool_calls"][0]["function"]["name"] == "write_file"
    ends = [e.raw for e in events if e.executor_event_type == "tool.finished"]
    assert ends[1]["output"].startswith("hello\n")

    # What the model server got: streaming with usage, the tools, the key, the tool results.
    first, *_, third = model_server.model_requests()
    assert first.path == "/v1/chat/completions"
    assert first.headers["Authorization"] == "Bearer test-key"
    assert first.body["stream"] is True and first.body["stream_options"] == {"include_usage": True}
    assert first.body["model"] == MODEL
    names = {tool["function"]["name"] for tool in first.body["tools"]}
    assert names == {
        "read_file",
        "write_file",
        "edit_file",
        "run_command",
        "glob",
        "grep",
        "list_dir",
    }
    assert tool_results(third) == [
        "Wrote 15 bytes to hello.py",
        "hello\n[the command exited with code 0]",
    ]

    # The next message continues the conversation: same session, the earlier turns sent again.
    second = context(
        git_repo,
        model_server,
        "Now say goodbye.",
        request_id="req_2",
        resume_session_id=result.session_id,
    )
    events, resumed = await run_executor(ForgeAgentExecutor(), second)
    assert resumed.outcome == "succeeded", resumed.message
    assert resumed.session_id == result.session_id
    assert {e.session_id for e in events} == {result.session_id}
    last = model_server.model_requests()[-1].body["messages"]
    roles = [m["role"] for m in last]
    assert roles == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert last[1]["content"] == HELLO and last[-1]["content"] == "Now say goodbye."
    assert last[-2]["content"] == "hello.py prints hello."
    assert [e["text"] for e in entries_of(events, "assistant_message")] == ["Done."]
    assert (resumed.usage.input_tokens, resumed.usage.output_tokens) == (100, 20)


# ---- (c) interrupts ------------------------------------------------------------------------------


async def test_interrupt_during_a_long_command(git_repo: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = Script(
        [
            Reply(
                tool_calls=[ToolCall("run_command", {"command": f"echo $$ > {pid_file}; sleep 30"})]
            )
        ]
    )
    executor = ForgeAgentExecutor()
    interrupter: list[asyncio.Task[None]] = []

    async def interrupt_once_running() -> None:
        for _ in range(500):
            if await asyncio.to_thread(lambda: pid_file.exists() and pid_file.read_text().strip()):
                break
            await asyncio.sleep(0.02)
        await executor.interrupt(grace_seconds=1)

    def on_event(event: ExecutorEvent) -> None:
        if event.executor_event_type == "tool.started":
            interrupter.append(asyncio.create_task(interrupt_once_running()))

    with ScriptedModelServer(script) as server:
        ctx = context(git_repo, server, "Sleep a while.")
        events, result = await run_executor(executor, ctx, on_event=on_event, timeout=30)
        await asyncio.gather(*interrupter)

        assert result.outcome == "interrupted"
        assert result.session_id.startswith("fs_")
        calls = tool_calls(events)
        assert [c["status"] for c in calls] == ["running", "failed"]
        assert "Interrupted" in calls[1]["error"]
        assert processes_in(git_repo) == []
        with pytest.raises(ProcessLookupError):
            os.killpg(int(pid_file.read_text()), 0)

        # The stored conversation stays valid: the cut tool call has a result.
        resumed_ctx = context(
            git_repo, server, "Go on.", request_id="req_2", resume_session_id=result.session_id
        )
        _, resumed = await run_executor(ForgeAgentExecutor(), resumed_ctx)
        assert resumed.outcome == "succeeded"
        assert tool_results(server.model_requests()[-1]) == [calls[1]["error"]]


async def test_interrupt_during_a_slow_model_stream(git_repo: Path) -> None:
    executor = ForgeAgentExecutor()
    with ScriptedModelServer(Script([])) as server:
        streaming = asyncio.Event()
        loop = asyncio.get_running_loop()

        def slow(_server: ScriptedModelServer, _request: RecordedRequest) -> Response:
            def chunks() -> Iterator[bytes]:
                loop.call_soon_threadsafe(streaming.set)
                yield sse({"choices": [{"index": 0, "delta": {"content": "Thinking"}}]})
                for _ in range(300):  # ends when the client hangs up (a write fails)
                    time.sleep(0.1)
                    yield b": still working\n\n"

            return 200, {"Content-Type": "text/event-stream"}, chunks()

        server.routes[("POST", "/slow/chat/completions")] = slow

        async def interrupt_when_streaming() -> None:
            await streaming.wait()
            await executor.interrupt(grace_seconds=1)

        task = asyncio.create_task(interrupt_when_streaming())
        events, result = await run_executor(
            executor, context(git_repo, f"{server.url}/slow"), timeout=20
        )
        await task
    assert result.outcome == "interrupted"
    assert not entries_of(events, "assistant_message")


async def test_interrupt_before_the_run_starts(git_repo: Path) -> None:
    executor = ForgeAgentExecutor()
    await executor.interrupt(0)
    events, result = await run_executor(executor, context(git_repo, "http://127.0.0.1:9/v1"))
    assert (events, result.outcome) == ([], "interrupted")


# ---- (d) permissions ---------------------------------------------------------------------------


def answering(
    permissions: Permissions, decisions: list[tuple[Decision, str]], asked: list[dict[str, Any]]
) -> Any:
    """An `on_event` that answers each permission request with the next decision."""

    def on_event(event: ExecutorEvent) -> None:
        if event.entry and event.entry["kind"] == "permission_request":
            asked.append(event.entry)
            decision, message = decisions.pop(0)
            permissions.answer(event.entry["permission_id"], decision, message)

    return on_event


async def test_ask_reject_then_once(git_repo: Path) -> None:
    write = {"path": "hello.py", "content": "print('hello')\n"}
    script = Script(
        [
            Reply(tool_calls=[ToolCall("write_file", write)]),
            Reply(tool_calls=[ToolCall("write_file", write)]),
            Reply(text="Written."),
        ]
    )
    permissions = Permissions(timeout_seconds=20)
    asked: list[dict[str, Any]] = []
    on_event = answering(permissions, [("reject", "not in main"), ("once", "")], asked)
    with ScriptedModelServer(script) as server:
        ctx = context(git_repo, server, permission_mode="ask", permissions=permissions)
        events, result = await run_executor(ForgeAgentExecutor(), ctx, on_event=on_event)
        # The rejection reached the model as the tool's result; the file was not written then.
        second = server.model_requests()[1]
        assert tool_results(second) == ["The user denied this tool call: not in main"]
        third = server.model_requests()[2]
        assert tool_results(third)[-1] == "Wrote 15 bytes to hello.py"

    assert [(a["tool"], a["action"], a["detail"]) for a in asked] == [
        ("write_file", "file_edit", "hello.py")
    ] * 2
    calls = tool_calls(events)
    assert [c["status"] for c in calls] == [
        "pending_approval",
        "denied",
        "pending_approval",
        "running",
        "success",
    ]
    assert calls[1]["error"] == "The user denied this tool call: not in main"
    assert calls[1]["tool_call_id"] == asked[0]["tool_call_id"]
    assert (git_repo / "hello.py").exists()
    assert result.outcome == "succeeded"


async def test_ask_always_and_accept_edits(git_repo: Path) -> None:
    script = Script(
        [
            Reply(tool_calls=[ToolCall("run_command", {"command": "echo one"})]),
            Reply(tool_calls=[ToolCall("run_command", {"command": "echo two"})]),
            Reply(tool_calls=[ToolCall("read_file", {"path": "hello.txt"})]),
            Reply(text="Ran both."),
        ]
    )
    permissions = Permissions(timeout_seconds=20)
    asked: list[dict[str, Any]] = []
    with ScriptedModelServer(script) as server:
        ctx = context(git_repo, server, permission_mode="ask", permissions=permissions)
        on_event = answering(permissions, [("always", "")], asked)
        events, result = await run_executor(ForgeAgentExecutor(), ctx, on_event=on_event)
    # Asked once for run_command; reading never asks.
    assert [a["detail"] for a in asked] == ["echo one"]
    assert [(c["tool"], c["status"]) for c in finished(events)] == [
        ("run_command", "success"),
        ("run_command", "success"),
        ("read_file", "success"),
    ]
    assert result.outcome == "succeeded"

    # accept_edits: the edit runs without asking, the command waits for an answer.
    script = Script(
        [
            Reply(
                tool_calls=[
                    ToolCall(
                        "edit_file",
                        {"path": "hello.txt", "old_string": "hello", "new_string": "bye"},
                    ),
                    ToolCall("run_command", {"command": "touch ran"}),
                ]
            ),
            Reply(text="Edited."),
        ]
    )
    permissions = Permissions(timeout_seconds=20)
    asked = []
    with ScriptedModelServer(script) as server:
        ctx = context(git_repo, server, permission_mode="accept_edits", permissions=permissions)
        on_event = answering(permissions, [("reject", "")], asked)
        events, result = await run_executor(ForgeAgentExecutor(), ctx, on_event=on_event)
    assert [a["tool"] for a in asked] == ["run_command"]
    assert [(c["tool"], c["status"]) for c in finished(events)] == [
        ("edit_file", "success"),
        ("run_command", "denied"),
    ]
    assert (git_repo / "hello.txt").read_text() == "bye\n"
    assert not (git_repo / "ran").exists()


async def test_interrupt_while_waiting_for_permission(git_repo: Path) -> None:
    script = Script([Reply(tool_calls=[ToolCall("run_command", {"command": "touch ran"})])])
    permissions = Permissions(timeout_seconds=20)
    executor = ForgeAgentExecutor()

    async def on_event(event: ExecutorEvent) -> None:
        if event.entry and event.entry["kind"] == "permission_request":
            await executor.interrupt(grace_seconds=1)

    with ScriptedModelServer(script) as server:
        ctx = context(git_repo, server, permission_mode="ask", permissions=permissions)
        events, result = await run_executor(executor, ctx, on_event=on_event)
    assert result.outcome == "interrupted"
    assert [c["status"] for c in tool_calls(events)] == ["pending_approval", "failed"]
    assert permissions.pending() == []
    assert not (git_repo / "ran").exists()


# ---- attachments, model errors, bounds -----------------------------------------------------------


async def test_image_attachment_is_sent_as_a_data_url(
    git_repo: Path, model_server: ScriptedModelServer
) -> None:
    image = git_repo / ".forge" / "shot.png"
    image.parent.mkdir()
    image.write_bytes(b"\x89PNG fake")
    notes = git_repo / "notes.txt"
    attachments = (
        Attachment("shot.png", "image/png", image),
        Attachment("notes.txt", "text/plain", notes),
    )
    ctx = context(git_repo, model_server, "Look at this.", attachments=attachments)
    await run_executor(ForgeAgentExecutor(), ctx)
    content = model_server.model_requests()[0].body["messages"][1]["content"]
    assert content[0]["type"] == "text"
    assert "- notes.txt (text/plain)" in content[0]["text"]
    assert content[1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORyBmYWtl"},
    }


async def test_model_server_errors(git_repo: Path) -> None:
    busy: Response = (503, {"Content-Type": "application/json", "Retry-After": "0"}, [b"{}"])
    answers = [busy, json_response(400, {"error": {"message": "model 'qwen3-coder' not found"}})]
    with ScriptedModelServer(Script([Reply(text="Fine now.")])) as server:
        scripted = server.routes[("POST", "/v1/chat/completions")]

        def flaky(server_: ScriptedModelServer, request: RecordedRequest) -> Response:
            return answers.pop(0) if answers else scripted(server_, request)

        server.routes[("POST", "/flaky/chat/completions")] = flaky
        url = f"{server.url}/flaky"
        # 503: retried (a system entry says so); 400: the run fails with a clear error entry.
        events, result = await run_executor(ForgeAgentExecutor(), context(git_repo, url))
        assert [e.executor_event_type for e in events] == ["model.retry", "model.error"]
        assert "503" in str(entries_of(events, "system")[0]["text"])
        error = entries_of(events, "error")[0]
        assert "400" in str(error["message"]) and "not found" in str(error["message"])
        assert result.outcome == "failed" and "400" in result.message
        # A 503 followed by an answer: the retry succeeds.
        answers.append(busy)
        events, result = await run_executor(ForgeAgentExecutor(), context(git_repo, url))
        assert result.outcome == "succeeded"
        assert [e["text"] for e in entries_of(events, "assistant_message")] == ["Fine now."]

    # Nothing listens: a clear error, no crash.
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    events, result = await run_executor(ForgeAgentExecutor(), context(git_repo, nowhere))
    assert result.outcome == "failed"
    assert "cannot reach the model server" in str(entries_of(events, "error")[0]["message"])


async def test_max_turns_and_bad_tool_arguments(git_repo: Path) -> None:
    broken_call = {"index": 0, "id": "call_x", "function": {"name": "list_dir", "arguments": "{no"}}
    broken = [
        sse({"choices": [{"index": 0, "delta": {"tool_calls": [broken_call]}}]}),
        sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        sse("[DONE]"),
    ]
    with ScriptedModelServer(Script([Reply(tool_calls=[ToolCall("glob", {})])])) as server:
        scripted = server.routes[("POST", "/v1/chat/completions")]

        def first_broken(server_: ScriptedModelServer, request: RecordedRequest) -> Response:
            if len(server_.model_requests()) == 1:
                return 200, {"Content-Type": "text/event-stream"}, broken
            return scripted(server_, request)

        server.routes[("POST", "/b/chat/completions")] = first_broken
        ctx = context(git_repo, f"{server.url}/b", settings={"max_turns": 2})
        events, result = await run_executor(ForgeAgentExecutor(), ctx)
        # Arguments that are not JSON: the model is told, the run goes on.
        told = tool_results(server.model_requests()[1])
        assert told == ["Error: the arguments of list_dir must be a JSON object, got: {no"]
    assert [(c["tool"], c["action"], c["status"]) for c in finished(events)] == [
        ("list_dir", "search", "failed"),
        ("glob", "search", "failed"),
    ]
    assert "'pattern' is required" in finished(events)[1]["error"]
    assert entries_of(events, "error")[-1]["code"] == "max_turns"
    assert result.outcome == "failed" and "max_turns" in result.message
    assert len(server.model_requests()) == 2


# ---- end to end through forge serve --------------------------------------------------------------


def test_end_to_end_through_forge(forge_server: Any, git_repo: Path) -> None:
    with ScriptedModelServer(Script(hello_script())) as model:
        server: ForgeServer = forge_server(
            f"""
[profiles.builtin]
executor = "forge"
model = "{MODEL}"
permission_mode = "bypass"
env = {{ OPENAI_BASE_URL = "{model.url}/v1", OPENAI_API_KEY = "test-key" }}
"""
        )
        done = hello_then_resume_through_forge(
            server,
            profile="builtin",
            repo=git_repo,
            executor="forge",
            prompt=HELLO,
            last_request_text=lambda: json.dumps(model.model_requests()[-1].body["messages"]),
        )
        assert done.first[-1]["usage"]["input_tokens"] == 300
        assert done.first[-1]["session_id"].startswith("fs_")
        assert "hello.py prints hello." in json.dumps(model.model_requests()[-1].body["messages"])
