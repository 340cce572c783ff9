"""Secrets end to end through a real `forge serve`: credentials planted in forge.toml and in the
platform's environment, printed by agents in every shape (alone, in a longer line, inside JSON,
on stderr), appear nowhere (server log, runner logs, events, SSE, transcripts, webhooks, API
answers, the database's files), `[redacted]` stands where they were printed, a webhook secret is
never echoed, and one profile's credentials never reach another profile's executor."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge.core.redaction import REDACTED
from tests.integration.conftest import ForgeServer, WebhookReceiver

pytestmark = pytest.mark.integration

PROFILE_SECRET = "svc-token-4f1c9a7e2b6d0358"
VARIANT_SECRET = "variant-key-90b1e2c3d4f5a6"
PLATFORM_SECRET = "sk-ant-platform-7d3e5f1a9c2b4e6"
WEBHOOK_SECRET = "whk-secret-c0ffee15deadbeef99"
SECRETS = (PROFILE_SECRET, VARIANT_SECRET, PLATFORM_SECRET, WEBHOOK_SECRET)

# Prints the profile's credential alone, inside a longer line, inside a JSON event (entry text,
# a nested field, the executor's session id) and on stderr, then fails.
LEAK_JSON = json.dumps(
    {
        "type": "leak",
        "session_id": "sess-%s",
        "entry": {"kind": "assistant_message", "text": "json %s"},
        "nested": {"headers": ["Bearer %s"]},
    }
)
LEAKY = f"""
cat > /dev/null
echo "$SERVICE_TOKEN"
echo "calling the API with token=$SERVICE_TOKEN (do not share)"
printf '{LEAK_JSON}\\n' "$SERVICE_TOKEN" "$SERVICE_TOKEN" "$SERVICE_TOKEN"
echo "stderr $SERVICE_TOKEN" >&2
exit 3
"""

# With --fail: the CLI dies at once, its stderr quoting the key (the executor quotes the stderr
# of a CLI that ends without a result in the run's message, which the runner logs).
FAKE_CLAUDE_FAILING = """#!/bin/sh
if [ "$1" = --fail ]; then
    echo "auth failed for key $ANTHROPIC_API_KEY" >&2
    exit 1
fi
"""
# Stands in for the `claude` CLI (a paid model API cannot run here): prints stream-json that
# quotes the ANTHROPIC_API_KEY it got from the platform's environment.
CLAUDE_LINES = [
    {"type": "system", "subtype": "init", "session_id": "fake-1", "model": "fake"},
    {
        "type": "assistant",
        "session_id": "fake-1",
        "message": {
            "id": "m1",
            "type": "message",
            "role": "assistant",
            "model": "fake",
            "content": [{"type": "text", "text": "my key is %s"}],
        },
    },
    {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "done",
        "session_id": "fake-1",
        "num_turns": 1,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    },
]
FAKE_CLAUDE = FAKE_CLAUDE_FAILING + "".join(
    f"printf '{json.dumps(line)}\\n' \"$ANTHROPIC_API_KEY\"\n" for line in CLAUDE_LINES
)

CONFIG = """
[secrets]
redact_env = ["SECRETS_TEST_UNUSED"]

[executors.COMMAND.LEAKY]
command = 'cat > /dev/null; echo "variant says $VARIANT_TOKEN"'
env = {{ VARIANT_TOKEN = "{variant}" }}

[profiles.leaky]
executor = "command"
command = '''{leaky}'''
env = {{ SERVICE_TOKEN = "{profile}" }}

[profiles.claude]
executor = "claude_code"
command = "{fake_claude}"

[profiles.claude_failing]
executor = "claude_code"
command = "{fake_claude} --fail"

