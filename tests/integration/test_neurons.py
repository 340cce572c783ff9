"""Neurons against the real server: definitions, one agent per owner and project, and the state
document over `WS /ws/neurons/{name}`, applied by a client with the `jsonpatch` package."""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import ForgeServer, make_repository, wait_for

pytestmark = pytest.mark.integration


def _emit(entry: dict[str, Any]) -> str:
    return "printf '%s\\n' " + shlex.quote(json.dumps({"entry": entry}))


def _todos(*items: tuple[str, str]) -> dict[str, Any]:
    return {"kind": "todo", "items": [{"content": c, "status": s} for c, s in items]}


def _edit(status: str) -> dict[str, Any]:
    return {"kind": "tool_call", "tool": "edit", "action": "file_edit", "status": status}


# A run that thinks, plans, edits a file, waits for the test (a `go` file in its workspace),
# then answers in Markdown sections and finishes its todos.
PLANNER = "\n".join(
    [
        "cat > /dev/null",
        _emit({"kind": "thinking", "text": "reading the wish"}),
        _emit(_todos(("spec", "in_progress"), ("plan", "pending"))),
        _emit({**_edit("running"), "path": "docs/spec.md"}),
        _emit({**_edit("success"), "path": "docs/spec.md"}),
        "while [ ! -f go ]; do sleep 0.05; done",
        _emit(
            {"kind": "assistant_message", "text": "## Goal\nShip it.\n\n## Plan\n1. spec\n2. code"}
        ),
        _emit(_todos(("spec", "completed"), ("plan", "completed"))),
        "echo done planning",
    ]
)

NEURON = """---
name: planner
description: Plans in sections
forge_profile_name: planner
model: some-model
---
You plan.
"""


def neuron_config(tmp_path: Path) -> str:
    folder = tmp_path / "neurons"
    folder.mkdir()
    (folder / "planner.md").write_text(NEURON)
    (folder / "broken.md").write_text("no front matter here\n")
    command = PLANNER.replace("'", "'\\''")
    return f"""
[neurons]
dirs = ["{folder}"]

[profiles.planner]
executor = "command"
command = '''sh -c '{command}' '''
"""


