"""The `command` executor, driven directly with real shell processes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from forge.executors import (
    CommandExecutor,
    ExecutorEvent,
    ExecutorResult,
    ExecutorStartFailed,
    InvalidExecutorSpec,
    RunContext,
    UnknownExecutor,
    get_executor,
)
from forge.executors.command import LINE_LIMIT, parse_stdout_line
from forge.executors.strays import processes_with
from forge.runner.proto import runner_pb2


def context(workspace: Path, prompt: str = "", **env: str) -> RunContext:
    return RunContext(
        request_id="req_1", agent_id="ag_1", workspace=workspace, prompt=prompt, env=env
    )


async def run_all(
    executor: CommandExecutor, ctx: RunContext
) -> tuple[list[ExecutorEvent], ExecutorResult]:
    events: list[ExecutorEvent] = []
    results: list[ExecutorResult] = []
    async with asyncio.timeout(20):
        async for output in executor.run(ctx):
            if isinstance(output, ExecutorResult):
                results.append(output)
            else:
                assert not results, "events after the result"
                events.append(output)
    assert len(results) == 1
    return events, results[0]


def texts(events: list[ExecutorEvent]) -> list[str]:
    return [event.entry["text"] for event in events if event.entry]


def test_plain_line_is_an_assistant_message() -> None:
    event = parse_stdout_line("hello world")
    assert event == ExecutorEvent(
        executor_event_type="",
        raw=None,
        entry={"kind": "assistant_message", "text": "hello world"},
    )


def test_json_object_passes_through_with_its_type_entry_and_session() -> None:
    line = '{"type":"tool","session_id":"s1","entry":{"kind":"tool_call","tool":"bash"}}'
    event = parse_stdout_line(line)
    assert event.executor_event_type == "tool"
    assert event.raw == {
        "type": "tool",
        "session_id": "s1",
        "entry": {"kind": "tool_call", "tool": "bash"},
    }
    assert event.entry == {"kind": "tool_call", "tool": "bash"}
    assert event.session_id == "s1"


@pytest.mark.parametrize(
    ("line", "raw"),
    [
        ('{"type": 3, "entry": {"kind": "nonsense"}}', {"type": 3, "entry": {"kind": "nonsense"}}),
        ('{"entry": "text"}', {"entry": "text"}),
        ("[1, 2]", [1, 2]),
        ("42", 42),
        ("null", None),
    ],
)
def test_other_json_values_have_no_entry(line: str, raw: object) -> None:
    event = parse_stdout_line(line)
    assert (event.executor_event_type, event.raw, event.entry) == ("", raw, None)


@pytest.mark.parametrize("line", ["NaN", '{"a": Infinity}', "{broken", "[1, 2"])
def test_text_that_is_not_json_is_an_assistant_message(line: str) -> None:
    assert parse_stdout_line(line).entry == {"kind": "assistant_message", "text": line}


async def test_output_lines_and_stdin(tmp_path: Path) -> None:
    executor = CommandExecutor("cat; echo; echo '  '; echo warning >&2")
    events, result = await run_all(executor, context(tmp_path, "first\r\nsecond"))
    # Blank lines are dropped, "\r\n" is a line end, a last line without "\n" counts.
    stdout = [event for event in events if event.executor_event_type != "stderr"]
    assert texts(stdout) == ["first", "second"]
    stderr = [event for event in events if event.executor_event_type == "stderr"]
    assert [event.entry for event in stderr] == [
        {"kind": "system", "text": "warning", "stream": "stderr"}
    ]
    assert (result.outcome, result.exit_code) == ("succeeded", 0)


async def test_runs_in_the_workspace(tmp_path: Path) -> None:
    events, _ = await run_all(CommandExecutor("pwd"), context(tmp_path))
    assert texts(events) == [str(tmp_path)]  # pytest gives a resolved path


async def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    events, _ = await run_all(CommandExecutor("printf 'a\\377b\\n'"), context(tmp_path))
    assert texts(events) == ["a\ufffdb"]


async def test_exit_codes(tmp_path: Path) -> None:
    _, result = await run_all(CommandExecutor("exit 7"), context(tmp_path))
    assert (result.outcome, result.exit_code) == ("failed", 7)
    assert "code 7" in result.message
    _, result = await run_all(CommandExecutor("kill -9 $$"), context(tmp_path))
    assert (result.outcome, result.exit_code) == ("failed", -9)
    assert "SIGKILL" in result.message


async def test_environment_is_allowlisted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGE_SECRET_TEST", "leak")
    monkeypatch.setenv("LC_FORGE_TEST", "kept")
    events, _ = await run_all(CommandExecutor("env"), context(tmp_path, EXTRA="x"))
    lines = texts(events)
    assert not [line for line in lines if "FORGE_SECRET_TEST" in line]
    assert {"FORGE_AGENT_ID=ag_1", "FORGE_REQUEST_ID=req_1", "EXTRA=x"} <= set(lines)
    assert "LC_FORGE_TEST=kept" in lines
    assert any(line.startswith("PATH=") for line in lines)


async def test_very_long_line_is_split_not_fatal(tmp_path: Path) -> None:
    length = LINE_LIMIT + 1000
    script = f"{sys.executable} -c \"print('x' * {length}); print('after')\""
    events, result = await run_all(CommandExecutor(script), context(tmp_path))
    pieces = texts(events)
    assert pieces[-1] == "after"
    assert sum(len(piece) for piece in pieces[:-1]) == length
    assert len(pieces) == 3
    assert all(len(piece.encode()) <= LINE_LIMIT for piece in pieces)
    assert result.outcome == "succeeded"


async def test_large_prompt_to_a_command_that_does_not_read_it(tmp_path: Path) -> None:
    executor = CommandExecutor("echo done")
    events, result = await run_all(executor, context(tmp_path, "x" * 1_000_000))
    assert texts(events) == ["done"]
    assert result.outcome == "succeeded"


async def test_interrupt_stops_the_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    executor = CommandExecutor(f"echo $$ > {pid_file}; echo ready; exec sleep 1000")
    outputs = executor.run(context(tmp_path))
    first = await asyncio.wait_for(anext(outputs), 10)
    assert isinstance(first, ExecutorEvent)
    pgid = int(pid_file.read_text())

    await asyncio.wait_for(executor.interrupt(grace_seconds=1), 5)
    result = await asyncio.wait_for(anext(outputs), 10)
    assert isinstance(result, ExecutorResult)
    assert result.outcome == "interrupted"
    await outputs.aclose()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


async def test_closing_the_run_early_kills_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    executor = CommandExecutor(f"echo $$ > {pid_file}; echo ready; exec sleep 1000")
    outputs = executor.run(context(tmp_path))
    await asyncio.wait_for(anext(outputs), 10)
    await asyncio.wait_for(outputs.aclose(), 10)
    with pytest.raises(ProcessLookupError):
        os.killpg(int(pid_file.read_text()), 0)


async def test_interrupt_before_start(tmp_path: Path) -> None:
    executor = CommandExecutor("echo never")
    await executor.interrupt(1)
    events, result = await run_all(executor, context(tmp_path))
    assert (events, result.outcome) == ([], "interrupted")


async def test_missing_workspace_fails_to_start(tmp_path: Path) -> None:
    outputs = CommandExecutor("true").run(context(tmp_path / "missing"))
    with pytest.raises(ExecutorStartFailed):
        await anext(outputs)


def test_get_executor_by_kind() -> None:
    executor = get_executor(runner_pb2.ExecutorSpec(kind="command", command="make test"))
    assert isinstance(executor, CommandExecutor)
    assert executor.command == "make test"
    with pytest.raises(InvalidExecutorSpec):
        get_executor(runner_pb2.ExecutorSpec(kind="command", command="  "))
    with pytest.raises(UnknownExecutor):
        get_executor(runner_pb2.ExecutorSpec(kind="nope"))


async def test_what_the_command_starts_in_a_session_of_its_own_is_gone_after_the_run(
    tmp_path: Path,
) -> None:
    ctx = context(tmp_path)
    # The detached process is running in its new session before the command ends.
    executor = CommandExecutor(
        "setsid sh -c 'echo $$ > detached.pid; exec sleep 60' < /dev/null > /dev/null 2>&1 & "
        "while [ ! -s detached.pid ]; do sleep 0.01; done; echo started"
    )
    events, result = await run_all(executor, ctx)
    assert texts(events) == ["started"] and result.outcome == "succeeded"
    assert (tmp_path / "detached.pid").read_text().strip().isdigit()
    assert processes_with({f"FORGE_REQUEST_ID={ctx.request_id}".encode()}) == []
