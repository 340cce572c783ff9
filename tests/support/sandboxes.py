"""Driving a sandbox's runner directly, as the platform does, for runtime tests."""

from __future__ import annotations

import asyncio
import json

import pytest

from forge.runner import RunnerClient
from forge.runner.client import RunnerUnauthenticated
from forge.runner.proto import runner_pb2
from forge.sandbox.base import Sandbox


async def run_command(sandbox: Sandbox, command: str, prompt: str = "") -> tuple[str, str]:
    """Run `command` (a `command` executor) through the sandbox's runner; (the text of its
    output entries, one a line; the run's outcome)."""
    client = RunnerClient(sandbox.address, sandbox.token)
    try:
        await client.wait_ready(20)
        stream = await client.connect()
        spec = runner_pb2.ExecutorSpec(kind="command", command=command)
        await stream.run("req_1", prompt, spec)
        lines = []
        async with asyncio.timeout(30):
            async for message in stream:
                kind = message.WhichOneof("kind")
                if kind == "event":
                    entry = json.loads(message.event.entry_json or "{}")
                    lines.append(str(entry.get("text", "")))
                if kind in ("complete", "error"):
                    await stream.ack(message.runner_seq)
                    outcome = message.complete.outcome if kind == "complete" else "error"
                    await stream.close()
                    return "\n".join(lines), outcome
        raise AssertionError("the run did not end")
    finally:
        await client.close()


async def assert_refuses_a_wrong_token(sandbox: Sandbox) -> None:
    """The sandbox's runner refuses a connection that brings no token or a wrong one."""
    for token in ("", "not-the-token", sandbox.token[:-1]):
        intruder = RunnerClient(sandbox.address, token)
        try:
            stream = await intruder.connect()
            with pytest.raises(RunnerUnauthenticated):
                async with asyncio.timeout(10):
                    async for _message in stream:
                        pass
        finally:
            await intruder.close()
