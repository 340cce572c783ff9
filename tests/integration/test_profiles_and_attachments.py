"""Profiles (forge.toml, `[executors.KIND.VARIANT]`, Markdown agent files), credentials that
reach one executor alone, attachments (JSON and multipart) and the model switch, end to end
through a real `forge serve` with the `command` executor."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer

pytestmark = pytest.mark.integration

# The command prints what reached it: the attachments in the workspace, the environment.
CONFIG = """
[agent_files]
dir = "{agents_dir}"

[attachments]
max_files = 3
max_file_bytes = 1000
max_total_bytes = 1500

[executors.COMMAND.SHOWENV]
command = 'echo "forge=${{FORGE_SECRET_TOKEN:-unset}} anthropic=${{ANTHROPIC_API_KEY:-unset}}"'

[profiles.lister]
executor = "command"
command = '''
cat > /dev/null
for f in .forge/attachments/*/*; do echo "file $f $(wc -c < "$f") $(head -c 40 "$f")"; done
git status --porcelain
'''
"""

REVIEWER = """---
name: reviewer
description: Reviews changes
executor: command
command: cat
model: gpt-test
---
You review code. Be brief.
"""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _outputs(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["entry"]["text"]
        for e in events
        if e["event_type"] == "agent.event"
        and e["entry"]
        and e["entry"]["kind"] == "assistant_message"
    ]


def _server(forge_server: Any, tmp_path: Path) -> ForgeServer:
    agents_dir = tmp_path / "agents"
    agents_dir.mkdir()
    (agents_dir / "reviewer.md").write_text(REVIEWER)
    (agents_dir / "broken.md").write_text("no front matter here\n")
    server: ForgeServer = forge_server(CONFIG.format(agents_dir=agents_dir))
    return server


def test_attachments_reach_the_workspace_and_limits_are_clear(
    forge_server: Any, tmp_path: Path, git_repo: Path
) -> None:
    server = _server(forge_server, tmp_path)
    agent = server.create_agent(profile="lister", repo=str(git_repo))
    messages = f"/api/v1/agents/{agent['id']}/messages"

    # JSON with base64.
    reply = server.http.post(
        messages,
        json={
            "content": "look at these",
            "attachments": [
                {"name": "notes.txt", "media_type": "text/plain", "content_base64": _b64(b"hi")},
                {"name": "pic.png", "media_type": "image/png", "content_base64": _b64(b"\x89PNG")},
            ],
        },
    )
    assert reply.status_code == 202, reply.text
    run = server.wait_final(agent["id"], reply.json()["request_id"])
    assert run[-1]["outcome"] == "succeeded"
    outputs = _outputs(run)
    request_id = reply.json()["request_id"]
    assert f"file .forge/attachments/{request_id}/notes.txt 2 hi" in outputs
    assert any(
        line.startswith(f"file .forge/attachments/{request_id}/pic.png 4") for line in outputs
    )
    # The attachments never show up as changes of the agent.
    assert not [line for line in outputs if line.startswith("??") or line.startswith(" M")]

    # Multipart form data, files as `files` parts.
    reply = server.http.post(
        messages,
        data={"content": "and this one", "request_id": "req-multipart"},
        files=[("files", ("data.csv", b"a,b\n1,2\n", "text/csv"))],
    )
    assert reply.status_code == 202, reply.text
    run = server.wait_final(agent["id"], "req-multipart")
    assert "file .forge/attachments/req-multipart/data.csv 8 a,b" in "\n".join(_outputs(run))

    # Limits: each refusal names the limit and the setting.
    too_big = server.http.post(
        messages,
        json={
            "content": "x",
            "attachments": [{"name": "a.bin", "content_base64": _b64(b"x" * 1001)}],
        },
    )
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["error"] == "attachment_too_large"
    assert "max_file_bytes" in too_big.json()["message"]
    together = [{"name": f"f{i}.bin", "content_base64": _b64(b"x" * 800)} for i in range(2)]
    too_much = server.http.post(messages, json={"content": "x", "attachments": together})
    assert too_much.status_code == 413 and "max_total_bytes" in too_much.json()["message"]
    many = [{"name": f"f{i}.txt", "content_base64": _b64(b"x")} for i in range(4)]
    too_many = server.http.post(messages, json={"content": "x", "attachments": many})
    assert too_many.status_code == 422 and "max_files" in too_many.json()["message"]
    bad = server.http.post(
        messages, json={"content": "x", "attachments": [{"name": "a", "content_base64": "%%"}]}
    )
    assert bad.status_code == 422 and "base64" in bad.json()["message"]
    sneaky = server.http.post(
        messages,
        json={"content": "x", "attachments": [{"name": "../up.txt", "content_base64": _b64(b"x")}]},
    )
    assert sneaky.status_code == 422 and "attachments.0.name" in sneaky.json()["message"]
    unknown_field = server.http.post(messages, data={"content": "x", "colour": "red"})
    assert unknown_field.status_code == 422 and "colour" in unknown_field.json()["message"]
    # A request id is not a path: one with "/" and ".." stays inside the workspace.
    reply = server.http.post(
        messages,
        json={
            "content": "x",
            "request_id": "a/../../../escape",
            "attachments": [{"name": "evil.txt", "content_base64": _b64(b"evil")}],
        },
    )
    assert reply.status_code == 202, reply.text
    run = server.wait_final(agent["id"], "a/../../../escape")
    assert run[-1]["outcome"] == "succeeded"
    assert "file .forge/attachments/a__________escape/evil.txt 4 evil" in _outputs(run)
    worktree = Path(agent["workspace_path"])
    assert not list(worktree.parent.parent.rglob("escape")), "written outside the workspace"

    # Nothing of that was queued; the agent still works.
    reply = server.http.post(messages, json={"content": "still fine"})
    assert server.wait_final(agent["id"], reply.json()["request_id"])[-1]["outcome"] == "succeeded"


def test_profiles_variants_agent_files_and_the_model_switch(
    forge_server: Any, tmp_path: Path
) -> None:
    os.environ["FORGE_SECRET_TOKEN"] = "platform-secret"
    try:
        server = _server(forge_server, tmp_path)
    finally:
        del os.environ["FORGE_SECRET_TOKEN"]

    listed = server.http.get("/api/v1/profiles").json()
    by_name = {p["name"]: p for p in listed["profiles"]}
    assert by_name["reviewer"]["model"] == "gpt-test"
    assert by_name["reviewer"]["source"].endswith("reviewer.md")
    assert "broken" not in by_name  # a broken file is skipped, not fatal
    assert "SHOWENV" in listed["executors"]["command"]
    assert set(listed["executors"]) >= {"claude_code", "opencode", "codex", "gemini", "forge"}

    # The Markdown body is the role's instructions: appended to every prompt.
    reviewer = server.create_agent(profile="reviewer")
    assert reviewer["model"] == "gpt-test"
    reply = server.http.post(
        f"/api/v1/agents/{reviewer['id']}/messages", json={"content": "check this"}
    )
    run = server.wait_final(reviewer["id"], reply.json()["request_id"])
    assert "You review code. Be brief." in "\n".join(_outputs(run))

    # The model switch holds for the next runs; null goes back to the profile's.
    patched = server.http.patch(f"/api/v1/agents/{reviewer['id']}", json={"model": "gpt-other"})
    assert patched.status_code == 200 and patched.json()["model"] == "gpt-other"
    assert server.http.get(f"/api/v1/agents/{reviewer['id']}").json()["model"] == "gpt-other"
    reset = server.http.patch(f"/api/v1/agents/{reviewer['id']}", json={"model": None})
    assert reset.json()["model"] == "gpt-test"
    bad_model = server.http.patch(f"/api/v1/agents/{reviewer['id']}", json={"model": "a b"})
    assert bad_model.status_code == 422

    # executor + variant instead of a profile; the platform's environment does not leak.
    showenv = server.create_agent(executor="command", variant="showenv")
    assert showenv["executor"] == "command" and showenv["variant"] == "SHOWENV"
    reply = server.http.post(f"/api/v1/agents/{showenv['id']}/messages", json={"content": "x"})
    run = server.wait_final(showenv["id"], reply.json()["request_id"])
    assert _outputs(run) == ["forge=unset anthropic=unset"]

    # Unknown executor or variant: 422 naming the ones that exist.
    unknown = server.http.post("/api/v1/agents", json={"owner_id": "a", "executor": "cursor"})
    assert unknown.status_code == 422 and unknown.json()["error"] == "unknown_executor"
    assert "claude_code" in unknown.json()["message"] and "opencode" in unknown.json()["message"]
    variant = server.http.post(
        "/api/v1/agents", json={"owner_id": "a", "executor": "command", "variant": "NOPE"}
    )
    assert variant.status_code == 422 and variant.json()["error"] == "unknown_variant"
    assert "DEFAULT" in variant.json()["message"] and "SHOWENV" in variant.json()["message"]
    both = server.http.post(
        "/api/v1/agents", json={"owner_id": "a", "profile": "lister", "executor": "command"}
    )
    assert both.status_code == 422


def test_credentials_reach_only_their_own_executor(forge_server: Any, tmp_path: Path) -> None:
    """ANTHROPIC_API_KEY in the platform's environment reaches a claude_code run alone; a
    command run does not see it (its kind declares no credentials)."""
    from forge.config import Settings
    from forge.core.profiles import ProfileCatalog

    settings = Settings(
        data_dir=tmp_path,
        profiles=json.loads(
            '{"claude": {"executor": "claude_code", "env": {"ANTHROPIC_BASE_URL": "http://x"}},'
            ' "plain": {"executor": "command", "command": "env"}}'
        ),
    )
    catalog = ProfileCatalog(settings)
    parent = {"ANTHROPIC_API_KEY": "sk-test", "OPENAI_API_KEY": "sk-openai", "HOME": "/root"}
    assert catalog.get("claude").credentials(parent) == {
        "ANTHROPIC_API_KEY": "sk-test",
        "ANTHROPIC_BASE_URL": "http://x",
    }
    assert catalog.get("plain").credentials(parent) == {}
