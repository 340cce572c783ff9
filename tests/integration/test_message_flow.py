"""One message end to end: worktree, runner, event log, signed webhooks, history and SSE."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.integration.conftest import ForgeServer, WebhookReceiver, git

pytestmark = pytest.mark.integration

EDITOR_PROFILE = """
[profiles.editor]
executor = "command"
command = '''
printf 'edited by the agent\\n' >> hello.txt
echo "asked: $(cat)"
echo '{"type": "progress", "pct": 50}'
echo 'a warning' >&2
echo "branch: $(git rev-parse --abbrev-ref HEAD)"
echo "agent: $FORGE_AGENT_ID request: $FORGE_REQUEST_ID"
'''
"""

WHSEC = "whsec_" + base64.b64encode(b"a-32-byte-secret-for-the-tests!!").decode()


def _read_sse(server: ForgeServer, agent_id: str, until_seq: int, **headers: str) -> list[Any]:
    frames: list[dict[str, Any]] = []
    with httpx.stream(
        "GET",
        f"{server.base_url}/api/v1/agents/{agent_id}/events",
        headers={"accept": "text/event-stream", **headers},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "data" in frame:
                    frames.append(
                        {
                            "id": int(frame["id"]),
                            "event": frame["event"],
                            "data": json.loads(frame["data"]),
                        }
                    )
                    if frames[-1]["id"] >= until_seq:
                        break
                frame = {}
            elif not line.startswith(":") and ":" in line:
                key, _, value = line.partition(":")
                frame[key] = value.lstrip(" ")
    return frames


def test_message_runs_in_worktree_and_every_event_arrives_signed(
    forge_server: Any, git_repo: Path, receiver: WebhookReceiver
) -> None:
    server: ForgeServer = forge_server(EDITOR_PROFILE)
    agent = server.create_agent(profile="editor", repo=str(git_repo), metadata={"ticket": 7})
    agent_id = agent["id"]
    assert agent["branch"] == f"forge/{agent_id}"
    assert agent["metadata"] == {"ticket": 7}

    reply = server.http.post(
        f"/api/v1/agents/{agent_id}/messages",
        params={"user_id": "alice"},
        json={"content": "add a line", "webhook_url": receiver.url, "webhook_secret": WHSEC},
    )
    assert reply.status_code == 202, reply.text
    accepted = reply.json()
    assert accepted["agent_id"] == agent_id and accepted["status"] in ("processing", "queued")
    request_id = accepted["request_id"]

    history = server.wait_final(agent_id, request_id)
    n = len(history)
    receiver.wait_for(lambda reqs: len(reqs) >= n)
    received = [r.json for r in receiver.requests]

    # Every event, in seq order 1..N, the final one last and alone.
    assert [e["seq"] for e in received] == list(range(1, n + 1))
    assert [e["is_final"] for e in received] == [False] * (n - 1) + [True]
    final = received[-1]
    assert final["event_type"] == "agent.complete"
    assert final["outcome"] == "succeeded" and final["success"] is True
    assert set(final["usage"]) == {
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_usd",
    }
    assert received[0]["event_type"] == "agent.status"
    for event in received:
        assert event["agent_id"] == agent_id and event["request_id"] == request_id
        assert event["event_id"].startswith("evt_")
        assert event["timestamp"].endswith("Z")

    # The executor's output, normalized.
    entries = [e["entry"] for e in received if e["event_type"] == "agent.event"]
    texts = [en["text"] for en in entries if en and en["kind"] == "assistant_message"]
    assert "asked: add a line" in texts
    assert f"branch: forge/{agent_id}" in texts
    assert f"agent: {agent_id} request: {request_id}" in texts
    json_events = [e for e in received if e["executor_event_type"] == "progress"]
    assert json_events and json_events[0]["event"] == {"type": "progress", "pct": 50}
    assert {"kind": "system", "text": "a warning", "stream": "stderr"} in entries

    # Both signatures verify on every delivery.
    verifier = Webhook(WHSEC)
    for request in receiver.requests:
        verifier.verify(request.body, request.headers)
        timestamp = request.headers["x-forge-timestamp"]
        expected = hmac.new(
            WHSEC.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256
        ).hexdigest()
        assert request.headers["x-forge-signature"] == f"sha256={expected}"
        assert request.headers["webhook-id"] == request.json["event_id"]

    # History holds exactly what was delivered.
    assert history == received
    # SSE replays the same events, and resumes after Last-Event-ID.
    frames = _read_sse(server, agent_id, until_seq=n)
    assert [f["data"] for f in frames] == received
    assert [f["id"] for f in frames] == list(range(1, n + 1))
    assert frames[-1]["event"] == "agent.complete"
    resumed = _read_sse(server, agent_id, until_seq=n, **{"last-event-id": "2"})
    assert [f["id"] for f in resumed] == list(range(3, n + 1))

    # The edit is in the worktree, on the agent's branch; the original checkout is untouched.
    worktree = Path(agent["workspace_path"])
    assert worktree != git_repo
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=worktree).strip() == f"forge/{agent_id}"
    assert (worktree / "hello.txt").read_text() == "hello\nedited by the agent\n"
    assert (git_repo / "hello.txt").read_text() == "hello\n"
    assert git("status", "--porcelain", cwd=git_repo) == ""
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=git_repo).strip() == "main"


def test_plain_secret_signs_with_its_utf8_bytes(
    forge_server: Any, receiver: WebhookReceiver
) -> None:
    server: ForgeServer = forge_server()
    agent = server.create_agent()
    secret = "plain secret, no prefix"
    reply = server.http.post(
        f"/api/v1/agents/{agent['id']}/messages",
        json={"content": "echo me", "webhook_url": receiver.url, "webhook_secret": secret},
    )
    assert reply.status_code == 202
    history = server.wait_final(agent["id"], reply.json()["request_id"])
    receiver.wait_for(lambda reqs: len(reqs) >= len(history))
    for request in receiver.requests:
        Webhook(secret.encode()).verify(request.body, request.headers)
        timestamp = request.headers["x-forge-timestamp"]
        expected = hmac.new(
            secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256
        ).hexdigest()
        assert request.headers["x-forge-signature"] == f"sha256={expected}"
    # The default profile echoes the message back.
    texts = [e["entry"]["text"] for e in history if e.get("entry")]
    assert texts == ["echo me"]


def test_request_id_is_idempotent_and_conflicts_on_another_body(forge_server: Any) -> None:
    server: ForgeServer = forge_server()
    agent_id = server.create_agent()["id"]
    path = f"/api/v1/agents/{agent_id}/messages"
    first = server.http.post(path, json={"content": "once", "request_id": "req-1"})
    again = server.http.post(path, json={"content": "once", "request_id": "req-1"})
    assert first.status_code == 202 and again.status_code == 202
    assert again.json()["request_id"] == "req-1"
    other = server.http.post(path, json={"content": "different", "request_id": "req-1"})
    assert other.status_code == 409
    assert other.json()["error"] == "request_id_conflict"
    events = server.wait_final(agent_id, "req-1")
    # Ran once: one status event, one echo, one final event.
    assert [e["event_type"] for e in events] == ["agent.status", "agent.event", "agent.complete"]


def test_messages_queue_and_run_in_order(forge_server: Any) -> None:
    server: ForgeServer = forge_server(
        '[profiles.slow]\nexecutor = "command"\ncommand = "sleep 0.3; cat"\n'
    )
    agent_id = server.create_agent(profile="slow")["id"]
    statuses = []
    ids = []
    for i in range(3):
        reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": f"m{i}"})
        assert reply.status_code == 202
        statuses.append(reply.json()["status"])
        ids.append(reply.json()["request_id"])
    assert statuses[0] == "processing" and statuses[1:] == ["queued", "queued"]
    server.wait_final(agent_id, ids[-1])
    events = server.history(agent_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    finals = [e["request_id"] for e in events if e["is_final"]]
    assert finals == ids
    echoed = [e["entry"]["text"] for e in events if e.get("entry")]
    assert echoed == ["m0", "m1", "m2"]
    # Runs do not overlap: each run's events are contiguous.
    order = [e["request_id"] for e in events]
    assert order == sorted(order, key=ids.index)


def test_failing_command_completes_with_failed(forge_server: Any) -> None:
    server: ForgeServer = forge_server(
        '[profiles.broken]\nexecutor = "command"\ncommand = "echo oops; exit 3"\n'
    )
    agent_id = server.create_agent(profile="broken")["id"]
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "x"})
    final = server.wait_final(agent_id, reply.json()["request_id"])[-1]
    assert final["event_type"] == "agent.complete"
    assert final["outcome"] == "failed" and final["success"] is False


def test_purge_removes_worktree_and_branch(forge_server: Any, git_repo: Path) -> None:
    server: ForgeServer = forge_server()
    agent = server.create_agent(repo=str(git_repo))
    worktree = Path(agent["workspace_path"])
    assert worktree.is_dir()
    reply = server.http.delete(f"/api/v1/agents/{agent['id']}", params={"purge": "true"})
    assert reply.status_code == 204
    assert not worktree.exists()
    branches = subprocess.run(
        ["git", "branch", "--list", "forge/*"],
        cwd=git_repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert branches.strip() == ""
    assert server.http.get(f"/api/v1/agents/{agent['id']}").status_code == 404
