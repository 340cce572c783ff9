"""Bad input gets a clear 4xx and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ForgeServer

pytestmark = pytest.mark.integration

UNKNOWN_AGENT = "ag_00000000000000000000000000"


def _error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


def test_bad_input_is_refused_clearly_and_the_server_keeps_serving(
    forge_server: Any, git_repo: Path, tmp_path: Path
) -> None:
    server: ForgeServer = forge_server()
    http = server.http
    agent_id = server.create_agent(owner_id="alice")["id"]
    messages = f"/api/v1/agents/{agent_id}/messages"

    # Malformed JSON.
    message = _error(
        http.post(
            messages, content=b'{"content": "x"', headers={"content-type": "application/json"}
        ),
        400,
        "invalid_json",
    )
    assert "JSON" in message
    _error(
        http.post(
            "/api/v1/agents", content=b"not json", headers={"content-type": "application/json"}
        ),
        400,
        "invalid_json",
    )

    # Missing or empty content, unknown fields, wrong types.
    assert "content" in _error(http.post(messages, json={}), 422, "invalid_request")
    assert "content" in _error(http.post(messages, json={"content": ""}), 422, "invalid_request")
    assert "colour" in _error(
        http.post(messages, json={"content": "x", "colour": 1}), 422, "invalid_request"
    )
    assert "owner_id" in _error(http.post("/api/v1/agents", json={}), 422, "invalid_request")

    # Text that is not valid Unicode (lone surrogates), JSON nested too deep, huge numbers.
    lone = b'"\\ud800"'
    for field, body in (
        ("content", b'{"content": ' + lone + b"}"),
        ("webhook_secret", b'{"content": "x", "webhook_secret": ' + lone + b"}"),
    ):
        assert field in _error(
            http.post(messages, content=body, headers={"content-type": "application/json"}),
            422,
            "invalid_request",
        )
    assert "surrogate" in _error(
        http.post(
            "/api/v1/agents",
            content=b'{"owner_id": "a", "metadata": {"k": ' + lone + b"}}",
            headers={"content-type": "application/json"},
        ),
        422,
        "invalid_request",
    )
    deep = b'{"content": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    _error(
        http.post(messages, content=deep, headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    _error(
        http.get(f"/api/v1/agents/{agent_id}/events", params={"after": 10**20}),
        422,
        "invalid_request",
    )

    # Unknown agent, and another owner's agent: 404 for every route.
    for path in (f"/api/v1/agents/{UNKNOWN_AGENT}/messages",):
        _error(http.post(path, json={"content": "x"}), 404, "agent_not_found")
    _error(http.get(f"/api/v1/agents/{UNKNOWN_AGENT}"), 404, "agent_not_found")
    _error(http.get(f"/api/v1/agents/{UNKNOWN_AGENT}/events"), 404, "agent_not_found")
    _error(http.post(f"/api/v1/agents/{UNKNOWN_AGENT}/interrupt"), 404, "agent_not_found")
    _error(http.delete(f"/api/v1/agents/{UNKNOWN_AGENT}"), 404, "agent_not_found")
    bob = {"user_id": "bob"}
    _error(http.get(f"/api/v1/agents/{agent_id}", params=bob), 404, "agent_not_found")
    _error(http.post(messages, params=bob, json={"content": "x"}), 404, "agent_not_found")
    _error(http.get(f"/api/v1/agents/{agent_id}/events", params=bob), 404, "agent_not_found")
    _error(
        http.get(
            f"/api/v1/agents/{agent_id}/events", params=bob, headers={"accept": "text/event-stream"}
        ),
        404,
        "agent_not_found",
    )
    _error(http.post(f"/api/v1/agents/{agent_id}/interrupt", params=bob), 404, "agent_not_found")
    _error(http.delete(f"/api/v1/agents/{agent_id}", params=bob), 404, "agent_not_found")
    assert http.get("/api/v1/agents", params=bob).json() == {
        "agents": [],
        "total": 0,
        "next_cursor": None,
    }

    # Unknown profile; a repo that is not a git repository; a bad base_ref.
    assert "nope" in _error(
        http.post("/api/v1/agents", json={"owner_id": "a", "profile": "nope"}),
        422,
        "unknown_profile",
    )
    plain_dir = tmp_path / "not-a-repo"
    plain_dir.mkdir()
    assert "not a git repository" in _error(
        http.post("/api/v1/agents", json={"owner_id": "a", "repo": str(plain_dir)}),
        422,
        "invalid_repo",
    )
    _error(
        http.post("/api/v1/agents", json={"owner_id": "a", "repo": str(tmp_path / "missing")}),
        422,
        "invalid_repo",
    )
    _error(
        http.post("/api/v1/agents", json={"owner_id": "a", "repo": "relative/path"}),
        422,
        "invalid_repo",
    )
    # A NUL (which PostgreSQL cannot store) or another control character in a path or ref.
    for field in ("repo", "base_ref"):
        assert "control characters" in _error(
            http.post("/api/v1/agents", json={"owner_id": "a", field: "/srv/re\x00po"}),
            422,
            "invalid_request",
        )
    assert "control characters" in _error(
        http.post(
            "/api/v1/tasks",
            json={
                "owner_id": "a",
                "title": "t",
                "prompt": "p",
                "repo": str(git_repo),
                "base_branch": "main\n",
            },
        ),
        422,
        "invalid_request",
    )
    assert "no-such-branch" in _error(
        http.post(
            "/api/v1/agents",
            json={"owner_id": "a", "repo": str(git_repo), "base_ref": "no-such-branch"},
        ),
        422,
        "invalid_base_ref",
    )

    # Webhook URLs that cannot be used; bad query values; a body over the limit.
    _error(
        http.post(messages, json={"content": "x", "webhook_url": "ftp://example.com/x"}),
        422,
        "invalid_webhook_url",
    )
    # Pagination bounds and identifier formats, each named in the answer.
    _error(http.get("/api/v1/agents", params={"limit": 0}), 422, "invalid_request")
    assert "limit" in _error(
        http.get("/api/v1/sessions", params={"limit": 501}), 422, "invalid_request"
    )
    assert "cursor" in _error(
        http.get("/api/v1/tasks", params={"cursor": "../etc"}), 422, "invalid_request"
    )
    assert "task_id" in _error(http.get("/api/v1/tasks/tk_NOPE"), 422, "invalid_request")
    assert "key_id" in _error(http.delete("/api/v1/keys/root"), 422, "invalid_request")
    assert "request_id" in _error(
        http.post(messages, json={"content": "x", "request_id": "a b"}), 422, "invalid_request"
    )
    _error(
        http.get(f"/api/v1/agents/{agent_id}/events", params={"after": -1}), 422, "invalid_request"
    )
    _error(http.get("/api/v1/agents/bad id!"), 422, "invalid_request")
    # Bodies are capped at 2 MiB (messages: more, for attachments; their text by length).
    create = "/api/v1/agents"
    _error(http.post(create, json={"owner_id": "x" * (3 * 1024 * 1024)}), 413, "body_too_large")
    assert "1000000 characters" in _error(
        http.post(messages, json={"content": "x" * (3 * 1024 * 1024)}), 422, "invalid_request"
    )
    _error(http.post("/api/v1/agents", json={"owner_id": "has space"}), 422, "invalid_request")

    def chunked_body() -> Iterator[bytes]:  # no content-length: the limit applies while reading
        yield b'{"owner_id": "'
        for _ in range(3 * 1024):
            yield b"x" * 1024
        yield b'"}'

    _error(
        http.post(create, content=chunked_body(), headers={"content-type": "application/json"}),
        413,
        "body_too_large",
    )

    # Nothing was created by any of this, and the server still serves.
    assert http.get("/api/v1/agents").json()["total"] == 1
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["database"]["status"] == "ok"
    assert health["agents"]["ready"] == 1
    reply = http.post(messages, json={"content": "still here"})
    assert reply.status_code == 202
    events = server.wait_final(agent_id, reply.json()["request_id"])
    assert events[-1]["outcome"] == "succeeded"


def test_private_webhook_urls_are_refused_by_default(forge_server: Any) -> None:
    server: ForgeServer = forge_server()
    # This server's config allows private URLs (the tests' receiver is on loopback); a second
    # server with the default setting refuses them.
    strict_root = server.root.parent / "strict"
    strict_root.mkdir()
    strict = ForgeServer(strict_root)
    strict.config_path.write_text(
        strict.config_path.read_text().replace("allow_private = true", "allow_private = false")
    )
    strict.start()
    try:
        agent_id = strict.create_agent()["id"]
        for url in (
            "http://127.0.0.1:9/hook",
            "http://10.1.2.3/hook",
            "http://169.254.169.254/latest/meta-data",
        ):
            reply = strict.http.post(
                f"/api/v1/agents/{agent_id}/messages", json={"content": "x", "webhook_url": url}
            )
            _error(reply, 422, "invalid_webhook_url")
    finally:
        strict.stop()
        strict.kill_runners()
        strict.http.close()
