"""Runners that die, agents deleted mid-run, and output that is hard to encode."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer, host_pid, runner_pids, wait_for

pytestmark = pytest.mark.integration

# "wait" starts a long run that records its process group; anything else is answered at once.
MOODY = """
[profiles.moody]
executor = "command"
command = '''
read message
if [ "$message" = "wait" ]; then
  echo $$ > pgid
  echo started
  sleep 300
else
  echo "got $message"
fi
'''
"""


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_long_run(server: ForgeServer) -> tuple[dict[str, Any], str, int]:
    agent = server.create_agent(profile="moody")
    reply = server.http.post(f"/api/v1/agents/{agent['id']}/messages", json={"content": "wait"})
    assert reply.status_code == 202
    wait_for(
        lambda: any(
            (e.get("entry") or {}).get("text") == "started" for e in server.history(agent["id"])
        )
    )
    workspace = Path(agent["workspace_path"])
    pgid = host_pid(workspace, int((workspace / "pgid").read_text()))
    assert _alive(pgid)
    return agent, reply.json()["request_id"], pgid


def test_a_dead_runner_ends_its_run_and_the_next_message_starts_a_new_one(
    forge_server: Any,
) -> None:
    server: ForgeServer = forge_server(MOODY)
    agent, request_id, pgid = _start_long_run(server)
    agent_id = agent["id"]
    [runner_pid] = runner_pids(agent_id)

    os.kill(runner_pid, signal.SIGKILL)

    events = server.wait_final(agent_id, request_id)
    final = events[-1]
    assert final["event_type"] == "agent.error" and final["error"]["code"] == "RUNNER_LOST"
    assert [e["is_final"] for e in events].count(True) == 1
    wait_for(lambda: not _alive(pgid), timeout=10)  # the executor did not outlive its runner
    wait_for(lambda: server.http.get(f"/api/v1/agents/{agent_id}").json()["status"] == "stopped")

    # The workspace is kept, and the next message brings a new runner up in it.
    assert (Path(agent["workspace_path"]) / "pgid").exists()
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "hello"})
    assert reply.status_code == 202
    again = server.wait_final(agent_id, reply.json()["request_id"])
    assert again[-1]["outcome"] == "succeeded"
    assert "got hello" in [(e.get("entry") or {}).get("text") for e in again]
    assert len(runner_pids(agent_id)) == 1
    history = server.history(agent_id)
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1))


def test_a_runner_that_died_while_the_platform_was_down_is_reported_lost_on_start(
    forge_server: Any,
) -> None:
    server: ForgeServer = forge_server(MOODY)
    agent, request_id, pgid = _start_long_run(server)
    agent_id = agent["id"]
    [runner_pid] = runner_pids(agent_id)
    before = len(server.history(agent_id))

    server.stop(signal.SIGKILL)
    os.kill(runner_pid, signal.SIGKILL)
    os.killpg(pgid, signal.SIGKILL)
    server.start()

    # The run found in flight ends with one final RUNNER_LOST error; the log stays gapless.
    events = server.wait_final(agent_id, request_id)
    final = events[-1]
    assert final["event_type"] == "agent.error" and final["error"]["code"] == "RUNNER_LOST"
    assert final["error"]["recoverable"] is True
    assert [e["is_final"] for e in events].count(True) == 1
    history = server.history(agent_id)
    assert len(history) > before
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
    # The workspace is kept, and the agent takes the next message in it.
    assert (Path(agent["workspace_path"]) / "pgid").exists()
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "again"})
    assert reply.status_code == 202
    assert server.wait_final(agent_id, reply.json()["request_id"])[-1]["outcome"] == "succeeded"


@pytest.mark.parametrize("graceful", [True, False])
def test_deleting_an_agent_mid_run_ends_the_run_once_and_leaves_no_process(
    forge_server: Any, graceful: bool
) -> None:
    server: ForgeServer = forge_server(MOODY)
    agent, request_id, pgid = _start_long_run(server)
    agent_id = agent["id"]
    queued = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "later"})
    assert queued.json()["status"] == "queued"

    reply = server.http.delete(
        f"/api/v1/agents/{agent_id}", params={"graceful": str(graceful).lower()}
    )
    assert reply.status_code == 204

    assert not _alive(pgid)
    assert runner_pids(agent_id) == []
    history = server.history(agent_id)  # the log outlives the agent
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
    finals = [
        (e["request_id"], e["event_type"], e.get("outcome")) for e in history if e["is_final"]
    ]
    assert finals == [
        (queued.json()["request_id"], "agent.complete", "interrupted"),
        (request_id, "agent.complete", "interrupted"),
    ]
    assert server.http.get(f"/api/v1/agents/{agent_id}").status_code == 404


def test_output_with_a_lone_surrogate_does_not_break_the_run(forge_server: Any) -> None:
    server: ForgeServer = forge_server(
        "[profiles.cut]\n"
        'executor = "command"\n'
        "command = '''printf '{\"type\": \"text\", \"text\": \"\\\\ud83d\"}\\n'; echo after'''\n"
    )
    agent_id = server.create_agent(profile="cut")["id"]
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "x"})
    events = server.wait_final(agent_id, reply.json()["request_id"])
    assert events[-1]["outcome"] == "succeeded"
    raw = [e["event"] for e in events if e["executor_event_type"] == "text"]
    assert raw == [{"type": "text", "text": "\ud83d"}]
    assert "after" in [(e.get("entry") or {}).get("text") for e in events]