class PatchClient:
    """Follows a neuron's stream the way an application would: keeps the document, applies each
    operation with `jsonpatch`, and reconnects with the last version it applied."""

    def __init__(self, server: ForgeServer, name: str, **params: str) -> None:
        self.server = server
        self.name = name
        self.params = {"user_id": "alice", **params}
        self.doc: dict[str, Any] = {}
        self.version = -1
        self.agent_id = ""
        self.snapshots = 0
        self.ws: ClientConnection | None = None
        self._open = contextlib.ExitStack()

    def connect(self) -> None:
        params = dict(self.params)
        if self.version >= 0:
            params.update(version=str(self.version), agent_id=self.agent_id)
        query = "&".join(f"{k}={v}" for k, v in params.items())
        url = f"ws://127.0.0.1:{self.server.port}/ws/neurons/{self.name}?{query}"
        self.ws = self._open.enter_context(connect(url, open_timeout=20))

    def close(self) -> None:
        self._open.close()
        self.ws = None

    def step(self, timeout: float = 20) -> dict[str, Any]:
        """Receive and apply one frame."""
        assert self.ws is not None
        frame = json.loads(self.ws.recv(timeout=timeout))
        assert frame["neuron"] == self.name
        assert frame["timestamp"].endswith("Z")
        if frame["source"] == "snapshot":
            self.doc = frame["data"]
            self.snapshots += 1
        else:
            assert frame["source"] == "diff", frame
            assert frame["version"] == self.version + 1, (frame, self.version)
            assert set(frame["data"]) <= {"op", "path", "value"}
            jsonpatch.apply_patch(self.doc, [frame["data"]], in_place=True)
        self.version = frame["version"]
        self.agent_id = self.doc["agent_id"]
        assert self.doc["seq"] == frame["seq"] or frame["data"].get("path") != "/seq"
        return frame

    def until(self, done: Callable[[dict[str, Any]], bool], timeout: float = 30) -> None:
        """Apply frames until `done(document)` holds after a whole event (its last operation
        is the one on `/seq`)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.step(timeout=max(0.1, deadline - time.monotonic()))
            whole = frame["source"] == "snapshot" or frame["data"]["path"] == "/seq"
            if whole and done(self.doc):
                return


def server_state(server: ForgeServer, name: str) -> dict[str, Any]:
    response = server.http.get(f"/api/v1/neurons/{name}", params={"user_id": "alice"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def go(server: ForgeServer, agent_id: str) -> None:
    agent = server.http.get(f"/api/v1/agents/{agent_id}").json()
    (Path(agent["workspace_path"]) / "go").write_text("")


def test_a_jsonpatch_client_ends_with_the_servers_document_across_reconnects(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    server = forge_server(extra_config=neuron_config(tmp_path))
    listed = server.http.get("/api/v1/neurons", params={"user_id": "alice"}).json()["neurons"]
    assert {n["name"] for n in listed} >= {"planner", "wish", "forge", "review", "master"}
    planner = next(n for n in listed if n["name"] == "planner")
    assert planner["status"] == "not_started" and planner["agent_id"] is None
    assert planner["model"] == "some-model" and planner["profile"] == "neuron:planner"
    assert "skipping neuron file" in server.log() and "broken.md" in server.log()

    # Connecting makes the neuron's agent; the first frame is the (empty) snapshot.
    client = PatchClient(server, "planner")
    client.connect()
    first = client.step()
    assert first["source"] == "snapshot" and first["version"] == 0
    assert client.doc["status"] == "idle" and client.doc["messages"] == []

    sent = server.http.post(
        "/api/v1/neurons/planner/messages",
        params={"user_id": "alice"},
        json={"content": "write the spec"},
    )
    assert sent.status_code == 202, sent.text
    assert sent.json()["agent_id"] == client.agent_id and sent.json()["neuron"] == "planner"

    # 1. The client goes away in the middle of an event (after `/status`, before its `/seq`).
    while client.doc["status"] != "working":
        frame = client.step()
    assert frame["data"]["path"] == "/status"
    client.close()
    client.connect()
    resumed = client.step()
    assert resumed["source"] == "diff", "a reconnect with a version must not start over"
    client.until(lambda d: d["activity"] is not None and d["activity"]["status"] == "success")

    # 2. The server restarts while the run waits; the client resumes on the new process,
    # which folds the log again to the same version.
    server.stop()
    with pytest.raises(ConnectionClosed):
        client.until(lambda d: False, timeout=20)
    server.start()
    client.connect()
    go(server, client.agent_id)
    client.until(lambda d: d["status"] == "idle" and d["outcome"] is not None, timeout=60)
    assert client.snapshots == 1

    state = server_state(server, "planner")
    assert client.doc == state["state"]
    assert client.version == state["version"]
    doc = client.doc
    assert doc["outcome"] == "succeeded"
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant", "assistant"]
    assert doc["messages"][0]["text"] == "write the spec"
    assert doc["messages"][2]["text"] == "done planning"
    assert doc["sections"] == [
        {"title": "Goal", "text": "Ship it."},
        {"title": "Plan", "text": "1. spec\n2. code"},
    ]
    assert doc["todos"] == [
        {"content": "spec", "status": "completed"},
        {"content": "plan", "status": "completed"},
    ]
    assert doc["files_changed"] == ["docs/spec.md"]
    assert doc["usage"]["runs"] == 1
    assert doc["thinking"] == "" and doc["activity"] is None and doc["request_id"] is None
    client.close()

    # A new client gets the same document as one snapshot.
    fresh = PatchClient(server, "planner")
    fresh.connect()
    assert fresh.step()["source"] == "snapshot"
    assert fresh.doc == doc and fresh.version == client.version
    fresh.close()

    # A version the document never reached (or another agent's) gets a snapshot, not a gap.
    stale = PatchClient(server, "planner")
    stale.version, stale.agent_id = client.version + 1000, client.agent_id
    stale.connect()
    assert stale.step()["source"] == "snapshot" and stale.doc == doc
    stale.close()


def test_one_agent_per_owner_project_and_name_kept_across_stops(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    server = forge_server(extra_config=neuron_config(tmp_path))
    repo = make_repository(tmp_path / "repo")

    def send(user: str, content: str, project: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"content": content}
        if project is not None:
            body["project"] = project
        response = server.http.post(
            "/api/v1/neurons/wish/messages", params={"user_id": user}, json=body
        )
        assert response.status_code == 202, response.text
        accepted: dict[str, Any] = response.json()
        return accepted

    first = send("alice", "one")
    again = send("alice", "two")
    other_project = send("alice", "three", project=str(repo))
    bob = send("bob", "four")
    assert first["agent_id"] == again["agent_id"]
    assert len({first["agent_id"], other_project["agent_id"], bob["agent_id"]}) == 3
    agent = server.http.get(f"/api/v1/agents/{other_project['agent_id']}").json()
    assert agent["repo"] == str(repo) and agent["profile"] == "neuron:wish"

    # The shipped WISH runs the default profile (`cat`): it says back what it was told, and
    # its instructions, which the `command` executor appends to the message.
    server.wait_final(first["agent_id"], again["request_id"])
    messages = server_state(server, "wish")["state"]["messages"]
    assert [m["text"] for m in messages if m["role"] == "user"] == ["one", "two"]
    replies = [m["text"] for m in messages if m["role"] == "assistant"]
    assert replies[0] == "one" and "two" in replies
    assert "You are WISH, the neuron that turns a wish into a specification." in replies

    # Stopped, it is resumed by the next message, as the same agent.
    stopped = server.http.post(f"/api/v1/sessions/{first['agent_id']}/stop")
    assert stopped.status_code in (200, 202), stopped.text
    wait_for(
        lambda: server.http.get(f"/api/v1/agents/{first['agent_id']}").json()["status"] == "stopped"
    )
    resumed = send("alice", "five")
    assert resumed["agent_id"] == first["agent_id"]
    server.wait_final(first["agent_id"], resumed["request_id"])

    # Deleted, it is replaced by a new agent on next use.
    deleted = server.http.delete(f"/api/v1/agents/{first['agent_id']}")
    assert deleted.status_code in (200, 202, 204), deleted.text
    replaced = send("alice", "six")
    assert replaced["agent_id"] != first["agent_id"]
    listed = server.http.get("/api/v1/neurons", params={"user_id": "alice"}).json()["neurons"]
    assert next(n for n in listed if n["name"] == "wish")["agent_id"] == replaced["agent_id"]


def test_bad_neuron_requests_get_clear_errors(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    server = forge_server(extra_config=neuron_config(tmp_path))
    unknown = server.http.post(
        "/api/v1/neurons/nobody/messages", params={"user_id": "alice"}, json={"content": "hi"}
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "neuron_not_found"
    assert "planner" in unknown.json()["message"]
    no_owner = server.http.get("/api/v1/neurons")
    assert no_owner.status_code == 422 and "user_id" in no_owner.json()["message"]
    for project in ("relative/path", "/srv/re\x00po"):
        refused_project = server.http.get(
            "/api/v1/neurons/wish", params={"user_id": "alice", "project": project}
        )
        assert refused_project.status_code == 422, refused_project.text
        assert refused_project.json()["error"] == "invalid_project"
    with pytest.raises(InvalidStatus) as nul:
        connect(f"ws://127.0.0.1:{server.port}/ws/neurons/wish?user_id=alice&project=/a%00b")
    assert nul.value.response.status_code == 422
    relative = server.http.post(
        "/api/v1/neurons/wish/messages",
        params={"user_id": "alice"},
        json={"content": "hi", "project": "relative/path"},
    )
    assert relative.status_code == 422 and "absolute" in relative.json()["message"]
    empty = server.http.post(
        "/api/v1/neurons/wish/messages", params={"user_id": "alice"}, json={"content": ""}
    )
    assert empty.status_code == 422
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{server.port}/ws/neurons/wish?user_id=alice&version=x")
    assert refused.value.response.status_code == 422
    assert b"version" in refused.value.response.body
    # A message with attachments may be larger than other bodies, as an agent's may.
    attachment = {"name": "big.bin", "content_base64": base64.b64encode(b"x" * 3_000_000).decode()}
    big = server.http.post(
        "/api/v1/neurons/wish/messages",
        params={"user_id": "alice"},
        json={"content": "see attached", "attachments": [attachment]},
    )
    assert big.status_code == 202, big.text
    assert server.http.get("/healthz").status_code == 200


def test_a_stream_moves_to_the_neurons_new_agent(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    server = forge_server(extra_config=neuron_config(tmp_path))
    client = PatchClient(server, "wish")
    client.connect()
    client.step()
    first = client.agent_id
    sent = server.http.post(
        "/api/v1/neurons/wish/messages", params={"user_id": "alice"}, json={"content": "one"}
    )
    assert sent.status_code == 202, sent.text
    client.until(lambda d: d["outcome"] == "succeeded")

    # The agent is deleted: its stream ends, and the next message makes a new agent.
    assert server.http.delete(f"/api/v1/agents/{first}").status_code == 204
    with pytest.raises(ConnectionClosed) as closed:
        client.until(lambda d: False, timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    sent = server.http.post(
        "/api/v1/neurons/wish/messages", params={"user_id": "alice"}, json={"content": "two"}
    )
    assert sent.status_code == 202 and sent.json()["agent_id"] != first

    # Resuming with the old agent's version gets the new agent's document whole.
    client.close()
    client.connect()
    assert client.step()["source"] == "snapshot"
    assert client.agent_id == sent.json()["agent_id"] and client.snapshots == 2
    client.until(lambda d: d["outcome"] == "succeeded")
    assert [m["text"] for m in client.doc["messages"] if m["role"] == "user"] == ["two"]
    client.close()


def test_an_owner_reaches_only_their_own_neurons(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    admin = "forge-admin-" + "n" * 32
    server = forge_server(
        extra_config=neuron_config(tmp_path) + "\n[auth]\nenabled = true\n",
        env={"FORGE_API_KEY": admin},
    )
    keys = {}
    for owner in ("alice", "bob"):
        made = server.http.post(
            "/api/v1/keys", json={"owner_id": owner}, headers={"Authorization": f"Bearer {admin}"}
        )
        assert made.status_code == 201, made.text
        keys[owner] = made.json()["key"]
    as_alice = {"Authorization": f"Bearer {keys['alice']}"}
    as_bob = {"Authorization": f"Bearer {keys['bob']}"}
    sent = server.http.post(
        "/api/v1/neurons/wish/messages", json={"content": "x"}, headers=as_alice
    )
    assert sent.status_code == 202, sent.text
    alices = sent.json()["agent_id"]

    url = f"ws://127.0.0.1:{server.port}/ws/neurons/wish"
    with pytest.raises(InvalidStatus) as anonymous:
        connect(url)
    assert anonymous.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as named:
        connect(url + "?user_id=alice", additional_headers=as_bob)
    assert named.value.response.status_code == 403
    # Bob's own neuron is another agent; alice's stream is hers.
    with connect(url, additional_headers=as_bob) as ws:
        bobs = json.loads(ws.recv(timeout=20))["data"]
    assert bobs["agent_id"] != alices and bobs["messages"] == []
    with connect(url, additional_headers=as_alice) as ws:
        assert json.loads(ws.recv(timeout=20))["data"]["agent_id"] == alices
    # The admin names the owner.
    with connect(
        url + "?user_id=alice", additional_headers={"Authorization": f"Bearer {admin}"}
    ) as ws:
        assert json.loads(ws.recv(timeout=20))["data"]["agent_id"] == alices


def test_messages_racing_to_a_new_neuron_share_one_agent(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    server = forge_server(extra_config=neuron_config(tmp_path))

    def send(i: int) -> str:
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            response = http.post(
                "/api/v1/neurons/wish/messages",
                params={"user_id": "carol"},
                json={"content": f"at once {i}"},
            )
        assert response.status_code == 202, response.text
        agent_id: str = response.json()["agent_id"]
        return agent_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        agents = set(pool.map(send, range(8)))
    assert len(agents) == 1
    owned = server.http.get("/api/v1/agents", params={"user_id": "carol"}).json()
    assert [a["id"] for a in owned["agents"]] == list(agents)
