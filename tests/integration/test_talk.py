"""`forge talk NEURON` against a real server: a neuron whose reply comes in parts, driven through
a pseudo-terminal; one message with `-m`; lines from a pipe; an unknown neuron; a server restart
and a neuron that gets a new agent in the middle of a conversation."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer, wait_for

pytestmark = pytest.mark.integration

OWNER = "alice"
# Part 1 at once; parts 2 and 3 once a file `go` exists in the workspace (which it then removes,
# so the next message waits again).
THINKING = {"kind": "thinking", "text": "Pondering the message"}
TOOL = {"kind": "tool_call", "tool": "bash", "action": "command_run", "detail": "ls -la"}
TODOS = {
    "kind": "todo",
    "items": [
        {"content": "say part 1", "status": "completed"},
        {"content": "wait for go", "status": "in_progress"},
    ],
}
SLOW = (
    f"read -r msg; echo '{json.dumps({'entry': THINKING})}'; "
    f"echo '{json.dumps({'entry': {**TOOL, 'status': 'running'}})}'; "
    f"echo '{json.dumps({'entry': TODOS})}'; "
    'echo "part 1: $msg"; '
    "while [ ! -e go ]; do sleep 0.05; done; rm -f go; echo 'part 2'; echo 'part 3'"
)
ECHO = 'read -r msg; echo "echo: $msg"'
BROKEN = "echo 'about to fail'; exit 3"


def _neuron(folder: Path, name: str, description: str) -> None:
    (folder / f"{name}.md").write_text(
        f"---\nname: {name}\ndescription: {description}\nforge_profile_name: {name}\n---\n"
        f"Reply as {name}.\n"
    )


def _server(
    forge_server: Any, tmp_path: Path, auth: str = "", env: dict[str, str] | None = None
) -> ForgeServer:
    folder = tmp_path / "neurons"
    folder.mkdir()
    _neuron(folder, "slow", "Replies in parts")
    _neuron(folder, "echo", "Says it back")
    _neuron(folder, "broken", "Always fails")
    profiles = "".join(
        f'\n[profiles.{name}]\nexecutor = "command"\ncommand = {json.dumps(command)}\n'
        for name, command in (("slow", SLOW), ("echo", ECHO), ("broken", BROKEN))
    )
    server: ForgeServer = forge_server(
        extra_config=f"\n[neurons]\ndirs = [{json.dumps(str(folder))}]\nexamples = false\n"
        + profiles
        + auth,
        env=env,
    )
    return server


def _env(
    server: ForgeServer | None, base_url: str | None = None, debug: bool = False
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env["FORGE_BASE_URL"] = base_url or (server.base_url if server else "")
    env["FORGE_OWNER"] = OWNER
    env["TERM"] = "dumb"
    if debug:  # how each stream began ("snapshot at version N", "resumed at version N")
        env["FORGE_TALK_DEBUG"] = "1"
    return env


def _talk(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forge", "talk", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )


class Terminal:
    """`forge talk` on a pseudo-terminal: what it printed so far, and typing into it."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forge", "talk", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
        )
        os.close(slave)
        self.output = ""
        self.cursor = 0  # where the next `expect` starts looking

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def read(self, seconds: float) -> None:
        """Collect output for `seconds` (or until the terminal closes)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                return
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the other side is closed
                return
            if not data:
                return
            self.output += data.decode(errors="replace")

    def expect(self, text: str, timeout: float = 60) -> None:
        """Read until `text` appears after the previous match; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while text not in self.output[self.cursor :]:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.read(0.2)
                if text in self.output[self.cursor :]:
                    break
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{self.output}")
            self.read(min(left, 0.5))
        self.cursor = self.output.index(text, self.cursor) + len(text)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.master)


def _workspace(server: ForgeServer, neuron: str) -> Path:
    agent_id = server.http.get(f"/api/v1/neurons/{neuron}", params={"user_id": OWNER}).json()[
        "agent_id"
    ]
    assert agent_id, "the neuron has no agent"
    return Path(server.http.get(f"/api/v1/agents/{agent_id}").json()["workspace_path"])


def test_a_reply_streams_into_the_terminal(forge_server: Any, tmp_path: Path) -> None:
    server = _server(forge_server, tmp_path)
    terminal = Terminal(["slow"], _env(server))
    try:
        terminal.expect("Replies in parts", timeout=30)
        terminal.expect("you> ", timeout=30)
        terminal.type("hello there\n")
        # The neuron's thoughts show as they come: thinking, the tool it runs, its todos.
        terminal.expect("Pondering the message", timeout=60)
        terminal.expect("→ bash: ls -la (running)", timeout=30)
        terminal.expect("[>] wait for go", timeout=30)
        terminal.expect("part 1: hello there", timeout=30)
        terminal.read(0.5)
        assert "part 2" not in terminal.output and "part 3" not in terminal.output
        workspace = _workspace(server, "slow")
        (workspace / "go").touch()
        terminal.expect("part 2", timeout=30)
        terminal.expect("part 3", timeout=30)
        terminal.expect("succeeded", timeout=30)
        terminal.expect("you> ", timeout=30)

        # The next message, interrupted with Ctrl-C: the run ends and the prompt comes back.
        terminal.type("again\n")
        terminal.expect("part 1: again", timeout=30)
        assert terminal.proc.poll() is None
        terminal.proc.send_signal(signal.SIGINT)
        terminal.expect("interrupting", timeout=10)
        terminal.expect("interrupted", timeout=30)
        terminal.expect("you> ", timeout=30)
        assert "part 2" not in terminal.output[terminal.output.index("part 1: again") :]

        terminal.type("exit\n")
        assert terminal.proc.wait(timeout=20) == 0
    finally:
        terminal.close()


