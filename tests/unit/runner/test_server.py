"""The runner as the platform sees it: a real `python -m forge.runner` driven over its socket."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from forge.runner import RunnerClient, RunnerDisconnected, RunnerStream, RunnerUnauthenticated
from forge.runner.proto import runner_pb2

from .conftest import AGENT_ID, RunnerProcess, StartRunner

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FINAL = ("complete", "error")


def command(line: str) -> runner_pb2.ExecutorSpec:
    return runner_pb2.ExecutorSpec(kind="command", command=line)


def kind(message: runner_pb2.RunnerMessage) -> str:
    return str(message.WhichOneof("kind"))


async def receive(stream: RunnerStream, seconds: float = 10) -> runner_pb2.RunnerMessage:
    return await asyncio.wait_for(anext(stream), seconds)


async def receive_state(stream: RunnerStream) -> runner_pb2.State:
    message = await receive(stream)
    assert kind(message) == "state", message
    assert message.runner_seq == 0
    return message.state


async def durable_until_final(
    stream: RunnerStream, request_id: str, seconds: float = 10
) -> list[runner_pb2.RunnerMessage]:
    """Durable messages (States skipped) up to and including `request_id`'s final one."""
    messages: list[runner_pb2.RunnerMessage] = []
    while True:
        message = await receive(stream, seconds)
        if kind(message) == "state":
            continue
        messages.append(message)
        if message.request_id == request_id and kind(message) in FINAL:
            return messages


def entries(messages: list[runner_pb2.RunnerMessage]) -> list[dict[str, Any]]:
    return [json.loads(m.event.entry_json) for m in messages if kind(m) == "event"]


def texts(messages: list[runner_pb2.RunnerMessage]) -> list[str]:
    return [entry["text"] for entry in entries(messages) if entry]


def read_pid(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


async def wait_for_pid(path: Path) -> int:
    """The pid (or pgid) a command wrote to `path`, once it has."""
    for _ in range(500):
        pid = read_pid(path)
        if pid is not None:
            return pid
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} was not written")


def assert_group_gone(pgid: int) -> None:
    """The process group is gone, or goes within a few seconds (a killed process lingers until
    it is reaped, later on a loaded machine)."""
    for _ in range(500):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process group {pgid} is still there")


async def test_run_streams_started_events_and_complete(client: RunnerClient) -> None:
    stream = await client.connect(resume_after=0)
    state = await receive_state(stream)
    assert (state.status, state.last_runner_seq) == ("idle", 0)

    script = (
        "printf 'plain text\\n'; "
        """printf '%s\\n' '{"type":"note","entry":{"kind":"thinking","text":"hm"}}'; """
        "echo oops >&2"
    )
    await stream.run("req_1", "the prompt", command(script))
    messages = await durable_until_final(stream, "req_1")

    assert [m.runner_seq for m in messages] == list(range(1, len(messages) + 1))
    assert all(m.request_id == "req_1" and TIMESTAMP.match(m.timestamp) for m in messages)
    assert kind(messages[0]) == "started"
    assert messages[0].started.executor == "command"
    complete = messages[-1]
    assert kind(complete) == "complete"
    assert (complete.complete.outcome, complete.complete.exit_code) == ("succeeded", 0)

    events = {m.event.executor_event_type: m.event for m in messages if kind(m) == "event"}
    assert len(events) == 3 == len(messages) - 2
    plain, note, stderr = events[""], events["note"], events["stderr"]
    assert plain.executor == "command"
    assert json.loads(plain.raw_json) is None
    assert json.loads(plain.entry_json) == {"kind": "assistant_message", "text": "plain text"}
    assert json.loads(note.raw_json) == {
        "type": "note",
        "entry": {"kind": "thinking", "text": "hm"},
    }
    assert json.loads(note.entry_json) == {"kind": "thinking", "text": "hm"}
    assert json.loads(stderr.raw_json) is None
    assert json.loads(stderr.entry_json) == {"kind": "system", "text": "oops", "stream": "stderr"}
    # stdout lines keep their order.
    stdout_seqs = [m.runner_seq for m in messages if m.event.executor_event_type != "stderr"]
    assert stdout_seqs == sorted(stdout_seqs)
    await stream.close()


async def test_prompt_is_the_commands_stdin_and_is_not_logged(
    runner: RunnerProcess, client: RunnerClient
) -> None:
    stream = await client.connect()
    await stream.run("req_1", "line one\nsecret line two\n", command("cat"))
    messages = await durable_until_final(stream, "req_1")
    assert texts(messages) == ["line one", "secret line two"]
    assert "req_1" in runner.log
    assert "secret" not in runner.log


