"""Sessions: listing with filters and pages, one session, and its transcript."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer

pytestmark = pytest.mark.integration

PROFILES = """
[profiles.echo]
executor = "command"
command = "cat"

[profiles.tools]
executor = "command"
command = "echo 'looking'; echo 'done' >&2; exit 3"
"""


def send(server: ForgeServer, agent_id: str, content: str) -> list[dict[str, Any]]:
    response = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": content})
    assert response.status_code == 202, response.text
    return server.wait_final(agent_id, response.json()["request_id"])


def test_sessions_are_listed_filtered_paged_and_transcribed(forge_server: Any) -> None:
    server: ForgeServer = forge_server(PROFILES)
    before = datetime.now(UTC) - timedelta(seconds=1)
    echo = [server.create_agent(profile="echo") for _ in range(3)]
    tools = server.create_agent(profile="tools")
    other_owner = server.create_agent(profile="echo", owner_id="bob")
    send(server, echo[0]["id"], "first message")
    send(server, echo[0]["id"], "second message")
    send(server, tools["id"], "try")
    assert server.http.delete(f"/api/v1/agents/{echo[2]['id']}").status_code == 204

    def listed(**params: Any) -> dict[str, Any]:
        response = server.http.get("/api/v1/sessions", params=params)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page

    everything = listed(user_id="alice")
    assert everything["total"] == 5 - 1  # bob's is not alice's
    assert [s["id"] for s in everything["sessions"]] == sorted(
        [a["id"] for a in [*echo, tools]], reverse=True
    )
    by_id = {s["id"]: s for s in everything["sessions"]}
    assert by_id[echo[0]["id"]]["runs"] == 2 and by_id[echo[0]["id"]]["status"] == "idle"
    assert by_id[echo[2]["id"]]["status"] == "completed"

    assert {s["id"] for s in listed(user_id="alice", profile="tools")["sessions"]} == {tools["id"]}
    idle = listed(user_id="alice", status="idle")
    assert {s["id"] for s in idle["sessions"]} == {echo[0]["id"], echo[1]["id"], tools["id"]}
    completed = listed(status="completed")
    assert [s["id"] for s in completed["sessions"]] == [echo[2]["id"]]
    assert listed(created_after=(datetime.now(UTC) + timedelta(hours=1)).isoformat())["total"] == 0
    assert listed(created_after=before.isoformat(), user_id="bob")["total"] == 1

    # Pages of two, following next_cursor, give every session once.
    seen: list[str] = []
    cursor = None
    while True:
        page = listed(user_id="alice", limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [s["id"] for s in everything["sessions"]]

    # One session; another owner's is a 404.
    one = server.http.get(f"/api/v1/sessions/{tools['id']}", params={"user_id": "alice"})
    assert one.status_code == 200 and one.json()["profile"] == "tools"
    assert (
        server.http.get(
            f"/api/v1/sessions/{other_owner['id']}", params={"user_id": "alice"}
        ).status_code
        == 404
    )
    assert server.http.get("/api/v1/sessions/ag_nope").status_code == 404
    assert server.http.get("/api/v1/sessions", params={"status": "sleeping"}).status_code == 422

    # The transcript: each message, what the executor printed, how each run ended.
    transcript = server.http.get(f"/api/v1/sessions/{echo[0]['id']}/transcript").json()
    kinds = [
        (e["kind"], e["entry"].get("text") or e["entry"].get("outcome"))
        for e in transcript["entries"]
    ]
    assert kinds == [
        ("user_message", "first message"),
        ("assistant_message", "first message"),
        ("run_end", "succeeded"),
        ("user_message", "second message"),
        ("assistant_message", "second message"),
        ("run_end", "succeeded"),
    ]
    markdown = server.http.get(
        f"/api/v1/sessions/{tools['id']}/transcript", params={"format": "markdown"}
    )
    assert markdown.headers["content-type"].startswith("text/markdown")
    text = markdown.text
    assert f"# Session {tools['id']}" in text
    assert "> try" in text and "looking" in text and "*Run ended: failed*" in text
