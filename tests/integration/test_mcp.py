"""Forge's MCP server on a real `forge serve`, through the `mcp` SDK's own client: Streamable
HTTP at `/mcp` (and on `MCP_PORT`), stdio through `forge mcp`, and API keys."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextResourceContents

from tests.integration.conftest import ForgeServer, free_port
from tests.integration.test_auth import ADMIN_KEY, AUTH, bearer, make_key

pytestmark = pytest.mark.integration

TOOLS = {
    "create_task",
    "list_sessions",
    "get_session",
    "send_message",
    "interrupt",
    "get_transcript",
    "list_neurons",
    "talk_to_neuron",
}
ECHO_NEURON = """---
name: echo
description: Says back what it hears
forge_profile_name: default
---
You echo.
"""
# A run that goes on until it is interrupted.
SLOW = """
[profiles.slow]
executor = "command"
command = "sleep 60"
"""
# Each wait for a run of `cat` to show up.
WAIT_SECONDS = 30


def neurons_config(root: Path) -> str:
    """A `[neurons]` section with the one neuron `echo` (the default profile: `cat`)."""
    folder = root / "neurons"
    folder.mkdir()
    (folder / "echo.md").write_text(ECHO_NEURON)
    return f'\n[neurons]\ndirs = ["{folder}"]\nexamples = false\n'


def http_client(url: str, key: str | None = None, *, mode: str = "auto") -> Client:
    """The SDK's client for `url`, with `key`; `mode="legacy"` speaks the 2025 protocol (an
    `initialize` handshake), "auto" the newest both sides know."""
    headers = bearer(key) if key else {}
    return Client(
        streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=30)),
        read_timeout_seconds=30,
        mode=mode,
    )


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    data: dict[str, Any] = result.structured_content
    return data


async def read_json(client: Client, uri: str) -> Any:
    result = await client.read_resource(uri)
    (content,) = result.contents
    assert isinstance(content, TextResourceContents)
    assert content.mime_type == "application/json"
    return json.loads(content.text)


async def eventually(check: Callable[[], Any], what: str) -> Any:
    """Await `check()` until it answers something true; fail after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await anyio.sleep(0.1)
    raise AssertionError(f"{what}: not within {WAIT_SECONDS} s")


def says(transcript: dict[str, Any], text: str) -> bool:
    """Whether the agent (not the user's message) said `text` somewhere in the transcript."""
    return any(
        line["kind"] != "user_message" and text in json.dumps(line["entry"])
        for line in transcript["entries"]
    )


async def wait_idle(client: Client, session_id: str, runs: int) -> None:
    """Until the session has `runs` runs and none left to do."""

    async def idle() -> bool:
        session = structured(await client.call_tool("get_session", {"session_id": session_id}))
        assert session["status"] not in ("failed", "stopped"), session
        return bool(session["status"] == "idle" and session["runs"] == runs)

    await eventually(idle, f"{runs} run(s) of {session_id} ended")


