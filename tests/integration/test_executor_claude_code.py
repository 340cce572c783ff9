"""The Claude Code executor driving the real `claude` CLI against the scripted model server
(Anthropic Messages API), directly and through a real `forge serve`."""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest

from forge.executors.base import Attachment, ExecutorEvent, PermissionMode, RunContext
from forge.executors.claude_code import ClaudeCodeExecutor
from forge.executors.permissions import Decision, Permissions
from tests.integration.conftest import ForgeServer, wait_for
from tests.support.agent_clis import cli_path
from tests.support.anthropic_wire import AnthropicReply  # also registers the Anthropic routes
from tests.support.executors import entries_of, run_executor
from tests.support.executors import leftover_processes as shared_leftovers
from tests.support.model_server import Reply, Script, ScriptedModelServer, ToolCall
from tests.support.scenarios import hello_then_resume_through_forge

pytestmark = pytest.mark.integration

# A model name Claude Code knows the prices of, so the run has a cost.
MODEL = "claude-sonnet-4-5"
PROMPT = "Create hello.py that prints hello, then run it."
# Claude Code refuses a bare `sleep 30` in its Bash tool ("use Monitor ..."); this sleeps too,
# after leaving a file that says it has started.
LONG_COMMAND = (
    "python3 -c 'import pathlib, time; pathlib.Path(\"started\").touch(); time.sleep(30)'"
)


def hello_replies(workspace: Path) -> list[Reply]:
    return [
        AnthropicReply(
            text="I'll create hello.py.",
            thinking="Write the file, then run it.",
            tool_calls=[
                ToolCall(
                    "Write",
                    {"file_path": str(workspace / "hello.py"), "content": "print('hello')\n"},
                )
            ],
            cache_write_tokens=30,
        ),
        AnthropicReply(
            tool_calls=[ToolCall("Bash", {"command": "python3 hello.py", "description": "Run"})],
            cache_read_tokens=30,
        ),
        Reply(text="Done: hello.py prints hello."),
    ]


