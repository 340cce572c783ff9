"""Forge's MCP server on a real `forge serve`, through the `mcp` SDK's own client: Streamable
HTTP at `/mcp` (and on `MCP_PORT`), stdio through `forge mcp`, and API keys."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextResourceContents

from tests.integration.conftest import ForgeServer, free_port, make_repository
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
# What an MCP client sends to /mcp.
MCP_HEADERS = {"accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}


def neurons_config(root: Path) -> str:
    """A `[neurons]` section with the one neuron `echo` (the default profile: `cat`)."""
    folder = root / "neurons"
    folder.mkdir()
    (folder / "echo.md").write_text(ECHO_NEURON)
    return f'\n[neurons]\ndirs = ["{folder}"]\nexamples = false\n'


@asynccontextmanager
async def http_client(
    url: str, key: str | None = None, *, mode: str = "auto"
) -> AsyncIterator[Client]:
    """The SDK's client for `url`, with `key`; `mode="legacy"` speaks the 2025 protocol (an
    `initialize` handshake), "auto" the newest both sides know."""
    headers = bearer(key) if key else {}
    # The SDK's transport leaves a client it is given open: this one is closed here.
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(
            streamable_http_client(url, http_client=http), read_timeout_seconds=30, mode=mode
        ) as client,
    ):
        yield client


def forge_mcp(base_url: str, env: dict[str, str]) -> StdioServerParameters:
    """`forge mcp --base-url base_url` with `env` (and no other FORGE_ variable)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "forge", "mcp", "--base-url", base_url],
        env={**clean, **env},
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


async def a_neuron_in_a_project(client: Client, owner: dict[str, str], root: Path) -> None:
    """`talk_to_neuron` with a project (a real repository), and its reply read back through the
    resource with `?project=`: an absolute path, which the SDK refuses in a parameter unless
    the resource allows it."""
    repo = make_repository(root / "project")
    said = "ping from a project"
    accepted = structured(
        await client.call_tool(
            "talk_to_neuron", {"name": "echo", "content": said, "project": str(repo), **owner}
        )
    )
    assert accepted["neuron"] == "echo" and accepted["request_id"]
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in {**owner, "project": str(repo)}.items())

    async def replied() -> bool:
        state = await read_json(client, f"neuron://echo/stream?{query}")
        return any(
            m["role"] == "assistant" and said in m["text"] for m in state.get("messages", [])
        )

    await eventually(replied, "the reply of the project's neuron in its state document")


async def only_mcp_posts(url: str) -> None:
    """`url` takes POST only (no SSE stream to hang on a GET) and bodies up to Forge's limit,
    answering in Forge's JSON otherwise."""
    with anyio.fail_after(30):
        async with httpx.AsyncClient(timeout=10) as raw:
            for method in ("GET", "DELETE"):
                refused = await raw.request(method, url, headers={"accept": "text/event-stream"})
                assert refused.status_code == 405, (method, url)
                assert refused.headers["allow"] == "POST"
                assert refused.json()["error"] == "method_not_allowed"
            large = await raw.post(
                url,
                content=b" " * (3 * 1024 * 1024),
                headers={**MCP_HEADERS, "content-type": "application/json"},
            )
            assert large.status_code == 413, url
            assert large.json()["error"] == "body_too_large"


