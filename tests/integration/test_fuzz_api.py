"""schemathesis against the running server's own OpenAPI document: no 5xx, and every answer
(status, content type, headers, body) is one the document declares; input the document calls
invalid gets a 4xx; and the server keeps serving afterwards.

Bounded for CI: `MAX_EXAMPLES` generated requests per operation and phase, stateless (no link
following). Auth is on: requests carry an owner's key, the admin-only routes the admin key.
Seeded objects (an agent on a real git worktree, a task) stand in for some generated ids
(`fuzz_hooks.py`), so the routes behind an id are reached, not only their 404.

schemathesis runs as its command-line tool, `st run`, in a subprocess: its pytest plugin does
not work with the pytest used here (it reads `Item._nodeid`, gone in pytest 9.2); on a
failure the test shows the tool's report, with a `curl` line for each failing request.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import ForgeServer, make_repository

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# Per operation and phase; a deeper run (nightly, or by hand): FUZZ_MAX_EXAMPLES=500.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "12"))
ADMIN_KEY = "fuzz-admin-key-0123456789abcdef"
OWNER = "alice"
SERVER_CONFIG = """
[sandbox]
runtime = "local"

[auth]
enabled = true
# Thousands of requests in a minute: the rate limit would answer most of them 429, and the
# fuzzer's tries without a valid key would shut its address out of every later request.
rate_limit_per_minute = 0
failed_auth_per_minute = 1000000
failed_auth_burst = 1000000
"""
HOOKS = Path(__file__).with_name("fuzz_hooks.py")
# Reached with the admin key: an owner's key gets 403 from them and nothing else.
ADMIN_PATHS = ["/api/v1/keys", "/api/v1/keys/{key_id}", "/api/v1/worktrees/cleanup"]
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    # Input the document calls invalid gets a 4xx.
    "negative_data_rejection",
    # A method the path does not have gets 405 with `Allow`.
    "unsupported_method",
]
# What counts as refusing invalid input: schemathesis's list, and 413 (a body over the size
# limit is refused before it is read, whatever else is wrong with it).
REJECTIONS = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
# Not checked: `positive_data_acceptance` (schema-valid input must succeed). Some rules span
# fields or depend on the server's state and cannot be said in JSON Schema (`profile` or
# `executor`, not both; a profile that exists; an agent that is not busy); those answers are
# 4xx with a message, which the checks above hold to the document.
# Not reached: `WS /api/v1/agents/{id}/stream` (WebSocket routes are not in OpenAPI); the SSE
# form of `GET .../events` in practice (only an `Accept` naming text/event-stream selects it,
# which a generated string almost never does; that stream does not end by itself, and
# test_streams.py covers it).


@dataclass
class Seeded:
    server: ForgeServer
    owner_key: str
    agent_id: str
    task_id: str


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    root = tmp_path_factory.mktemp("fuzz")
    repo = make_repository(root / "repo")
    (root / "server").mkdir()
    server = ForgeServer(root / "server", SERVER_CONFIG, env={"FORGE_API_KEY": ADMIN_KEY})
    try:
        server.start()
        created = server.http.post(
            "/api/v1/keys",
            json={"owner_id": OWNER, "name": "fuzz"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert created.status_code == 201, created.text
        owner_key = created.json()["key"]
        server.http.headers["Authorization"] = f"Bearer {owner_key}"
        agent = server.create_agent(repo=str(repo))
        # An uncommitted file, so the diff and files routes have something to show.
        (Path(agent["workspace_path"]) / "notes.md").write_text("# notes\n")
        task = server.http.post("/api/v1/tasks", json={"title": "seeded", "prompt": "hello"})
        assert task.status_code == 201, task.text
        yield Seeded(server, owner_key, agent["id"], task.json()["task_id"])
    finally:
        server.close()


def _schemathesis_config(seeded: Seeded) -> str:
    """`schemathesis.toml` for the run (TOML accepts JSON strings and arrays as they are)."""
    owner = json.dumps(f"Bearer {seeded.owner_key}")
    admin = json.dumps(f"Bearer {ADMIN_KEY}")
    checks = "\n".join(f"checks.{name}.enabled = true" for name in CHECKS)
    return f"""
headers = {{ Authorization = {owner} }}
request-timeout = 30
generation.max-examples = {MAX_EXAMPLES}
generation.database = "none"
phases.stateful.enabled = false
checks.enabled = false
{checks}
checks.negative_data_rejection.expected-statuses = {json.dumps(REJECTIONS)}

[[operations]]
include-path = {json.dumps(ADMIN_PATHS)}
headers = {{ Authorization = {admin} }}
"""


def test_schemathesis_finds_no_server_error_and_no_undeclared_answer(
    seeded: Seeded, tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_schemathesis_config(seeded))
    env = {
        "SCHEMATHESIS_HOOKS": str(HOOKS),
        "FUZZ_AGENT_ID": seeded.agent_id,
        "FUZZ_TASK_ID": seeded.task_id,
        # `fk_<id>_<secret>` is the key of row `key_<id>`.
        "FUZZ_KEY_ID": "key_" + seeded.owner_key.split("_")[1],
        "FUZZ_OWNER": OWNER,
        "PATH": "/usr/bin:/bin",
        "NO_COLOR": "1",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "run",
            f"{seeded.server.base_url}/openapi.json",
            "--no-color",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    # Lines cut short: a `curl` line repeats the whole request body, megabytes at times.
    report = "\n".join(line[:400] for line in (result.stdout + result.stderr).splitlines())
    print(report)  # shown with `pytest -rP`
    assert result.returncode == 0, (
        f"{report}\n--- server log (end) ---\n{seeded.server.log()[-4000:]}"
    )
    # Every operation was tested: one skipped (say, for a schema problem) would pass quietly.
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    tested = re.search(r"Tested: (\d+)", report)
    assert selected and tested, report
    assert selected[1] == selected[2] == tested[1], report


def test_the_server_keeps_serving_after_the_fuzzing(seeded: Seeded) -> None:
    server = seeded.server
    health = server.http.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok", health.json()
    agent_id = server.create_agent()["id"]
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "still here"})
    assert reply.status_code == 202, reply.text
    events = server.wait_final(agent_id, reply.json()["request_id"])
    assert events[-1]["event_type"] == "agent.complete", events[-1]
    assert events[-1]["outcome"] == "succeeded", events[-1]
    # The `default` profile is `cat`: the message comes back as the agent's output.
    assert "still here" in json.dumps(events[:-1]), events
