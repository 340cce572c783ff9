"""Permission requests end to end: `permission_mode = "ask"` through a real `forge serve`, the
built-in agent against the scripted model server, answered over the API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer
from tests.support.model_server import Reply, Script, ScriptedModelServer, ToolCall

pytestmark = pytest.mark.integration


def _wait_permission(server: ForgeServer, agent_id: str, seen: int) -> dict[str, Any]:
    """The next permission_request entry after the first `seen` ones."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        asked = [
            e["entry"]
            for e in server.history(agent_id)
            if (e.get("entry") or {}).get("kind") == "permission_request"
        ]
        if len(asked) > seen:
            return asked[seen]
        time.sleep(0.05)
    raise AssertionError(f"no permission request; log:\n{server.log()[-3000:]}")


def test_ask_reject_then_once_over_the_api(forge_server: Any, git_repo: Path) -> None:
    write = {"path": "hello.py", "content": "print('hello')\n"}
    script = Script(
        [
            Reply(tool_calls=[ToolCall("write_file", write)]),
            Reply(text="Understood, trying again.", tool_calls=[ToolCall("write_file", write)]),
            Reply(text="Written."),
        ]
    )
    with ScriptedModelServer(script) as model:
        server: ForgeServer = forge_server(
            f"""
[profiles.careful]
executor = "forge"
model = "model-a"
permission_mode = "ask"
permission_timeout_seconds = 60
env = {{ OPENAI_BASE_URL = "{model.url}/v1", OPENAI_API_KEY = "test-key" }}
"""
        )
        agent = server.create_agent(profile="careful", repo=str(git_repo))
        agent_id, worktree = agent["id"], Path(agent["workspace_path"])
        assert agent["permission_mode"] == "ask"
        # The model switch reaches the next run's requests.
        server.http.patch(f"/api/v1/agents/{agent_id}", json={"model": "model-b"})
        reply = server.http.post(
            f"/api/v1/agents/{agent_id}/messages", json={"content": "write hello.py"}
        )
        request_id = reply.json()["request_id"]
        base = f"/api/v1/agents/{agent_id}/permissions"

        first = _wait_permission(server, agent_id, 0)
        assert first["tool"] == "write_file" and first["action"] == "file_edit"
        pending = server.http.get(base, params={"pending": "true"}).json()["permissions"]
        assert [p["permission_id"] for p in pending] == [first["permission_id"]]
        assert pending[0]["request_id"] == request_id and pending[0]["status"] == "pending"

        answer = server.http.post(
            f"{base}/{first['permission_id']}",
            json={"decision": "reject", "message": "not in the root, please"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["decision"] == "reject" and answer.json()["status"] == "answered"
        again = server.http.post(f"{base}/{first['permission_id']}", json={"decision": "once"})
        assert again.status_code == 409 and again.json()["error"] == "permission_answered"
        unknown = server.http.post(f"{base}/perm_nope", json={"decision": "once"})
        assert unknown.status_code == 404 and unknown.json()["error"] == "permission_not_found"
        bad = server.http.post(f"{base}/{first['permission_id']}", json={"decision": "maybe"})
        assert bad.status_code == 422

        second = _wait_permission(server, agent_id, 1)
        # The rejection reached the model, with the user's words, and nothing was written.
        assert "not in the root, please" in json.dumps(model.model_requests()[1].body)
        assert not (worktree / "hello.py").exists()
        assert (
            server.http.post(
                f"{base}/{second['permission_id']}", json={"decision": "once"}
            ).status_code
            == 200
        )

        events = server.wait_final(agent_id, request_id)
        assert events[-1]["outcome"] == "succeeded"
        assert (worktree / "hello.py").read_text() == "print('hello')\n"
        statuses = [
            e["entry"]["status"]
            for e in events
            if (e.get("entry") or {}).get("kind") == "tool_call"
        ]
        assert "denied" in statuses and statuses[-1] == "success"
        assert {r.body["model"] for r in model.model_requests()} == {"model-b"}
        # Once the run is over, nothing waits and nothing can be answered.
        assert server.http.get(base, params={"pending": "true"}).json()["permissions"] == []


def test_a_profile_with_a_mode_its_executor_cannot_honour_is_refused(
    forge_server: Any,
) -> None:
    server: ForgeServer = forge_server(
        """
[profiles.asking_command]
executor = "command"
command = "cat"
permission_mode = "ask"
"""
    )
    refused = server.http.post(
        "/api/v1/agents", json={"owner_id": "alice", "profile": "asking_command"}
    )
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["error"] == "unsupported_permission_mode" and "bypass" in body["message"]


def test_unanswered_requests_expire_and_repeated_ids_do_not_wedge_a_run(
    forge_server: Any, git_repo: Path
) -> None:
    script = Script([Reply(tool_calls=[ToolCall("run_command", {"command": "touch ran"})])])
    request = json.dumps(
        {"type": "ask", "entry": {"kind": "permission_request", "permission_id": "perm_dup"}}
    )
    with ScriptedModelServer(script) as model:
        server: ForgeServer = forge_server(
            f"""
[profiles.impatient]
executor = "forge"
model = "model-a"
permission_mode = "ask"
permission_timeout_seconds = 1
env = {{ OPENAI_BASE_URL = "{model.url}/v1", OPENAI_API_KEY = "test-key" }}

[profiles.echoer]
executor = "command"
command = '''
echo '{request}'
echo '{request}'
'''
"""
        )
        agent = server.create_agent(profile="impatient", repo=str(git_repo))
        agent_id = agent["id"]
        reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "go"})
        events = server.wait_final(agent_id, reply.json()["request_id"])
        # Nobody answered: the call was denied and the run went on to its end.
        assert events[-1]["outcome"] == "succeeded"
        assert not (Path(agent["workspace_path"]) / "ran").exists()
        asked = _wait_permission(server, agent_id, 0)
        base = f"/api/v1/agents/{agent_id}/permissions"
        listed = server.http.get(base).json()["permissions"]
        assert [(p["permission_id"], p["status"]) for p in listed] == [
            (asked["permission_id"], "expired")
        ]
        late = server.http.post(f"{base}/{asked['permission_id']}", json={"decision": "once"})
        assert late.status_code == 409 and late.json()["error"] == "permission_expired"

    # The same permission id printed twice (a command may print anything) is stored once,
    # and the run still ends.
    echoer = server.create_agent(profile="echoer")
    reply = server.http.post(f"/api/v1/agents/{echoer['id']}/messages", json={"content": "x"})
    events = server.wait_final(echoer["id"], reply.json()["request_id"])
    assert events[-1]["outcome"] == "succeeded"
    listed = server.http.get(f"/api/v1/agents/{echoer['id']}/permissions").json()["permissions"]
    assert [(p["permission_id"], p["status"]) for p in listed] == [("perm_dup", "expired")]