[profiles.snoop]
executor = "command"
command = "cat > /dev/null; env"
"""


@pytest.fixture
def platform_credential() -> Iterator[None]:
    """ANTHROPIC_API_KEY in the environment the server starts with (it copies os.environ)."""
    previous = os.environ.get("ANTHROPIC_API_KEY")
    os.environ["ANTHROPIC_API_KEY"] = PLATFORM_SECRET
    yield
    if previous is None:
        del os.environ["ANTHROPIC_API_KEY"]
    else:
        os.environ["ANTHROPIC_API_KEY"] = previous


def _server(forge_server: Any, tmp_path: Path) -> ForgeServer:
    fake = tmp_path / "bin" / "fake-claude"
    fake.parent.mkdir()
    fake.write_text(FAKE_CLAUDE)
    fake.chmod(0o755)
    config = CONFIG.format(
        variant=VARIANT_SECRET, leaky=LEAKY, profile=PROFILE_SECRET, fake_claude=fake
    )
    server: ForgeServer = forge_server(config)
    return server


def _texts(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["entry"].get("text", "")
        for e in events
        if e["event_type"] == "agent.event" and e["entry"]
    ]


def _send(
    server: ForgeServer, agent_id: str, answers: list[str] | None = None, **body: Any
) -> list[dict[str, Any]]:
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "go", **body})
    assert reply.status_code == 202, reply.text
    if answers is not None:
        answers.append(reply.text)
    return server.wait_final(agent_id, reply.json()["request_id"])


def _sse(server: ForgeServer, agent_id: str, last_seq: int) -> str:
    """The SSE stream of the agent, read until the event with `last_seq`."""
    seen = b""
    with server.http.stream(
        "GET", f"/api/v1/agents/{agent_id}/events", headers={"accept": "text/event-stream"}
    ) as response:
        for chunk in response.iter_raw():
            seen += chunk
            if f"id: {last_seq}\n".encode() in seen:
                break
    return seen.decode()


def _files_holding(folder: Path, secret: str) -> list[Path]:
    return [
        path
        for path in folder.rglob("*")
        if path.is_file() and not path.is_socket() and secret.encode() in path.read_bytes()
    ]


def test_planted_secrets_appear_nowhere(
    forge_server: Any, tmp_path: Path, receiver: WebhookReceiver, platform_credential: None
) -> None:
    server = _server(forge_server, tmp_path)
    answers: list[str] = []  # every API answer, to search at the end

    # A profile's credential, printed every way, with a webhook that has a secret.
    leaky = server.create_agent(profile="leaky")
    leaky_run = _send(
        server, leaky["id"], answers, webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET
    )
    assert leaky_run[-1]["event_type"] == "agent.complete" and leaky_run[-1]["outcome"] == "failed"
    texts = _texts(leaky_run)
    # The marker stands where the agent printed the secret (so the agent did print it).
    assert REDACTED in texts
    assert f"calling the API with token={REDACTED} (do not share)" in texts
    assert f"json {REDACTED}" in texts
    assert f"stderr {REDACTED}" in texts
    raw = next(e["event"] for e in leaky_run if e["executor_event_type"] == "leak")
    assert raw["nested"] == {"headers": [f"Bearer {REDACTED}"]}
    assert raw["session_id"] == f"sess-{REDACTED}"

    # An `[executors.COMMAND.VARIANT]` credential.
    variant = server.create_agent(executor="command", variant="leaky")
    assert _texts(_send(server, variant["id"])) == [f"variant says {REDACTED}"]

    # A credential from the platform's environment reaches the claude_code executor (whose kind
    # reads it) and is redacted from what it prints.
    claude = server.create_agent(profile="claude")
    claude_run = _send(server, claude["id"])
    assert claude_run[-1]["outcome"] == "succeeded", claude_run[-1]
    assert f"my key is {REDACTED}" in _texts(claude_run)

    failing = server.create_agent(profile="claude_failing")
    failed = _send(server, failing["id"])
    assert failed[-1]["outcome"] == "failed", failed[-1]
    assert f"auth failed for key {REDACTED}" in failed[-1]["message"]

    # Another profile sees none of those credentials in its environment.
    snoop = server.create_agent(profile="snoop")
    environment = "\n".join(_texts(_send(server, snoop["id"])))
    assert "PATH=" in environment
    for name in ("SERVICE_TOKEN", "VARIANT_TOKEN", "ANTHROPIC_API_KEY", REDACTED):
        assert name not in environment

    # The webhook got every event of the leaky run, signed, with no secret in it.
    receiver.wait_for(lambda reqs: len(reqs) >= len(leaky_run))
    assert any(REDACTED.encode() in r.body for r in receiver.requests)
    assert all("webhook-signature" in r.headers for r in receiver.requests)
    answers += [r.body.decode() + repr(r.headers) for r in receiver.requests]

    http = server.http
    agent_ids = [leaky["id"], variant["id"], claude["id"], failing["id"], snoop["id"]]
    for agent_id in agent_ids:
        events = http.get(f"/api/v1/agents/{agent_id}/events", params={"limit": 1000})
        answers.append(events.text)
        last_seq = events.json()["last_seq"]
        answers.append(_sse(server, agent_id, last_seq))
        for path in (
            f"/api/v1/agents/{agent_id}",
            f"/api/v1/agents/{agent_id}/deliveries",
            f"/api/v1/agents/{agent_id}/permissions",
            f"/api/v1/sessions/{agent_id}",
            f"/api/v1/sessions/{agent_id}/transcript",
            f"/api/v1/sessions/{agent_id}/transcript?format=markdown",
        ):
            answer = http.get(path)
            assert answer.status_code == 200, (path, answer.text)
            answers.append(answer.text)
    transcript = http.get(f"/api/v1/sessions/{leaky['id']}/transcript?format=markdown").text
    assert REDACTED in transcript
    for path in (
        "/api/v1/agents",
        "/api/v1/sessions",
        "/api/v1/profiles",
        "/api/v1/tasks",
        "/api/v1/health",
        "/healthz",
        "/readyz",
    ):
        answer = http.get(path)
        assert answer.status_code in (200, 404), (path, answer.text)
        answers.append(answer.text)

    for secret in SECRETS:
        for answer in answers:
            assert secret not in answer
        assert secret not in server.log()

    # Nothing Forge wrote holds a credential: the database and its WAL, the runners' logs and
    # state. (The webhook secret is kept in the database, to sign retries.)
    server.stop()
    for secret in (PROFILE_SECRET, VARIANT_SECRET, PLATFORM_SECRET):
        assert _files_holding(server.data_dir, secret) == []
    for secret in SECRETS:
        assert secret not in server.log()
    assert list(server.data_dir.rglob("forge.db*"))


def test_a_refused_message_does_not_echo_its_webhook_secret(
    forge_server: Any,
) -> None:
    server: ForgeServer = forge_server()
    agent_id = server.create_agent()["id"]
    bad = server.http.post(
        f"/api/v1/agents/{agent_id}/messages",
        json={"content": 5, "webhook_url": "ftp://nowhere", "webhook_secret": WEBHOOK_SECRET},
    )
    assert bad.status_code == 422
    assert WEBHOOK_SECRET not in bad.text
    assert WEBHOOK_SECRET not in server.log()