async def test_listens_on_tcp_port_0_and_prints_the_bound_address(
    start_runner: StartRunner,
) -> None:
    runner = start_runner(listen="tcp:127.0.0.1:0")
    assert re.fullmatch(r"tcp:127\.0\.0\.1:[1-9]\d*", runner.address)
    client = runner.client()
    await client.wait_ready(5)
    stream = await client.connect()
    await stream.run("req_1", "", command("echo over tcp"))
    assert texts(await durable_until_final(stream, "req_1")) == ["over tcp"]
    await client.close()


async def test_nonzero_exit_fails(client: RunnerClient) -> None:
    stream = await client.connect()
    await stream.run("req_1", "", command("echo bad; exit 3"))
    complete = (await durable_until_final(stream, "req_1"))[-1]
    assert complete.complete.outcome == "failed"
    assert complete.complete.exit_code == 3
    assert "3" in complete.complete.message


async def test_reconnect_replays_exactly_the_unacked_messages(client: RunnerClient) -> None:
    stream = await client.connect()
    await stream.run("req_1", "", command("for i in 1 2 3 4 5; do echo line$i; done"))
    messages = await durable_until_final(stream, "req_1")
    assert [m.runner_seq for m in messages] == [1, 2, 3, 4, 5, 6, 7]
    await stream.close()

    stream = await client.connect(resume_after=3)
    replayed = [await receive(stream) for _ in range(4)]
    assert [m.runner_seq for m in replayed] == [4, 5, 6, 7]
    assert [m.SerializeToString() for m in replayed] == [
        m.SerializeToString() for m in messages[3:]
    ]
    state = await receive_state(stream)
    assert state.last_runner_seq == 7
    assert state.known_request_ids == ["req_1"]

    await stream.ack(5)
    await stream.close()
    stream = await client.connect(resume_after=0)
    replayed = [await receive(stream) for _ in range(2)]
    assert [m.runner_seq for m in replayed] == [6, 7]
    await receive_state(stream)
    await stream.close()


async def test_many_messages_arrive_in_few_stream_writes(client: RunnerClient) -> None:
    stream = await client.connect()
    await stream.run("req_1", "", command("seq 1 3000"))
    live = await durable_until_final(stream, "req_1")
    assert [m.runner_seq for m in live] == list(range(1, 3003))
    assert [json.loads(m.event.raw_json) for m in live[1:-1]] == list(range(1, 3001))
    # A burst is packed into large batches (how large depends on scheduling).
    assert stream.batches_received < len(live) // 10
    await stream.close()

    # Nothing was acked: the replay is queued at once and goes out in full batches.
    stream = await client.connect(resume_after=0)
    replayed = [await receive(stream) for _ in range(len(live))]
    assert [m.SerializeToString() for m in replayed] == [m.SerializeToString() for m in live]
    await receive_state(stream)
    assert stream.batches_received == 4  # 3002 messages and a State, <= 1000 a batch
    await stream.close()


async def test_messages_made_while_disconnected_arrive_on_the_next_connect(
    client: RunnerClient,
) -> None:
    stream = await client.connect()
    await receive_state(stream)
    await stream.run("req_1", "", command("sleep 0.3; echo late"))
    await stream.close()

    await asyncio.sleep(0.8)
    stream = await client.connect(resume_after=0)
    messages = await durable_until_final(stream, "req_1")
    assert [kind(m) for m in messages] == ["started", "event", "complete"]
    assert texts(messages) == ["late"]


async def test_new_connect_replaces_the_older_stream(client: RunnerClient) -> None:
    first = await client.connect()
    await receive_state(first)
    second = await client.connect()
    await receive_state(second)
    with pytest.raises(RunnerDisconnected) as caught:
        await receive(first)
    assert caught.value.code == grpc.StatusCode.ABORTED

    await second.run("req_1", "", command("echo still here"))
    assert texts(await durable_until_final(second, "req_1")) == ["still here"]


async def test_runs_execute_one_at_a_time_in_order_and_duplicates_are_ignored(
    client: RunnerClient,
) -> None:
    stream = await client.connect()
    await stream.run("req_1", "", command("sleep 0.3; echo first"))
    await stream.run("req_1", "", command("echo duplicate"))
    await stream.run("req_2", "", command("echo second"))
    messages = await durable_until_final(stream, "req_2")
    assert [(m.request_id, kind(m)) for m in messages] == [
        ("req_1", "started"),
        ("req_1", "event"),
        ("req_1", "complete"),
        ("req_2", "started"),
        ("req_2", "event"),
        ("req_2", "complete"),
    ]
    assert texts(messages) == ["first", "second"]

    # Finished runs are remembered too (the platform may resend after a reconnect).
    await stream.run("req_1", "", command("echo again"))
    await stream.run("req_3", "", command("echo third"))
    messages = await durable_until_final(stream, "req_3")
    assert {m.request_id for m in messages} == {"req_3"}