def test_the_conversation_goes_on_across_a_server_restart(
    forge_server: Any, tmp_path: Path
) -> None:
    server = _server(forge_server, tmp_path)
    terminal = Terminal(["slow"], _env(server, debug=True))
    try:
        terminal.expect("forge talk: snapshot at version", timeout=30)
        terminal.expect("you> ", timeout=30)
        terminal.type("before the restart\n")
        terminal.expect("part 1: before the restart", timeout=60)
        workspace = _workspace(server, "slow")
        logged = len(server.log())
        server.stop()  # the runner, and the run in it, go on
        server.start()
        (workspace / "go").touch()
        terminal.expect("forge talk: resumed at version", timeout=60)
        terminal.expect("part 3", timeout=60)
        terminal.expect("you> ", timeout=30)
        # Resumed where it was with operations, not a snapshot (which the renderer would also
        # show without repeats): nothing is shown twice, and nothing was started again.
        assert terminal.output.count("part 1: before the restart") == 1
        assert terminal.output.count("part 2") == 1
        assert terminal.output.count("forge talk: snapshot") == 1, terminal.output
        reopened = [
            line
            for line in server.log()[logged:].splitlines()
            if "WebSocket /ws/neurons/slow" in line
        ]
        assert reopened, server.log()[logged:]
        assert all(
            "version=" in line and "agent_id=" in line and "fold=" in line for line in reopened
        ), reopened
        terminal.type("exit\n")
        assert terminal.proc.wait(timeout=20) == 0
    finally:
        terminal.close()


def test_the_conversation_goes_on_with_a_new_agent(forge_server: Any, tmp_path: Path) -> None:
    """The neuron's agent is deleted between two messages: the second one makes it a new agent,
    and the conversation follows that one's document (rather than waiting on the old one's)."""
    server = _server(forge_server, tmp_path)
    terminal = Terminal(["echo"], _env(server, debug=True))
    try:
        terminal.expect("you> ", timeout=30)
        terminal.type("first\n")
        terminal.expect("echo: first", timeout=60)
        terminal.expect("succeeded", timeout=30)
        terminal.expect("you> ", timeout=30)
        neuron = server.http.get("/api/v1/neurons/echo", params={"user_id": OWNER}).json()
        old = neuron["agent_id"]
        deleted = server.http.delete(f"/api/v1/agents/{old}", params={"user_id": OWNER})
        assert deleted.status_code == 204, deleted.text

        # At once: the stream of the deleted agent is still open (the server closes it within
        # its recheck time), so the CLI must move to the new agent's document itself.
        opened_before = len(_neuron_sockets(server, "echo"))
        terminal.type("second\n")
        terminal.expect("echo: second", timeout=60)
        terminal.expect("succeeded", timeout=30)
        terminal.expect("you> ", timeout=30)
        new = server.http.get("/api/v1/neurons/echo", params={"user_id": OWNER}).json()
        assert new["agent_id"] not in (None, old), new
        assert f"the neuron has a new agent {new['agent_id']}" in terminal.output, terminal.output
        # Its next connection asked for a snapshot, not a resume of the old agent's document
        # (which is what reconnecting after the server closed the old stream would send).
        after = _neuron_sockets(server, "echo")[opened_before:]
        assert after and "version=" not in after[0], after
        assert terminal.output.count("echo: first") == 1
        assert terminal.output.count("echo: second") == 1

        terminal.type("exit\n")
        assert terminal.proc.wait(timeout=20) == 0
    finally:
        terminal.close()


def _neuron_sockets(server: ForgeServer, name: str) -> list[str]:
    """The server's log lines of the WebSocket connections to the neuron's stream, in order."""
    return [ln for ln in server.log().splitlines() if f"WebSocket /ws/neurons/{name}" in ln]


def test_end_of_input_leaves(forge_server: Any, tmp_path: Path) -> None:
    server = _server(forge_server, tmp_path)
    terminal = Terminal(["echo"], _env(server))
    try:
        terminal.expect("you> ", timeout=30)
        terminal.type("ping\n")
        terminal.expect("echo: ping", timeout=60)
        terminal.expect("you> ", timeout=30)
        terminal.type("\x04")  # Ctrl-D
        assert terminal.proc.wait(timeout=20) == 0
    finally:
        terminal.close()


