"""The scenario every executor must pass end to end through a real `forge serve`: "create
hello.py that prints hello, then run it", then a second message in the same executor session."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.conftest import ForgeServer

HELLO_PROMPT = "Create hello.py that prints hello, then run it."
GOODBYE_PROMPT = "Now say goodbye."


@dataclass
class HelloThroughForge:
    agent: dict[str, Any]
    first: list[dict[str, Any]]
    second: list[dict[str, Any]]

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return [e["entry"] for e in self.first if (e.get("entry") or {}).get("kind") == "tool_call"]


def hello_then_resume_through_forge(
    server: ForgeServer,
    *,
    profile: str,
    repo: Path,
    executor: str,
    last_request_text: Callable[[], str],
    prompt: str = HELLO_PROMPT,
    before_first: Callable[[Path], None] | None = None,
    timeout: float = 60,
) -> HelloThroughForge:
    """Run the scenario and check what every executor must show; the caller checks the rest.

    `last_request_text` gives the model server's last request (to see the earlier turns in it);
    `before_first(worktree)` runs once the agent exists (e.g. to script replies naming paths).
    """
    agent = server.create_agent(profile=profile, repo=str(repo))
    agent_id, worktree = agent["id"], Path(agent["workspace_path"])
    if before_first is not None:
        before_first(worktree)
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": prompt})
    assert reply.status_code == 202, reply.text
    first = server.wait_final(agent_id, reply.json()["request_id"], timeout=timeout)

    assert (worktree / "hello.py").read_text() == "print('hello')\n"
    calls = [e["entry"] for e in first if (e.get("entry") or {}).get("kind") == "tool_call"]
    assert [(c["action"], c["status"]) for c in calls] == [
        ("file_edit", "running"),
        ("file_edit", "success"),
        ("command_run", "running"),
        ("command_run", "success"),
    ]
    assert all(e["executor"] == executor for e in first if e["event_type"] == "agent.event")
    final = first[-1]
    assert (final["event_type"], final["outcome"]) == ("agent.complete", "succeeded"), final
    assert final["usage"]["input_tokens"] > 0
    session_id = final["session_id"]
    assert session_id
    assert server.http.get(f"/api/v1/agents/{agent_id}").json()["session_id"] == session_id

    reply = server.http.post(
        f"/api/v1/agents/{agent_id}/messages", json={"content": GOODBYE_PROMPT}
    )
    assert reply.status_code == 202, reply.text
    second = server.wait_final(agent_id, reply.json()["request_id"], timeout=timeout)
    assert (second[-1]["outcome"], second[-1]["session_id"]) == ("succeeded", session_id)
    last = last_request_text()
    assert prompt in last and GOODBYE_PROMPT in last
    return HelloThroughForge(agent=agent, first=first, second=second)