async def test_interrupt_stops_the_run_and_its_whole_process_group(
    runner: RunnerProcess, client: RunnerClient
) -> None:
    pid_file = runner.directory / "run.pid"
    # The background sleep ignores SIGINT (as in any non-interactive shell) and outlives the
    # shell: the runner must still kill it.
    script = f"echo $$ > {pid_file}; echo ready; sleep 1000 & sleep 1000"
    stream = await client.connect()
    await stream.run("req_1", "", command(script))
    while kind(message := await receive(stream)) != "event":
        pass
    assert json.loads(message.event.entry_json)["text"] == "ready"
    pgid = await wait_for_pid(pid_file)

    await stream.interrupt("req_1", grace_seconds=0.5)
    messages = await durable_until_final(stream, "req_1")
    assert messages[-1].complete.outcome == "interrupted"
    assert_group_gone(pgid)


async def test_interrupt_of_a_queued_run_completes_it_without_starting(
    runner: RunnerProcess, client: RunnerClient
) -> None:
    pid_file = runner.directory / "run.pid"
    stream = await client.connect()
    await stream.run("req_1", "", command(f"echo $$ > {pid_file}; exec sleep 1000"))
    await stream.run("req_2", "", command("echo never"))
    pgid = await wait_for_pid(pid_file)

    await stream.interrupt("req_2")
    await stream.interrupt("req_unknown")
    await stream.interrupt("")  # the current run
    messages = await durable_until_final(stream, "req_1")
    assert [(m.request_id, kind(m)) for m in messages] == [
        ("req_1", "started"),
        ("req_2", "complete"),
        ("req_1", "complete"),
    ]
    assert messages[1].complete.outcome == "interrupted"
    assert messages[2].complete.outcome == "interrupted"
    assert_group_gone(pgid)


async def test_states_follow_the_run(client: RunnerClient) -> None:
    stream = await client.connect()
    assert (await receive_state(stream)).status == "idle"
    await stream.run("req_1", "", command("sleep 1000"))
    state = await receive_state(stream)
    assert (state.status, state.current_request_id) == ("running", "req_1")
    assert list(state.known_request_ids) == ["req_1"]
    assert kind(await receive(stream)) == "started"

    await stream.interrupt()
    state = await receive_state(stream)
    assert (state.status, state.current_request_id) == ("stopping", "req_1")
    assert (await receive(stream)).complete.outcome == "interrupted"
    state = await receive_state(stream)
    assert (state.status, state.current_request_id, state.last_runner_seq) == ("idle", "", 2)


async def test_timeout_completes_timed_out(runner: RunnerProcess, client: RunnerClient) -> None:
    pid_file = runner.directory / "run.pid"
    stream = await client.connect()
    run = runner_pb2.Run(
        request_id="req_1",
        executor=command(f"echo $$ > {pid_file}; exec sleep 1000"),
        # Long enough for the shell to write its pid on a loaded machine (the suite runs on
        # two workers), short enough to time out well before the sleep ends.
        timeout_seconds=5,
    )
    await stream.send(runner_pb2.PlatformMessage(run=run))
    messages = await durable_until_final(stream, "req_1")
    assert messages[-1].complete.outcome == "timed_out"
    assert "timed out" in messages[-1].complete.message
    assert_group_gone(await wait_for_pid(pid_file))


async def test_wrong_or_missing_token_is_unauthenticated(start_runner: StartRunner) -> None:
    runner = start_runner(token="s3cret")
    for token in ("wrong", ""):
        client = RunnerClient(runner.address, token)
        await client.wait_ready(5)
        stream = await client.connect()
        with pytest.raises(RunnerUnauthenticated) as caught:
            await receive(stream)
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        await client.close()

    client = runner.client()
    stream = await client.connect()
    assert (await receive_state(stream)).status == "idle"
    await client.close()


