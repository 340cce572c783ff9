"""The built-in agent's parts: the stream parser on recorded streams (clean, garbled, cut), the
workspace tools on real files and processes, the session store and the settings."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from forge.executors import InvalidExecutorSpec, RunContext
from forge.executors.base import ExecutorStartFailed
from forge.executors.forge_agent import ForgeAgentExecutor
from forge.executors.forge_agent.client import (
    ModelTurn,
    ToolCallRequest,
    TurnAssembler,
    assemble,
    usage_from_wire,
)
from forge.executors.forge_agent.session import (
    SessionNotFound,
    SessionStore,
    close_open_tool_calls,
)
from forge.executors.forge_agent.settings import DEFAULT_BASE_URL, AgentSettings
from forge.executors.forge_agent.tools import WorkspaceTools, describe, truncate
from tests.support.executors import entries_of, run_executor
from tests.support.model_server import RecordedRequest, Response, Script, ScriptedModelServer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "forge"


def fixture_lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


# ---- the stream parser ---------------------------------------------------------------------------


def test_text_and_thinking_stream() -> None:
    turn = assemble(fixture_lines("text_and_thinking.sse"))
    assert turn.text == "Hello! I will create the file now, then run it."
    assert turn.reasoning == "The user wants hello.py; write it, then run it."
    assert (turn.finish_reason, turn.done, turn.complete) == ("stop", True, True)
    assert turn.tool_calls == [] and turn.problems == []
    assert turn.model == "scripted-model"
    assert usage_from_wire(turn.usage).model_dump() == {
        "input_tokens": 1200,
        "output_tokens": 48,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cost_usd": 0.0,
    }
    assert turn.message() == {"role": "assistant", "content": turn.text}


def test_tool_call_arguments_are_joined_by_index() -> None:
    turn = assemble(fixture_lines("tool_calls.sse"))
    assert turn.text == "Creating the file."
    assert turn.finish_reason == "tool_calls"
    assert [(call.name, json.loads(call.arguments)) for call in turn.tool_calls] == [
        ("write_file", {"path": "hello.py", "content": "print('hello')\n"}),
        ("run_command", {"command": "python3 hello.py"}),
    ]
    assert all(call.id.startswith("call_") for call in turn.tool_calls)
    message = turn.message()
    assert message["tool_calls"][1]["function"]["name"] == "run_command"
    assert message["tool_calls"][0]["type"] == "function"


def test_stream_without_usage() -> None:
    turn = assemble(fixture_lines("no_usage.sse"))
    assert turn.complete and turn.usage is None
    assert usage_from_wire(turn.usage).input_tokens == 0


def test_garbled_chunks_are_kept_as_problems_and_the_rest_still_counts() -> None:
    turn = assemble(fixture_lines("malformed_chunk.sse"))
    assert [problem.reason for problem in turn.problems] == [
        "chunk is not valid JSON",
        "not a server-sent event line",
    ]
    assert turn.problems[0].raw.startswith('{"id": "chatcmpl-')
    assert turn.problems[1].raw == "<html>502 Bad Gateway</html>"
    assert turn.text == "Creating the file."
    assert [call.name for call in turn.tool_calls] == ["write_file", "run_command"]
    assert turn.complete


def test_truncated_stream_is_incomplete() -> None:
    turn = assemble(fixture_lines("truncated.sse"))
    assert not turn.complete
    assert [problem.reason for problem in turn.problems] == ["chunk is not valid JSON"]
    # What came before the cut is there.
    assert [call.name for call in turn.tool_calls] == ["write_file", "run_command"]


def test_error_object_in_the_stream() -> None:
    turn = assemble(fixture_lines("error_in_stream.sse"))
    assert turn.error == {"message": "CUDA out of memory", "type": "server_error"}
    assert turn.text == "Creating the file."


def test_server_variants() -> None:
    assembler = TurnAssembler()
    # Ollama-style: whole calls without index, arguments as an object; `reasoning` field.
    assembler.feed_chunk({"choices": [{"delta": {"reasoning": "think"}}]})
    assembler.feed_chunk(
        {"choices": [{"delta": {"tool_calls": [{"id": "a", "function": {"name": "glob"}}]}}]}
    )
    assembler.feed_chunk(
        {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": {"pattern": "*"}}}]}}]}
    )
    assembler.feed_chunk(
        {"choices": [{"delta": {"tool_calls": [{"id": "b", "function": {"name": "list_dir"}}]}}]}
    )
    # A call without any id gets one.
    assembler.feed_chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    assembler.feed_chunk([1, 2])
    assembler.feed_line(": keep-alive")
    assembler.feed_line("event: message")
    turn = assembler.finish()
    assert turn.reasoning == "think"
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [
        ("a", "glob", '{"pattern": "*"}'),
        ("b", "list_dir", ""),
    ]
    assert [p.reason for p in turn.problems] == ["chunk is not a JSON object"]

    # A server that ignored `stream`: one whole completion with `message`.
    whole = TurnAssembler()
    whole.feed_chunk(
        {
            "choices": [
                {
                    "message": {
                        "content": None,
                        "tool_calls": [{"index": 0, "function": {"name": "grep", "arguments": ""}}],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2},
        }
    )
    turn = whole.finish()
    assert turn.complete and turn.tool_calls[0].name == "grep"
    assert turn.tool_calls[0].id.startswith("call_")
    assert turn.message()["content"] is None


def test_cached_prompt_tokens_are_cache_reads() -> None:
    usage = usage_from_wire(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 800},
        }
    )
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (200, 800, 7)
    assert usage_from_wire({"prompt_tokens": "x", "completion_tokens": True}).output_tokens == 0


# ---- recorded streams through the executor -------------------------------------------------------


def serve_fixtures(server: ScriptedModelServer, names: list[str]) -> str:
    """Answer each request with the next recorded stream; returns the base URL to use."""
    remaining = list(names)

    def handler(_server: ScriptedModelServer, _request: RecordedRequest) -> Response:
        data = (FIXTURES / remaining.pop(0)).read_bytes()
        return 200, {"Content-Type": "text/event-stream"}, [data]

    server.routes[("POST", "/recorded/chat/completions")] = handler
    return server.url + "/recorded"


def context(workspace: Path, base_url: str, **extra: Any) -> RunContext:
    values: dict[str, Any] = {
        "request_id": "req_1",
        "agent_id": "ag_1",
        "workspace": workspace,
        "prompt": "create hello.py and run it",
        "model": "scripted-model",
        "env": {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key"},
        "state_dir": workspace.parent / "state",
    }
    values.update(extra)
    return RunContext(**values)


def workspace_in(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return workspace


async def test_recorded_garbled_stream_gives_error_entries_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    workspace = workspace_in(tmp_path)
    with ScriptedModelServer(Script([])) as server:
        url = serve_fixtures(server, ["malformed_chunk.sse", "text_and_thinking.sse"])
        events, result = await run_executor(ForgeAgentExecutor(), context(workspace, url))
    errors = entries_of(events, "error")
    assert [e["code"] for e in errors] == ["bad_chunk", "bad_chunk"]
    assert errors[1]["raw"] == "<html>502 Bad Gateway</html>"
    # The tool calls of the garbled turn still ran.
    finished = [e for e in entries_of(events, "tool_call") if e["status"] != "running"]
    assert [(e["tool"], e["status"]) for e in finished] == [
        ("write_file", "success"),
        ("run_command", "success"),
    ]
    assert (workspace / "hello.py").exists()
    assert result.outcome == "succeeded"
    assert result.usage.input_tokens == 1500 + 1200


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("truncated.sse", "ended before the answer was complete"),
        ("error_in_stream.sse", "CUDA out of memory"),
    ],
)
async def test_recorded_broken_stream_fails_the_run(
    tmp_path: Path, fixture: str, message: str
) -> None:
    workspace = workspace_in(tmp_path)
    with ScriptedModelServer(Script([])) as server:
        url = serve_fixtures(server, [fixture])
        events, result = await run_executor(ForgeAgentExecutor(), context(workspace, url))
    errors = entries_of(events, "error")
    assert errors and message in str(errors[-1]["message"])
    assert result.outcome == "failed" and message in result.message
    assert result.session_id.startswith("fs_")
    # Nothing of the broken turn ran.
    assert not entries_of(events, "tool_call")
    assert not (workspace / "hello.py").exists()


# ---- tools ---------------------------------------------------------------------------------------


@pytest.fixture
def tools(tmp_path: Path) -> WorkspaceTools:
    workspace = workspace_in(tmp_path)
    (tmp_path / "secret.txt").write_text("outside\n")
    return WorkspaceTools(
        workspace, env={"PATH": os.environ["PATH"]}, max_output_chars=2000, command_timeout=20
    )


async def call(tools: WorkspaceTools, name: str, **arguments: Any) -> tuple[bool, str]:
    result = await tools.call(name, arguments)
    return result.ok, result.output


@pytest.mark.parametrize("path", ["../secret.txt", "/etc/passwd", "a/../../secret.txt"])
async def test_paths_outside_the_workspace_are_refused(tools: WorkspaceTools, path: str) -> None:
    for name, extra in [
        ("read_file", {}),
        ("write_file", {"content": "x"}),
        ("edit_file", {"old_string": "a", "new_string": "b"}),
        ("list_dir", {}),
        ("grep", {"pattern": "x"}),
        ("glob", {"pattern": "*"}),
    ]:
        ok, output = await call(tools, name, path=path, **extra)
        assert not ok and "outside the workspace" in output, (name, output)
    assert (tools.root.parent / "secret.txt").read_text() == "outside\n"


async def test_symlinks_out_of_the_workspace_are_refused(tools: WorkspaceTools) -> None:
    outside = tools.root.parent
    (tools.root / "link.txt").symlink_to(outside / "secret.txt")
    (tools.root / "linkdir").symlink_to(outside)
    (tools.root / "dangling").symlink_to(outside / "new.txt")
    (tools.root / "inside.txt").write_text("in\n")
    (tools.root / "ok-link").symlink_to(tools.root / "inside.txt")
    assert not (await call(tools, "read_file", path="link.txt"))[0]
    assert not (await call(tools, "read_file", path="linkdir/secret.txt"))[0]
    assert not (await call(tools, "write_file", path="linkdir/new.txt", content="x"))[0]
    assert not (await call(tools, "write_file", path="dangling", content="x"))[0]
    assert not (outside / "new.txt").exists()
    assert await call(tools, "read_file", path="ok-link") == (True, "     1\tin")
    # grep does not follow a link out of the workspace.
    ok, output = await call(tools, "grep", pattern="outside")
    assert ok and output == "No matches."


async def test_read_file_with_offset_and_limit(tools: WorkspaceTools) -> None:
    (tools.root / "f.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    ok, output = await call(tools, "read_file", path="f.txt", offset=3, limit=2)
    assert ok
    assert (
        output
        == "     3\tline 3\n     4\tline 4\n[lines 3-4 of 10; use offset and limit to read more]"
    )
    ok, output = await call(tools, "read_file", path="f.txt")
    assert output.splitlines()[-1] == "    10\tline 10"
    (tools.root / "b.bin").write_bytes(b"\x00\x01\x02")
    assert await call(tools, "read_file", path="b.bin") == (
        True,
        "b.bin is a binary file (3 bytes)",
    )
    ok, output = await call(tools, "read_file", path="missing.txt")
    assert not ok and "No such file" in output
    ok, output = await call(tools, "read_file")
    assert not ok and "'path' is required" in output


async def test_write_and_edit(tools: WorkspaceTools) -> None:
    ok, output = await call(tools, "write_file", path="pkg/mod.py", content="a = 1\nb = 1\n")
    assert (ok, output) == (True, "Wrote 12 bytes to pkg/mod.py")
    ok, output = await call(tools, "edit_file", path="pkg/mod.py", old_string="= 1", new_string="")
    assert not ok and "occurs 2 times" in output
    ok, output = await call(tools, "edit_file", path="pkg/mod.py", old_string="c", new_string="")
    assert not ok and "not found" in output
    ok, _ = await call(
        tools, "edit_file", path="pkg/mod.py", old_string="b = 1", new_string="b = 2"
    )
    assert ok and (tools.root / "pkg/mod.py").read_text() == "a = 1\nb = 2\n"
    ok, output = await call(tools, "edit_file", path="nope.py", old_string="x", new_string="y")
    assert not ok and "does not exist" in output


async def test_search_tools_skip_git(tools: WorkspaceTools) -> None:
    (tools.root / ".git").mkdir()
    (tools.root / ".git" / "config.py").write_text("needle\n")
    (tools.root / "src").mkdir()
    (tools.root / "src" / "a.py").write_text("x = 1\nNEEDLE = 2\n")
    (tools.root / "src" / "b.txt").write_text("needle\n")
    assert await call(tools, "glob", pattern="**/*.py") == (True, "src/a.py")
    assert await call(tools, "grep", pattern="needle", ignore_case=True, include="*.py") == (
        True,
        "src/a.py:2: NEEDLE = 2",
    )
    ok, output = await call(tools, "grep", pattern="needle")
    assert output == "src/b.txt:1: needle"
    ok, output = await call(tools, "grep", pattern="(")
    assert not ok and "invalid regular expression" in output
    assert await call(tools, "list_dir") == (True, "src/")
    assert await call(tools, "list_dir", path="src") == (True, "a.py\nb.txt")
    assert await call(tools, "glob", pattern="*.nothing") == (True, "No files matched.")


async def test_unknown_tool_and_bad_arguments(tools: WorkspaceTools) -> None:
    ok, output = await call(tools, "delete_everything")
    assert not ok and "unknown tool" in output
    ok, output = await call(tools, "read_file", path="x", offset="ten")
    assert not ok and "'offset' must be an integer" in output


async def test_run_command_output_exit_code_and_truncation(tools: WorkspaceTools) -> None:
    ok, output = await call(tools, "run_command", command="echo out; echo err >&2; exit 3")
    assert not ok
    assert output == "out\nerr\n[the command exited with code 3]"
    ok, output = await call(tools, "run_command", command="pwd")
    assert ok and output.splitlines()[0] == str(tools.root)
    ok, output = await call(
        tools, "run_command", command="python3 -c \"print('a' * 100000); print('END')\""
    )
    assert ok and len(output) < 2200
    assert output.startswith("aaaa") and "truncated" in output
    assert output.endswith("END\n[the command exited with code 0]")


def has_text(path: Path) -> bool:
    return path.exists() and bool(path.read_text().strip())


async def file_written(path: Path) -> None:
    """Wait (bounded) until a process has written `path`."""
    for _ in range(500):
        if has_text(path):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} was not written")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) is gone for our purposes.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


async def test_run_command_kills_what_it_left_behind(tools: WorkspaceTools) -> None:
    ok, output = await call(tools, "run_command", command="sleep 300 & echo $!")
    assert ok
    assert not alive(int(output.splitlines()[0]))


async def test_run_command_timeout_kills_the_group(tools: WorkspaceTools) -> None:
    ok, output = await call(
        tools, "run_command", command="sleep 300 & echo $! > bg; sleep 300", timeout=0.5
    )
    assert not ok and "timed out after 0.5 s" in output
    assert not alive(int((tools.root / "bg").read_text()))


async def test_cancelled_command_is_killed(tools: WorkspaceTools) -> None:
    pid_file = tools.root / "pid"
    task = asyncio.create_task(
        tools.call("run_command", {"command": f"echo $$ > {pid_file}; sleep 300 & wait"})
    )
    await file_written(pid_file)
    pgid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_truncate_and_describe() -> None:
    assert truncate("abc", 10) == "abc"
    cut = truncate("a" * 50 + "b" * 50, 20)
    assert cut.startswith("a" * 10) and cut.endswith("b" * 10)
    assert "[... 80 characters truncated ...]" in cut
    assert describe("run_command", {"command": "ls"}).command == "ls"
    assert describe("edit_file", {"path": "a.py"}).path == "a.py"
    assert describe("grep", {"pattern": "x"}).detail == "x"
    assert describe("list_dir", {}).path == "."


# ---- sessions and settings -----------------------------------------------------------------------


def test_session_store_round_trip(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "forge-agent")
    messages = [{"role": "user", "content": "héllo"}]
    store.save("fs_abc", messages, "m")
    assert store.load("fs_abc") == messages
    assert [p.name for p in store.directory.iterdir()] == ["fs_abc.json"]
    with pytest.raises(SessionNotFound, match="no stored conversation"):
        store.load("fs_other")
    with pytest.raises(SessionNotFound, match="invalid session id"):
        store.load("../../etc/passwd")
    (store.directory / "fs_bad.json").write_text("{not json")
    with pytest.raises(SessionNotFound):
        store.load("fs_bad")
    assert issubclass(SessionNotFound, ExecutorStartFailed)


def test_open_tool_calls_are_closed() -> None:
    turn = ModelTurn(
        tool_calls=[ToolCallRequest("c1", "glob", "{}"), ToolCallRequest("c2", "glob", "{}")]
    )
    messages = [
        {"role": "user", "content": "go"},
        turn.message(),
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "user", "content": "again"},
    ]
    closed = close_open_tool_calls(messages)
    assert [(m["role"], m.get("tool_call_id")) for m in closed] == [
        ("user", None),
        ("assistant", None),
        ("tool", "c1"),
        ("tool", "c2"),
        ("user", None),
    ]
    assert close_open_tool_calls(closed) == closed


def test_settings(tmp_path: Path) -> None:
    ctx = RunContext(request_id="r", agent_id="a", workspace=tmp_path, prompt="p")
    with pytest.raises(InvalidExecutorSpec, match="needs a model"):
        AgentSettings.from_context(ctx, {})
    ctx = RunContext(
        request_id="r",
        agent_id="a",
        workspace=tmp_path,
        prompt="p",
        model="qwen",
        settings={"system_prompt": "Be brief.", "max_turns": 3},
    )
    settings = AgentSettings.from_context(ctx, {"OPENAI_API_KEY": "k"})
    assert (settings.base_url, settings.api_key, settings.max_turns) == (DEFAULT_BASE_URL, "k", 3)
    assert (
        settings.system_prompt.endswith("\n\nBe brief.") and str(tmp_path) in settings.system_prompt
    )
    env = {"OPENAI_BASE_URL": "http://env/v1"}
    assert AgentSettings.from_context(ctx, env).base_url == "http://env/v1"
    ctx = RunContext(
        request_id="r",
        agent_id="a",
        workspace=tmp_path,
        prompt="p",
        model="qwen",
        settings={"base_url": "http://setting/v1", "max_turns": "many"},
    )
    with pytest.raises(InvalidExecutorSpec, match="'max_turns' must be an integer"):
        AgentSettings.from_context(ctx, env)


async def test_missing_model_and_missing_session_are_clear_errors(tmp_path: Path) -> None:
    workspace = workspace_in(tmp_path)
    ctx = context(workspace, "http://127.0.0.1:9", model="")
    with pytest.raises(InvalidExecutorSpec, match="needs a model"):
        await run_executor(ForgeAgentExecutor(), ctx)
    ctx = context(workspace, "http://127.0.0.1:9", resume_session_id="fs_nope")
    with pytest.raises(SessionNotFound, match="fs_nope"):
        await run_executor(ForgeAgentExecutor(), ctx)
    ctx = context(workspace, "http://127.0.0.1:9", resume_session_id="fs_x", state_dir=None)
    with pytest.raises(ExecutorStartFailed, match="needs the run's state_dir"):
        await run_executor(ForgeAgentExecutor(), ctx)