async def exercise(client: Client, owner: dict[str, str], marker: str) -> str:
    """The checks every transport passes: the tools; a task echoed by `cat`, a second message,
    both read back as a tool's answer and as a resource; the session listed; the `echo`
    neuron's reply in its state document. `owner` is the owner argument (empty when the key or
    `forge mcp` decides). Answers the session's id."""
    tools = await client.list_tools()
    assert {tool.name for tool in tools.tools} == TOOLS
    for tool in tools.tools:
        assert tool.description, tool.name

    prompt = f"hello from {marker}"
    task = structured(await client.call_tool("create_task", {"prompt": prompt, **owner}))
    session_id = task["session_id"]

    await wait_idle(client, session_id, runs=1)
    transcript = structured(await client.call_tool("get_transcript", {"session_id": session_id}))
    assert transcript["session_id"] == session_id
    assert says(transcript, prompt), transcript
    again = f"and again from {marker}"
    sent = structured(
        await client.call_tool("send_message", {"session_id": session_id, "content": again})
    )
    assert sent["agent_id"] == session_id and sent["status"] in ("processing", "queued")
    await wait_idle(client, session_id, runs=2)
    transcript = structured(await client.call_tool("get_transcript", {"session_id": session_id}))
    assert says(transcript, again), transcript
    resource = await read_json(client, f"session://{session_id}/transcript")
    assert resource["session_id"] == session_id and says(resource, prompt)
    markdown = await client.call_tool(
        "get_transcript", {"session_id": session_id, "format": "markdown"}
    )
    assert not markdown.is_error and prompt in json.dumps(markdown.model_dump())

    page = structured(await client.call_tool("list_sessions", owner))
    assert session_id in [s["id"] for s in page["sessions"]]

    neurons = structured(await client.call_tool("list_neurons", owner))
    assert [n["name"] for n in neurons["neurons"]] == ["echo"]
    said = f"ping {marker}"
    accepted = structured(
        await client.call_tool("talk_to_neuron", {"name": "echo", "content": said, **owner})
    )
    assert accepted["neuron"] == "echo" and accepted["request_id"]
    query = f"?owner_id={owner['owner_id']}" if owner else ""

    async def replied() -> bool:
        state = await read_json(client, f"neuron://echo/stream{query}")
        return any(
            m["role"] == "assistant" and said in m["text"] for m in state.get("messages", [])
        )

    await eventually(replied, "the neuron's reply in its state document")
    return str(session_id)


async def interrupt_a_slow_run(client: Client, owner: dict[str, str]) -> None:
    task = structured(
        await client.call_tool("create_task", {"prompt": "wait", "profile": "slow", **owner})
    )
    session_id = task["session_id"]

    async def running() -> bool:
        session = structured(await client.call_tool("get_session", {"session_id": session_id}))
        return bool(session["status"] == "running")

    await eventually(running, "the slow run started")
    answer = structured(await client.call_tool("interrupt", {"session_id": session_id}))
    assert answer == {
        "status": "interrupting",
        "agent_id": session_id,
        "request_id": task["request_id"],
    }
    await wait_idle(client, session_id, runs=1)
    transcript = structured(await client.call_tool("get_transcript", {"session_id": session_id}))
    ends = [line["entry"] for line in transcript["entries"] if line["kind"] == "run_end"]
    assert [end["outcome"] for end in ends] == ["interrupted"]