async def test_executor_sees_only_allowlisted_environment(start_runner: StartRunner) -> None:
    runner = start_runner(env={"FORGE_SECRET_TEST": "leak", "LC_TEST_FORGE": "ok"})
    client = runner.client()
    stream = await client.connect()
    run = runner_pb2.Run(request_id="req_1", executor=command("env"), env={"EXTRA_VAR": "x"})
    await stream.send(runner_pb2.PlatformMessage(run=run))
    lines = texts(await durable_until_final(stream, "req_1"))
    assert not [line for line in lines if "FORGE_SECRET_TEST" in line or "leak" in line]
    assert {f"FORGE_AGENT_ID={AGENT_ID}", "FORGE_REQUEST_ID=req_1", "EXTRA_VAR=x"} <= set(lines)
    assert "LC_TEST_FORGE=ok" in lines
    assert any(line.startswith("PATH=") for line in lines)
    await client.close()


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        (runner_pb2.ExecutorSpec(kind="no_such_agent"), "UNKNOWN_EXECUTOR"),
        (runner_pb2.ExecutorSpec(kind="command", command=""), "INVALID_EXECUTOR_SPEC"),
        (
            runner_pb2.ExecutorSpec(kind="command", command="true", settings_json="[1]"),
            "INVALID_EXECUTOR_SPEC",
        ),
    ],
)
async def test_a_run_that_cannot_be_carried_out_is_an_error(
    client: RunnerClient, spec: runner_pb2.ExecutorSpec, code: str
) -> None:
    stream = await client.connect()
    await stream.run("req_1", "", spec)
    messages = await durable_until_final(stream, "req_1")
    assert [kind(m) for m in messages] == ["error"]
    assert messages[0].error.code == code
    assert not messages[0].error.recoverable


async def test_executor_that_cannot_start_is_an_error(
    runner: RunnerProcess, client: RunnerClient
) -> None:
    runner.workspace.rmdir()
    stream = await client.connect()
    await stream.run("req_1", "", command("true"))
    messages = await durable_until_final(stream, "req_1")
    assert [kind(m) for m in messages] == ["started", "error"]
    assert messages[1].error.code == "EXECUTOR_START_FAILED"


async def test_output_pauses_while_too_much_is_unacked(start_runner: StartRunner) -> None:
    runner = start_runner("--max-unacked", "5")
    client = runner.client()
    stream = await client.connect()
    await receive_state(stream)
    await stream.run("req_1", "", command("seq 1 50"))
    received = [await receive(stream) for _ in range(6)]  # State(running) + 5 durable
    durable = [m for m in received if m.runner_seq]
    assert [m.runner_seq for m in durable] == [1, 2, 3, 4, 5]
    with pytest.raises(TimeoutError):
        await receive(stream, seconds=0.3)

    numbers: list[int] = []
    outcome = ""
    acked, last = 0, 5
    while not outcome:
        if last - acked == 5:
            await stream.ack(last)
            acked = last
        message = await receive(stream)
        if not message.runner_seq:
            continue  # a State
        assert message.runner_seq == last + 1
        assert message.runner_seq <= acked + 5 or kind(message) == "complete"
        last = message.runner_seq
        if kind(message) == "event":
            numbers.append(json.loads(message.event.raw_json))
        elif kind(message) == "complete":
            outcome = message.complete.outcome
    numbers = [json.loads(m.event.raw_json) for m in durable if kind(m) == "event"] + numbers
    assert numbers == list(range(1, 51))
    assert outcome == "succeeded"
    await client.close()


async def test_graceful_shutdown_stops_the_run_and_exits_zero(
    runner: RunnerProcess, client: RunnerClient
) -> None:
    pid_file = runner.directory / "run.pid"
    stream = await client.connect()
    await stream.run("req_1", "", command(f"echo $$ > {pid_file}; exec sleep 1000"))
    await stream.run("req_2", "", command("echo never"))
    pgid = await wait_for_pid(pid_file)

    await stream.shutdown(graceful=True)
    messages = await durable_until_final(stream, "req_1")
    finals = {m.request_id: m.complete.outcome for m in messages if kind(m) == "complete"}
    assert finals == {"req_1": "interrupted", "req_2": "interrupted"}
    await stream.ack(messages[-1].runner_seq)

    assert await asyncio.to_thread(runner.process.wait, 10) == 0
    assert_group_gone(pgid)


async def test_sigterm_is_a_graceful_shutdown(runner: RunnerProcess) -> None:
    runner.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(runner.process.wait, 10) == 0


async def test_immediate_shutdown_kills_the_run(
    runner: RunnerProcess, client: RunnerClient
) -> None:
    pid_file = runner.directory / "run.pid"
    stream = await client.connect()
    await stream.run("req_1", "", command(f"echo $$ > {pid_file}; exec sleep 1000"))
    pgid = await wait_for_pid(pid_file)
    await stream.shutdown(graceful=False)
    assert await asyncio.to_thread(runner.process.wait, 10) == 0
    assert_group_gone(pgid)