async def test_streamable_http_on_the_server_and_on_mcp_port(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    mcp_port = free_port()
    server = forge_server(neurons_config(tmp_path) + SLOW, env={"MCP_PORT": str(mcp_port)})
    endpoints = [f"{server.base_url}/mcp", f"http://127.0.0.1:{mcp_port}/mcp"]
    alice = {"owner_id": "alice"}
    for url in endpoints:
        await only_mcp_posts(url)
    with anyio.fail_after(120):
        async with http_client(endpoints[0]) as client:
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
            await a_neuron_in_a_project(client, alice, tmp_path)
        async with http_client(endpoints[1], mode="legacy") as client:
            assert client.protocol_version < "2026"
            page = structured(await client.call_tool("list_sessions", alice))
            assert session_id in [s["id"] for s in page["sessions"]]
            resource = await read_json(client, f"session://{session_id}/transcript")
            assert says(resource, "hello from the mounted server")


async def test_stdio_through_forge_mcp(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    server = forge_server(neurons_config(tmp_path))
    with anyio.fail_after(120):
        async with Client(
            forge_mcp(server.base_url, {"FORGE_OWNER": "carol"}), read_timeout_seconds=30
        ) as client:
            # The owner comes from FORGE_OWNER when a call names none.
            session_id = await exercise(client, {}, "stdio")
            session = structured(await client.call_tool("get_session", {"session_id": session_id}))
            assert session["owner_id"] == "carol"
            missing = await client.call_tool("get_transcript", {"session_id": "ag_nope"})
            assert missing.is_error and missing.structured_content["error"] == "not_found"


@contextmanager
def not_forge_server() -> Iterator[str]:
    """A web server on 127.0.0.1 that answers every request `200 OK` in plain text; its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello, this is not Forge\n"
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def said_clearly(base_url: str, code: str, errlog: TextIO) -> None:
    """`forge mcp --base-url base_url` answers its tools' calls with the error `code`."""
    transport = stdio_client(forge_mcp(base_url, {"FORGE_OWNER": "carol"}), errlog=errlog)
    async with Client(transport, read_timeout_seconds=30) as client:
        for tool, arguments in (
            ("list_sessions", {}),
            ("create_task", {"prompt": "anyone there?"}),
        ):
            answer = await client.call_tool(tool, arguments)
            assert answer.is_error, (base_url, tool, answer.content)
            assert answer.structured_content["error"] == code, answer.structured_content
            assert base_url in answer.structured_content["message"]


async def test_forge_mcp_without_a_forge_server(tmp_path: Path) -> None:
    """A wrong --base-url, or a server that is down, is a tool error with Forge's body, and a
    line in `forge mcp`'s log (stderr: stdout carries the protocol)."""
    stderr = tmp_path / "forge-mcp.log"
    nobody = f"http://127.0.0.1:{free_port()}"
    with anyio.fail_after(60), not_forge_server() as not_forge:
        async with await anyio.open_file(stderr, "w") as errlog:
            for base_url, code in ((not_forge, "bad_response"), (nobody, "unavailable")):
                await said_clearly(base_url, code, errlog.wrapped)
    log = stderr.read_text()
    assert "bad_response:" in log and "unavailable:" in log, log
    assert "Traceback" not in log, log


async def test_api_keys(forge_server: Callable[..., ForgeServer], tmp_path: Path) -> None:
    mcp_port = free_port()
    server = forge_server(
        AUTH + neurons_config(tmp_path),
        env={"FORGE_AUTH_ENABLED": "true", "FORGE_API_KEY": ADMIN_KEY, "MCP_PORT": str(mcp_port)},
    )
    endpoints = [f"{server.base_url}/mcp", f"http://127.0.0.1:{mcp_port}/mcp"]
    async with httpx.AsyncClient(timeout=10) as raw:
        for url in endpoints:
            refused = await raw.post(url, json=INITIALIZE, headers=MCP_HEADERS)
            assert refused.status_code == 401, url
            assert refused.json()["error"] == "missing_api_key"
            assert refused.headers["www-authenticate"].startswith("Bearer")
            wrong = await raw.post(
                url, json=INITIALIZE, headers={**MCP_HEADERS, **bearer("fk_x_y")}
            )
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
            # Naming another owner is refused, as in the REST API.
            for tool, arguments in (
                ("create_task", {"prompt": "for alice"}),
                ("talk_to_neuron", {"name": "echo", "content": "hi"}),
                ("list_neurons", {}),
            ):
                mine = await client.call_tool(tool, {**arguments, "owner_id": "alice"})
                assert mine.is_error, tool
                assert mine.structured_content["error"] == "owner_mismatch", tool
            with pytest.raises(MCPError) as raised:
                await client.read_resource("neuron://echo/stream?owner_id=alice")
            assert raised.value.data["error"] == "owner_mismatch"
        # `forge mcp` acts with the key in FORGE_API_KEY.
        async with Client(
            forge_mcp(server.base_url, {"FORGE_API_KEY": bob}), read_timeout_seconds=30
        ) as client:
            page = structured(await client.call_tool("list_sessions", {}))
            assert page["total"] == 0
            hidden = await client.call_tool("get_transcript", {"session_id": session_id})
            assert hidden.is_error and hidden.structured_content["error"] == "not_found"
            mine = await client.call_tool("create_task", {"prompt": "hi", "owner_id": "alice"})
            assert mine.is_error and mine.structured_content["error"] == "owner_mismatch"
        async with http_client(endpoints[0], ADMIN_KEY) as client:
            page = structured(await client.call_tool("list_sessions", {}))
            assert session_id in [s["id"] for s in page["sessions"]]
            # The admin names the owner of what it makes.
            unowned = await client.call_tool("create_task", {"prompt": "whose?"})
            assert unowned.is_error and unowned.structured_content["error"] == "invalid_request"


async def test_both_ports_spend_one_allowance(forge_server: Callable[..., ForgeServer]) -> None:
    """A key's requests, and an address's wrong keys, count once whichever port they reach."""
    mcp_port = free_port()
    limits = (
        "\n[auth]\nenabled = true\nrate_limit_per_minute = 1\nrate_limit_burst = 6\n"
        "failed_auth_per_minute = 1\nfailed_auth_burst = 4\n"
    )
    server = forge_server(limits, env={"FORGE_API_KEY": ADMIN_KEY, "MCP_PORT": str(mcp_port)})
    endpoints = [f"{server.base_url}/mcp", f"http://127.0.0.1:{mcp_port}/mcp"]
    alice = bearer(make_key(server, "alice")["key"])
    async with httpx.AsyncClient(timeout=10) as raw:
        answers = [
            await raw.post(endpoints[n % 2], json=INITIALIZE, headers={**MCP_HEADERS, **alice})
            for n in range(8)
        ]
        assert [a.status_code for a in answers] == [200] * 6 + [429] * 2
        assert all(a.json()["error"] == "rate_limited" for a in answers[6:])
        # Alice's REST requests spend the same allowance.
        rest = await raw.get(f"{server.base_url}/api/v1/sessions", headers=alice)
        assert rest.status_code == 429

        wrong = {**MCP_HEADERS, **bearer("fk_" + "1" * 26 + "_" + "2" * 64)}
        answers = [
            await raw.post(endpoints[n % 2], json=INITIALIZE, headers=wrong) for n in range(6)
        ]
        assert [a.status_code for a in answers] == [401] * 4 + [429] * 2
        assert all("failed authentications" in a.json()["message"] for a in answers[4:])


def serve(root: Path, server: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`forge serve` with `server` in its `[server]` section and `env` (no other FORGE_ or
    MCP_PORT variable), expected to stop at once."""
    root.mkdir()
    config = root / "forge.toml"
    config.write_text(f'data_dir = "{root / "data"}"\n\n[server]\nhost = "127.0.0.1"\n{server}\n')
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FORGE_", "MCP_PORT"))}
    return subprocess.run(
        [sys.executable, "-m", "forge", "serve", "--config", str(config)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_forge_serve_refuses_an_mcp_port_it_cannot_use(tmp_path: Path) -> None:
    port = free_port()
    # The API's own port, in the file or in MCP_PORT (which wins over the file).
    for n, (server, env) in enumerate(
        (
            (f"port = {port}\nmcp_port = {port}", {}),
            (f"port = {port}\nmcp_port = {free_port()}", {"MCP_PORT": str(port)}),
        )
    ):
        refused = serve(tmp_path / f"same{n}", server, env)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert f"the MCP port ([server] mcp_port or MCP_PORT) is {port}" in refused.stderr

    refused = serve(tmp_path / "nan", f"port = {port}", {"MCP_PORT": "eighty"})
    assert refused.returncode == 2, refused.stderr
    assert "MCP_PORT='eighty' is not a port number (1-65535)" in refused.stderr

    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        refused = serve(tmp_path / "taken", f"port = {port}", {"MCP_PORT": str(busy)})
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if f"127.0.0.1:{busy}" in line]
    assert len(errors) == 1 and "cannot listen for MCP" in errors[0], output
    # Refused before the database was touched.
    assert not (tmp_path / "taken" / "data" / "forge.db").exists()