async def test_streamable_http_on_the_server_and_on_mcp_port(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    mcp_port = free_port()
    server = forge_server(neurons_config(tmp_path) + SLOW, env={"MCP_PORT": str(mcp_port)})
    alice = {"owner_id": "alice"}
    with anyio.fail_after(120):
        async with http_client(f"{server.base_url}/mcp") as client:
            session_id = await exercise(client, alice, "the mounted server")
            # Forge's errors are tool errors with Forge's code and message.
            missing = await client.call_tool("get_session", {"session_id": "ag_nope"})
            assert missing.is_error
            assert missing.structured_content["error"] == "not_found"
            assert "ag_nope" in missing.structured_content["message"]
            unknown = await client.call_tool(
                "talk_to_neuron", {"name": "nobody", "content": "hi", **alice}
            )
            assert unknown.is_error and unknown.structured_content["error"] == "neuron_not_found"
            nothing = await client.call_tool("interrupt", {"session_id": session_id})
            assert nothing.is_error
            assert nothing.structured_content["error"] == "nothing_to_interrupt"
            await interrupt_a_slow_run(client, alice)
        async with http_client(f"http://127.0.0.1:{mcp_port}/mcp", mode="legacy") as client:
            assert client.protocol_version < "2026"
            page = structured(await client.call_tool("list_sessions", alice))
            assert session_id in [s["id"] for s in page["sessions"]]
            resource = await read_json(client, f"session://{session_id}/transcript")
            assert says(resource, "hello from the mounted server")


async def test_stdio_through_forge_mcp(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    server = forge_server(neurons_config(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env["FORGE_OWNER"] = "carol"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "forge", "mcp", "--base-url", server.base_url],
        env=env,
    )
    with anyio.fail_after(120):
        async with Client(params, read_timeout_seconds=30) as client:
            # The owner comes from FORGE_OWNER when a call names none.
            session_id = await exercise(client, {}, "stdio")
            session = structured(await client.call_tool("get_session", {"session_id": session_id}))
            assert session["owner_id"] == "carol"
            missing = await client.call_tool("get_transcript", {"session_id": "ag_nope"})
            assert missing.is_error and missing.structured_content["error"] == "not_found"


async def test_api_keys(forge_server: Callable[..., ForgeServer], tmp_path: Path) -> None:
    mcp_port = free_port()
    server = forge_server(
        AUTH + neurons_config(tmp_path),
        env={"FORGE_AUTH_ENABLED": "true", "FORGE_API_KEY": ADMIN_KEY, "MCP_PORT": str(mcp_port)},
    )
    endpoints = [f"{server.base_url}/mcp", f"http://127.0.0.1:{mcp_port}/mcp"]
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"},
        },
    }
    headers = {"accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(timeout=10) as raw:
        for url in endpoints:
            refused = await raw.post(url, json=initialize, headers=headers)
            assert refused.status_code == 401, url
            assert refused.json()["error"] == "missing_api_key"
            assert refused.headers["www-authenticate"].startswith("Bearer")
            wrong = await raw.post(url, json=initialize, headers={**headers, **bearer("fk_x_y")})
            assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_api_key"

    alice = make_key(server, "alice")["key"]
    bob = make_key(server, "bob")["key"]
    with anyio.fail_after(90):
        async with http_client(endpoints[0], alice) as client:
            session_id = await exercise(client, {}, "alice's key")
            task = structured(await client.call_tool("create_task", {"prompt": "mine"}))
            assert task["owner_id"] == "alice"
            # An owner's key acts for that owner only.
            other = await client.call_tool("list_sessions", {"owner_id": "bob"})
            assert other.is_error and other.structured_content["error"] == "owner_mismatch"
        async with http_client(endpoints[1], bob, mode="legacy") as client:
            page = structured(await client.call_tool("list_sessions", {}))
            assert page["sessions"] == [] and page["total"] == 0
            hidden = await client.call_tool("get_session", {"session_id": session_id})
            assert hidden.is_error and hidden.structured_content["error"] == "not_found"
            with pytest.raises(MCPError) as raised:
                await client.read_resource(f"session://{session_id}/transcript")
            assert raised.value.data["error"] == "not_found"
            neurons = structured(await client.call_tool("list_neurons", {}))
            assert [n["agent_id"] for n in neurons["neurons"]] == [None]  # alice's is hers
        # `forge mcp` acts with the key in FORGE_API_KEY.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
        env["FORGE_API_KEY"] = bob
        stdio = StdioServerParameters(
            command=sys.executable,
            args=["-m", "forge", "mcp", "--base-url", server.base_url],
            env=env,
        )
        async with Client(stdio, read_timeout_seconds=30) as client:
            page = structured(await client.call_tool("list_sessions", {}))
            assert page["total"] == 0
            hidden = await client.call_tool("get_transcript", {"session_id": session_id})
            assert hidden.is_error and hidden.structured_content["error"] == "not_found"
        async with http_client(endpoints[0], ADMIN_KEY) as client:
            page = structured(await client.call_tool("list_sessions", {}))
            assert session_id in [s["id"] for s in page["sessions"]]
            # The admin names the owner of what it makes.
            unowned = await client.call_tool("create_task", {"prompt": "whose?"})
            assert unowned.is_error and unowned.structured_content["error"] == "invalid_request"