def test_one_message_and_lines_from_a_pipe(forge_server: Any, tmp_path: Path) -> None:
    server = _server(forge_server, tmp_path)
    env = _env(server)

    once = _talk("echo", "-m", "hi there", env=env)
    assert once.returncode == 0, once.stdout + once.stderr
    assert "echo: hi there" in once.stdout and "succeeded" in once.stdout
    assert "you>" not in once.stdout and "\x1b[" not in once.stdout  # no prompt, no colours

    piped = _talk("echo", env=env, stdin="one\n\ntwo\nexit\nthree\n")
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert piped.stdout.index("echo: one") < piped.stdout.index("echo: two")
    assert "echo: three" not in piped.stdout and piped.stdout.count("succeeded") == 2
    # The conversation is the neuron's: both clients' messages are in its state document.
    state = server.http.get("/api/v1/neurons/echo", params={"user_id": OWNER}).json()["state"]
    said = [m["text"] for m in state["messages"] if m["role"] == "user"]
    assert said == ["hi there", "one", "two"]

    failed = _talk("broken", "-m", "go", env=env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "about to fail" in failed.stdout and "failed" in failed.stdout


def test_unknown_neuron_and_unreachable_server(forge_server: Any, tmp_path: Path) -> None:
    server = _server(forge_server, tmp_path)
    unknown = _talk("nosuch", "-m", "hi", env=_env(server))
    assert unknown.returncode == 1
    assert "unknown neuron 'nosuch'" in unknown.stderr
    assert all(name in unknown.stderr for name in ("slow", "echo", "broken"))
    assert "Traceback" not in unknown.stderr

    down = _talk("slow", "-m", "hi", env=_env(None, "http://127.0.0.1:9"))
    assert down.returncode == 1 and "cannot reach Forge" in down.stderr
    assert "Traceback" not in down.stderr


def test_the_local_document_is_the_servers(forge_server: Any, tmp_path: Path) -> None:
    """The operations applied here give the server's own document, also after starting again
    from a snapshot (what a gap or an operation that does not apply leads to)."""
    from forge.cli_talk import Conversation, exchange

    server = _server(forge_server, tmp_path)
    out = io.StringIO()
    conversation = Conversation(server.base_url, "echo", None, OWNER, out)
    try:
        conversation.start()
        assert exchange(conversation, "first")
        before = conversation.socket.generation
        conversation.socket.resync()
        assert conversation.socket.generation == before + 1
        assert exchange(conversation, "second")

        def caught_up() -> bool:
            neuron = server.http.get("/api/v1/neurons/echo", params={"user_id": OWNER}).json()
            conversation.pump(0.1, run=None)
            return bool(conversation.version == neuron["version"])

        wait_for(caught_up, timeout=20)
        state = server.http.get("/api/v1/neurons/echo", params={"user_id": OWNER}).json()["state"]
        assert conversation.doc == state
        # Two connections, the second without a version: a snapshot.
        opened = [ln for ln in server.log().splitlines() if "WebSocket /ws/neurons/echo" in ln]
        assert len(opened) == 2 and "version=" not in opened[1], opened
        assert out.getvalue().count("echo: first") == 1
        assert out.getvalue().count("echo: second") == 1
    finally:
        conversation.close()


def test_with_an_owners_key(forge_server: Any, tmp_path: Path) -> None:
    admin = "forge-admin-" + "k" * 32
    auth = "\n[auth]\nenabled = true\n"
    server = _server(forge_server, tmp_path, auth, env={"FORGE_API_KEY": admin})
    reply = server.http.post(
        "/api/v1/keys",
        json={"owner_id": "dora", "name": "talk"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert reply.status_code == 201, reply.text
    env = {**_env(server), "FORGE_API_KEY": reply.json()["key"]}
    del env["FORGE_OWNER"]  # the key's owner

    said = _talk("echo", "-m", "with a key", env=env)
    assert said.returncode == 0, said.stdout + said.stderr
    assert "echo: with a key" in said.stdout
    listed = server.http.get(
        "/api/v1/neurons/echo",
        params={"user_id": "dora"},
        headers={"Authorization": f"Bearer {admin}"},
    ).json()
    assert [m["text"] for m in listed["state"]["messages"]] == ["with a key", "echo: with a key"]

    refused = _talk("echo", "-m", "hi", env={**env, "FORGE_API_KEY": "forge-wrong-key"})
    assert refused.returncode == 1 and "error:" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("outcome", "status", "ok"),
    [
        ("succeeded", "idle", True),
        ("succeeded", "working", True),  # the next run already started
        (None, "idle", False),
        ("failed", "idle", False),
        ("interrupted", "idle", False),
    ],
)
def test_only_a_succeeded_outcome_is_a_success(outcome: str | None, status: str, ok: bool) -> None:
    from forge.cli_talk import Renderer, Run

    out = io.StringIO()
    doc = {"status": status, "outcome": outcome, "usage": {}}
    assert Renderer(out).footer(doc, Run("req_1", "ag_1", {})) is ok
    assert ("succeeded" in out.getvalue()) is ok