def context(
    workspace: Path,
    home: Path,
    server: ScriptedModelServer,
    prompt: str = PROMPT,
    permission_mode: PermissionMode = "bypass",
    **fields: Any,
) -> RunContext:
    return RunContext(
        # Unique: a run ends every process carrying its ids (`forge.executors.strays`), so ids
        # shared with tests running at the same time would end each other's processes.
        request_id="req_" + uuid.uuid4().hex,
        agent_id="ag_" + uuid.uuid4().hex,
        workspace=workspace,
        prompt=prompt,
        env={"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "test-key"},
        settings={"command": cli_path("claude")},
        model=MODEL,
        permission_mode=permission_mode,
        home=home,
        **fields,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def tool_calls(events: list[ExecutorEvent]) -> list[tuple[str, str]]:
    return [(str(e["action"]), str(e["status"])) for e in entries_of(events, "tool_call")]


def leftover_processes(workspace: Path) -> list[str]:
    return shared_leftovers(workspace, cli_path("claude"))


async def test_hello_then_resume(git_repo: Path, home: Path) -> None:
    with ScriptedModelServer(Script(hello_replies(git_repo))) as server:
        events, result = await run_executor(
            ClaudeCodeExecutor(), context(git_repo, home, server), timeout=60
        )
        assert (result.outcome, result.message) == ("succeeded", "claude finished its turn")
        assert (git_repo / "hello.py").read_text() == "print('hello')\n"
        assert tool_calls(events) == [
            ("file_edit", "running"),
            ("file_edit", "success"),
            ("command_run", "running"),
            ("command_run", "success"),
        ]
        bash = entries_of(events, "tool_call")[-1]
        assert (bash["command"], bash["output"]) == ("python3 hello.py", "hello")
        assert [e["text"] for e in entries_of(events, "thinking")] == [
            "Write the file, then run it."
        ]
        assert result.usage.input_tokens == 300 and result.usage.output_tokens == 60
        assert (result.usage.cache_read_tokens, result.usage.cache_write_tokens) == (30, 30)
        assert result.usage.cost_usd > 0
        assert result.session_id
        assert events[0].executor_event_type == "system/init"
        assert all(e.session_id == result.session_id for e in events if e.session_id)
        # The CLI's session lives in the private home, nowhere else.
        assert list((home / ".claude" / "projects").rglob(f"{result.session_id}.jsonl"))

        first_cost = result.usage.cost_usd
        events, resumed = await run_executor(
            ClaudeCodeExecutor(),
            context(
                git_repo, home, server, "Now say goodbye.", resume_session_id=result.session_id
            ),
            timeout=60,
        )
        assert resumed.outcome == "succeeded"
        assert resumed.session_id == result.session_id
        last = server.model_requests()[-1].text()
        assert PROMPT in last and "Now say goodbye." in last and "hello.py prints hello" in last
        # The usage of this run alone, not of the whole session.
        assert resumed.usage.input_tokens == 100
        assert resumed.usage.cost_usd < first_cost


async def interrupt_once_started(
    executor: ClaudeCodeExecutor, workspace: Path, grace_seconds: float
) -> None:
    """Interrupt when the long command is running (not merely asked for)."""
    await asyncio.to_thread(wait_for, (workspace / "started").exists, 30)
    await executor.interrupt(grace_seconds)


@pytest.mark.parametrize("grace_seconds", [15.0, 0.0], ids=["control_protocol", "kill"])
async def test_interrupt_during_a_long_command(
    git_repo: Path, home: Path, grace_seconds: float
) -> None:
    replies = [Reply(text="Waiting.", tool_calls=[ToolCall("Bash", {"command": LONG_COMMAND})])]
    with ScriptedModelServer(Script(replies)) as server:
        executor = ClaudeCodeExecutor()
        stopping: list[asyncio.Task[None]] = []

        def on_event(event: ExecutorEvent) -> None:
            entry = event.entry or {}
            if entry.get("kind") == "tool_call" and entry.get("status") == "running":
                task = interrupt_once_started(executor, git_repo, grace_seconds)
                stopping.append(asyncio.create_task(task))

        events, result = await run_executor(
            executor, context(git_repo, home, server), on_event=on_event, timeout=60
        )
        await asyncio.gather(*stopping)
    assert result.outcome == "interrupted"
    assert result.session_id
    if grace_seconds:
        # The control-protocol interrupt ended the turn and the CLI exited by itself.
        assert result.exit_code >= 0
        assert tool_calls(events) == [("command_run", "running"), ("command_run", "failed")]
    else:
        assert result.exit_code == -9
    # Also the command, which Claude Code runs in a session of its own.
    assert leftover_processes(git_repo) == []


class Answerer:
    """An `on_event` that answers each permission request with the next decision."""

    def __init__(self, permissions: Permissions, decisions: list[tuple[Decision, str]]) -> None:
        self.permissions = permissions
        self.decisions = decisions
        self.asked: list[dict[str, Any]] = []

    def __call__(self, event: ExecutorEvent) -> None:
        if event.entry and event.entry["kind"] == "permission_request":
            self.asked.append(event.entry)
            decision, message = self.decisions.pop(0)
            self.permissions.answer(str(event.entry["permission_id"]), decision, message)


async def test_ask_reject_reaches_the_model_and_nothing_is_written(
    git_repo: Path, home: Path
) -> None:
    replies = [hello_replies(git_repo)[0], Reply(text="Understood, I won't.")]
    permissions = Permissions()
    on_event = Answerer(permissions, [("reject", "not in this repo")])
    with ScriptedModelServer(Script(replies)) as server:
        ctx = context(git_repo, home, server, permission_mode="ask", permissions=permissions)
        events, result = await run_executor(
            ClaudeCodeExecutor(), ctx, on_event=on_event, timeout=60
        )
        denial = server.model_requests()[-1].text()
    [asked] = on_event.asked
    assert (asked["tool"], asked["action"], asked["detail"]) == ("Write", "file_edit", "hello.py")
    assert asked["tool_call_id"] == entries_of(events, "tool_call")[0]["tool_call_id"]
    assert result.outcome == "succeeded"
    assert not (git_repo / "hello.py").exists()
    assert tool_calls(events) == [("file_edit", "running"), ("file_edit", "denied")]
    assert "The user denied this tool call: not in this repo" in denial
    assert entries_of(events, "tool_call")[-1]["error"] == (
        "The user denied this tool call: not in this repo"
    )


async def test_ask_once_and_always(git_repo: Path, home: Path) -> None:
    second_write = ToolCall(
        "Write", {"file_path": str(git_repo / "bye.py"), "content": "print('bye')\n"}
    )
    replies = [
        hello_replies(git_repo)[0],
        hello_replies(git_repo)[1],
        Reply(tool_calls=[second_write]),
        Reply(text="Done."),
    ]
    permissions = Permissions()
    # Write once, Bash always; the second Write is asked again, answered once.
    on_event = Answerer(permissions, [("once", ""), ("always", ""), ("once", "")])
    with ScriptedModelServer(Script(replies)) as server:
        ctx = context(git_repo, home, server, permission_mode="ask", permissions=permissions)
        events, result = await run_executor(
            ClaudeCodeExecutor(), ctx, on_event=on_event, timeout=60
        )
    assert result.outcome == "succeeded"
    assert [a["tool"] for a in on_event.asked] == ["Write", "Bash", "Write"]
    assert (git_repo / "hello.py").exists() and (git_repo / "bye.py").exists()
    assert [status for _, status in tool_calls(events)] == ["running", "success"] * 3
    assert permissions.always_allowed("Bash")

    # A later run: Bash is allowed without asking.
    replies = [Reply(tool_calls=[ToolCall("Bash", {"command": "python3 bye.py"})]), Reply()]
    on_event = Answerer(permissions, [])
    with ScriptedModelServer(Script(replies)) as server:
        ctx = context(git_repo, home, server, permission_mode="ask", permissions=permissions)
        events, result = await run_executor(
            ClaudeCodeExecutor(), ctx, on_event=on_event, timeout=60
        )
    assert on_event.asked == []
    assert entries_of(events, "tool_call")[-1]["output"] == "bye"


async def test_interrupt_while_asking(git_repo: Path, home: Path) -> None:
    executor = ClaudeCodeExecutor()
    stopping: list[asyncio.Task[None]] = []

    def on_event(event: ExecutorEvent) -> None:
        if (event.entry or {}).get("kind") == "permission_request":
            stopping.append(asyncio.create_task(executor.interrupt(15)))

    permissions = Permissions()
    with ScriptedModelServer(Script(hello_replies(git_repo))) as server:
        ctx = context(git_repo, home, server, permission_mode="ask", permissions=permissions)
        events, result = await run_executor(executor, ctx, on_event=on_event, timeout=60)
        await asyncio.gather(*stopping)
    assert (result.outcome, result.exit_code >= 0) == ("interrupted", True)
    assert permissions.pending() == []
    assert not (git_repo / "hello.py").exists()
    assert tool_calls(events)[-1][1] in ("denied", "failed")
    assert leftover_processes(git_repo) == []


async def test_accept_edits_asks_only_for_commands(git_repo: Path, home: Path) -> None:
    permissions = Permissions()
    on_event = Answerer(permissions, [("once", "")])
    with ScriptedModelServer(Script(hello_replies(git_repo))) as server:
        ctx = context(
            git_repo, home, server, permission_mode="accept_edits", permissions=permissions
        )
        events, result = await run_executor(
            ClaudeCodeExecutor(), ctx, on_event=on_event, timeout=60
        )
    assert result.outcome == "succeeded"
    assert [a["tool"] for a in on_event.asked] == ["Bash"]
    assert tool_calls(events)[-1] == ("command_run", "success")


def one_pixel_png() -> bytes:
    """A valid 1x1 red PNG (Claude Code decodes images before sending them)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


async def test_image_attachment_reaches_the_model(git_repo: Path, home: Path) -> None:
    image = git_repo / "shot.png"
    image.write_bytes(one_pixel_png())
    with ScriptedModelServer(Script([Reply(text="A picture.")])) as server:
        ctx = context(
            git_repo,
            home,
            server,
            "What is in the picture?",
            attachments=(Attachment("shot.png", "image/png", image),),
        )
        _, result = await run_executor(ClaudeCodeExecutor(), ctx, timeout=60)
        [request] = server.model_requests()
    assert result.outcome == "succeeded"
    blocks = request.body["messages"][0]["content"]
    images = [block for block in blocks if block.get("type") == "image"]
    assert [block["source"]["media_type"] for block in images] == ["image/png"]
    assert base64.b64decode(images[0]["source"]["data"]) == image.read_bytes()


async def test_model_error_fails_the_run(git_repo: Path, home: Path) -> None:
    error = AnthropicReply(error_status=400, error_message="messages: invalid request")
    with ScriptedModelServer(Script([], fallback=error)) as server:
        events, result = await run_executor(
            ClaudeCodeExecutor(), context(git_repo, home, server), timeout=60
        )
    assert result.outcome == "failed"
    assert "invalid request" in result.message
    assert entries_of(events, "error")


def test_through_forge(forge_server: Any, git_repo: Path) -> None:
    script = Script([])
    with ScriptedModelServer(script) as model:
        server: ForgeServer = forge_server(
            f"""
[profiles.claude]
executor = "claude_code"
command = "{cli_path("claude")}"
model = "{MODEL}"
permission_mode = "bypass"
env = {{ ANTHROPIC_BASE_URL = "{model.url}", ANTHROPIC_API_KEY = "test-key" }}
"""
        )
        done = hello_then_resume_through_forge(
            server,
            profile="claude",
            repo=git_repo,
            executor="claude_code",
            prompt=PROMPT,
            # The scripted Write names the worktree's absolute path.
            before_first=lambda worktree: script.replies.extend(hello_replies(worktree)),
            last_request_text=lambda: model.model_requests()[-1].text(),
        )
        assert [c["tool"] for c in done.tool_calls] == ["Write", "Write", "Bash", "Bash"]
        events = [e for e in done.first if e["event_type"] == "agent.event"]
        assert events[0]["executor_event_type"] == "system/init"
        assert done.first[-1]["usage"]["cost_usd"] > 0
