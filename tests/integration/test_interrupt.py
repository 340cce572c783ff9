"""Interrupting a run ends it with outcome "interrupted" and leaves no process behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer, host_pid, wait_for

pytestmark = pytest.mark.integration

# The shell records its process group, then ignores SIGINT (so SIGTERM is needed) and waits.
STUBBORN = """
[profiles.stubborn]
executor = "command"
command = '''
echo $$ > pgid
trap '' INT
echo started
sleep 300 &
sleep 300
'''
"""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_interrupt_ends_run_and_kills_the_process_group(forge_server: Any) -> None:
    server: ForgeServer = forge_server(STUBBORN)
    agent = server.create_agent(profile="stubborn")
    agent_id = agent["id"]
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "wait"})
    request_id = reply.json()["request_id"]
    pgid_file = Path(agent["workspace_path"]) / "pgid"
    wait_for(
        lambda: any(
            (e.get("entry") or {}).get("text") == "started" for e in server.history(agent_id)
        )
    )
    pgid = host_pid(Path(agent["workspace_path"]), int(pgid_file.read_text()))
    assert _group_alive(pgid)
    assert server.http.get(f"/api/v1/agents/{agent_id}").json()["status"] == "running"

    answer = server.http.post(f"/api/v1/agents/{agent_id}/interrupt", json={})
    assert answer.status_code == 202
    assert answer.json()["status"] == "interrupting"
    assert answer.json()["request_id"] == request_id

    events = server.wait_final(agent_id, request_id)
    final = events[-1]
    assert final["event_type"] == "agent.complete"
    assert final["outcome"] == "interrupted" and final["success"] is False
    assert [e["is_final"] for e in events].count(True) == 1
    wait_for(lambda: not _group_alive(pgid), timeout=5)
    wait_for(lambda: server.http.get(f"/api/v1/agents/{agent_id}").json()["status"] == "ready")

    # Nothing left to interrupt is a clear 409, and the agent still takes messages.
    nothing = server.http.post(f"/api/v1/agents/{agent_id}/interrupt")
    assert nothing.status_code == 409 and nothing.json()["error"] == "nothing_to_interrupt"


def test_interrupting_a_queued_run_ends_it_without_running(forge_server: Any) -> None:
    server: ForgeServer = forge_server(
        '[profiles.slow]\nexecutor = "command"\ncommand = "sleep 1; cat"\n'
    )
    agent_id = server.create_agent(profile="slow")["id"]
    path = f"/api/v1/agents/{agent_id}/messages"
    first = server.http.post(path, json={"content": "a", "request_id": "a"}).json()
    second = server.http.post(path, json={"content": "b", "request_id": "b"}).json()
    assert first["status"] == "processing" and second["status"] == "queued"
    answer = server.http.post(f"/api/v1/agents/{agent_id}/interrupt", json={"request_id": "b"})
    assert answer.status_code == 202
    b_events = server.wait_final(agent_id, "b")
    assert [e["event_type"] for e in b_events] == ["agent.complete"]
    assert b_events[0]["outcome"] == "interrupted"
    a_events = server.wait_final(agent_id, "a")
    assert a_events[-1]["outcome"] == "succeeded"
