"""API keys on a real server: every route of the OpenAPI document needs a key, and a second
owner's key reaches none of the first owner's objects."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from forge.sandbox.base import Sandbox
from tests.integration.conftest import ForgeServer, WebhookReceiver, wait_for
from tests.support.sandboxes import assert_refuses_a_wrong_token

pytestmark = pytest.mark.integration

ADMIN_KEY = "forge-admin-" + "k" * 32
AUTH = """
[auth]
enabled = true
rate_limit_per_minute = 6000
rate_limit_burst = 1000
failed_auth_per_minute = 100000
failed_auth_burst = 100000
"""
# Reachable without a key, and what they answer then.
PUBLIC = {
    ("GET", "/healthz"): 200,
    ("GET", "/readyz"): 200,
    # The dashboard's sign-in: whether one is signed in, signing in (with a wrong key here),
    # signing out.
    ("GET", "/api/v1/dashboard/session"): 200,
    ("POST", "/api/v1/dashboard/session"): 401,
    ("DELETE", "/api/v1/dashboard/session"): 204,
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_key(server: ForgeServer, owner: str) -> dict[str, Any]:
    reply = server.http.post(
        "/api/v1/keys", json={"owner_id": owner, "name": "test"}, headers=bearer(ADMIN_KEY)
    )
    assert reply.status_code == 201, reply.text
    key: dict[str, Any] = reply.json()
    return key


def start(forge_server: Any, extra: str = "") -> ForgeServer:
    server: ForgeServer = forge_server(AUTH + extra, env={"FORGE_API_KEY": ADMIN_KEY})
    return server


@dataclass
class Case:
    """What a route answers bob when it names alice's objects (`expect`), with a body that is
    valid, so the answer is about ownership and not about the body."""

    expect: int
    body: Any = None
    params: dict[str, Any] = field(default_factory=dict)


# Every route of the document: a new route fails the walk until it is listed here.
ROUTES: dict[tuple[str, str], Case] = {
    ("POST", "/api/v1/agents"): Case(403, body={"owner_id": "alice"}),
    ("GET", "/api/v1/agents"): Case(200),
    ("GET", "/api/v1/agents/{agent_id}"): Case(404),
    ("PATCH", "/api/v1/agents/{agent_id}"): Case(404, body={"model": None}),
    ("DELETE", "/api/v1/agents/{agent_id}"): Case(404),
    ("POST", "/api/v1/agents/{agent_id}/messages"): Case(404, body={"content": "hijack"}),
    ("POST", "/api/v1/agents/{agent_id}/interrupt"): Case(404, body={}),
    ("GET", "/api/v1/agents/{agent_id}/permissions"): Case(404),
    ("POST", "/api/v1/agents/{agent_id}/permissions/{permission_id}"): Case(
        404, body={"decision": "once"}
    ),
    ("GET", "/api/v1/profiles"): Case(200),
    ("GET", "/api/v1/agents/{agent_id}/events"): Case(404),
    ("GET", "/api/v1/agents/{agent_id}/deliveries"): Case(404),
    ("POST", "/api/v1/deliveries/{delivery_id}/redeliver"): Case(404),
    ("GET", "/api/v1/worktrees"): Case(200),
    ("DELETE", "/api/v1/worktrees/cleanup"): Case(403, params={"older_than_hours": 0}),
    ("GET", "/api/v1/sessions/{agent_id}/diff"): Case(404),
    ("GET", "/api/v1/sessions/{agent_id}/files"): Case(404, params={"path": "README.md"}),
    ("POST", "/api/v1/sessions/{agent_id}/merge"): Case(404, body={}),
    ("GET", "/api/v1/sessions"): Case(200),
    ("GET", "/api/v1/sessions/{agent_id}"): Case(404),
    ("GET", "/api/v1/sessions/{agent_id}/transcript"): Case(404),
    ("POST", "/api/v1/sessions/{agent_id}/resume"): Case(404, body={"prompt": "hijack"}),
    ("POST", "/api/v1/sessions/{agent_id}/stop"): Case(404),
    ("POST", "/api/v1/tasks"): Case(403, body={"title": "t", "prompt": "p", "owner_id": "alice"}),
    ("GET", "/api/v1/tasks"): Case(200),
    ("GET", "/api/v1/tasks/{task_id}"): Case(404),
    ("POST", "/api/v1/keys"): Case(403, body={"owner_id": "bob"}),
    ("GET", "/api/v1/keys"): Case(403),
    # Bob's own neuron (made by his message), never alice's.
    ("GET", "/api/v1/neurons"): Case(200),
    ("GET", "/api/v1/neurons/{name}"): Case(200),
    ("POST", "/api/v1/neurons/{name}/messages"): Case(202, body={"content": "mine"}),
    ("DELETE", "/api/v1/keys/{key_id}"): Case(403),
    ("GET", "/health"): Case(200),
    # Bob's own numbers (checked below), never alice's.
    ("GET", "/api/v1/status"): Case(200),
    ("GET", "/api/v1/analytics"): Case(200),
    ("GET", "/api/v1/dashboard/session"): Case(200),
    # Signing in with alice's key is signing in as alice: a key is the whole credential.
    ("POST", "/api/v1/dashboard/session"): Case(401, body={"key": "fk_not-a-key"}),
    ("DELETE", "/api/v1/dashboard/session"): Case(204),
    ("GET", "/healthz"): Case(200),
    ("GET", "/readyz"): Case(200),
}


def queries(server: ForgeServer) -> dict[tuple[str, str], set[str]]:
    """Every operation of the server's OpenAPI document, with its query parameters."""
    doc = server.http.get("/openapi.json").json()
    return {
        (method.upper(), path): {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }


def test_every_route_needs_a_key_and_another_owners_objects_are_not_found(
    forge_server: Any, git_repo: Path, receiver: WebhookReceiver
) -> None:
    server = start(forge_server)
    alice, bob = make_key(server, "alice"), make_key(server, "bob")
    as_alice = httpx.Client(base_url=server.base_url, headers=bearer(alice["key"]), timeout=30)
    as_bob = httpx.Client(base_url=server.base_url, headers=bearer(bob["key"]), timeout=30)

    # Alice's objects: an agent on a repository (no owner_id sent: the key says whose it is),
    # a run with a webhook delivery, a task, a key.
    created = as_alice.post("/api/v1/agents", params={"wait": "true"}, json={"repo": str(git_repo)})
    assert created.status_code == 201, created.text
    agent = created.json()
    assert agent["owner_id"] == "alice"
    sent = as_alice.post(
        f"/api/v1/agents/{agent['id']}/messages",
        json={"content": "hello", "webhook_url": receiver.url, "webhook_secret": "whsec_test"},
    )
    assert sent.status_code == 202, sent.text
    receiver.wait_for(lambda got: any(r.json["is_final"] for r in got))
    deliveries = as_alice.get(f"/api/v1/agents/{agent['id']}/deliveries").json()["deliveries"]
    task = as_alice.post("/api/v1/tasks", json={"title": "t", "prompt": "p"})
    assert task.status_code == 201, task.text
    neuron = as_alice.post("/api/v1/neurons/wish/messages", json={"content": "a wish"})
    assert neuron.status_code == 202, neuron.text
    values = {
        "agent_id": agent["id"],
        "task_id": task.json()["task_id"],
        "delivery_id": deliveries[0]["id"],
        "permission_id": "perm_1",
        "key_id": alice["key_id"],
        "name": "wish",
    }
    alices = [agent["id"], values["task_id"], values["delivery_id"], neuron.json()["agent_id"]]

    takes_query = queries(server)
    assert set(takes_query) == set(ROUTES), "routes without a case: update ROUTES"
    for method, path in takes_query:
        case = ROUTES[(method, path)]
        url = path.format(**values)
        where = f"{method} {path}"
        payload = {} if case.body is None else {"json": case.body}

        anonymous = httpx.request(method, server.base_url + url, params=case.params, **payload)
        forged = httpx.request(
            method,
            server.base_url + url,
            params=case.params,
            headers=bearer("fk_" + "0" * 26 + "_" + "0" * 64),
            **payload,
        )
        if (method, path) in PUBLIC:
            assert anonymous.status_code == PUBLIC[(method, path)], where
            continue
        assert anonymous.status_code == 401, f"{where}: {anonymous.text}"
        assert anonymous.json()["error"] == "missing_api_key"
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert forged.status_code == 401 and forged.json()["error"] == "invalid_api_key", where
        # Bob's key id with alice's secret is no key either.
        spliced = bob["key"].rsplit("_", 1)[0] + "_" + alice["key"].rsplit("_", 1)[1]
        mixed = httpx.request(
            method, server.base_url + url, params=case.params, headers=bearer(spliced), **payload
        )
        assert mixed.status_code == 401, where

        answer = as_bob.request(method, url, params=case.params, **payload)
        assert answer.status_code == case.expect, f"{where}: {answer.text}"
        if case.expect >= 400:
            assert answer.json()["message"], where
        else:
            # Nothing of alice's shows in what bob may read.
            assert not any(i in answer.text for i in alices), f"{where}: {answer.text}"
        if "user_id" in takes_query[(method, path)]:
            # Naming alice outright is refused, not quietly narrowed.
            named = as_bob.request(method, url, params={**case.params, "user_id": "alice"})
            assert named.status_code == 403, where
            assert named.json()["error"] == "owner_mismatch"

    # Bob's health shows his agents only (his neuron's); he cannot branch from alice's session
    # branch.
    assert as_bob.get("/health").json()["agents"]["total"] == 1
    assert as_alice.get("/health").json()["agents"]["total"] == 3
    # So do the dashboard's numbers.
    assert as_bob.get("/api/v1/status").json()["sessions"]["total"] == 1
    assert as_alice.get("/api/v1/status").json()["sessions"]["total"] == 3
    bob_runs = as_bob.get("/api/v1/analytics").json()["totals"]
    alice_runs = as_alice.get("/api/v1/analytics").json()["totals"]
    assert bob_runs["sessions"] == 1 and alice_runs["sessions"] == 3
    assert alice_runs["runs"] > bob_runs["runs"]
    branch = as_bob.post(
        "/api/v1/agents", json={"repo": str(git_repo), "base_ref": f"forge/{agent['id']}"}
    )
    assert branch.status_code == 422 and branch.json()["error"] == "invalid_base_ref"

    # Alice still has everything, and her key reaches it.
    assert as_alice.get(f"/api/v1/agents/{agent['id']}").json()["status"] != "deleted"
    assert as_alice.get(f"/api/v1/tasks/{values['task_id']}").status_code == 200
    assert as_alice.get(f"/api/v1/sessions/{agent['id']}/diff").status_code == 200
    mine = as_alice.get("/api/v1/sessions").json()
    assert [s["id"] for s in mine["sessions"]] == [
        neuron.json()["agent_id"],
        task.json()["session_id"],
        agent["id"],
    ]
    # The admin sees every owner's, or one owner's.
    admin = httpx.Client(base_url=server.base_url, headers=bearer(ADMIN_KEY), timeout=30)
    assert admin.get("/api/v1/agents", params={"user_id": "alice"}).json()["total"] == 3
    assert admin.get("/api/v1/agents", params={"user_id": "bob"}).json()["total"] == 1
    for client in (as_alice, as_bob, admin):
        client.close()


def ws_url(server: ForgeServer, agent_id: str, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/api/v1/agents/{agent_id}/stream{query}"


def test_streams_take_the_key_as_header_subprotocol_or_query(forge_server: Any) -> None:
    server = start(forge_server)
    alice, bob = make_key(server, "alice"), make_key(server, "bob")
    server.http.headers.update(bearer(alice["key"]))
    agent_id = server.create_agent(owner_id=None)["id"]
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "hi"})
    server.wait_final(agent_id, reply.json()["request_id"])

    # A header, or (as a browser must) a subprotocol with `forge` offered beside it.
    with connect(ws_url(server, agent_id), additional_headers=bearer(alice["key"])) as ws:
        assert json.loads(ws.recv(timeout=10))["seq"] == 1
    with connect(ws_url(server, agent_id), subprotocols=["forge", f"bearer.{alice['key']}"]) as ws:
        assert ws.subprotocol == "forge"
        assert json.loads(ws.recv(timeout=10))["seq"] == 1
    for headers, protocols, status in (
        ({}, None, 401),
        ({}, ["forge", "bearer.fk_nope"], 401),
        (bearer(bob["key"]), None, 404),
        ({}, ["forge", f"bearer.{bob['key']}"], 404),
    ):
        with pytest.raises(InvalidStatus) as refused:
            connect(
                ws_url(server, agent_id),
                additional_headers=headers,
                subprotocols=protocols,  # type: ignore[arg-type]
                open_timeout=5,
            )
        assert refused.value.response.status_code == status
        assert json.loads(refused.value.response.body)["message"]

    # EventSource cannot set headers: `access_token` in the query, kept out of the log.
    events = f"{server.base_url}/api/v1/agents/{agent_id}/events"
    sse = {"accept": "text/event-stream"}
    with httpx.stream(
        "GET", events, params={"access_token": alice["key"]}, headers=sse, timeout=10
    ) as stream:
        assert stream.status_code == 200
        first = next(line for line in stream.iter_lines() if line.startswith("data:"))
        assert json.loads(first[5:])["seq"] == 1
    refused_sse = httpx.get(events, params={"access_token": bob["key"]}, headers=sse)
    assert refused_sse.status_code == 404
    # Only streams take a key in the URL: it would end up in proxies' logs.
    in_url = httpx.post(
        f"{server.base_url}/api/v1/agents/{agent_id}/messages",
        params={"access_token": alice["key"]},
        json={"content": "x"},
    )
    assert in_url.status_code == 401 and in_url.json()["error"] == "missing_api_key"
    with connect(ws_url(server, agent_id, f"?access_token={alice['key']}")) as ws:
        assert json.loads(ws.recv(timeout=10))["seq"] == 1
    assert "access_token=[hidden]" in server.log()
    assert alice["key"] not in server.log() and bob["key"] not in server.log()


def test_a_revoked_key_stops_at_once_and_the_rate_limit_answers_429(forge_server: Any) -> None:
    limits = "\n[auth]\nenabled = true\nrate_limit_per_minute = 60\nrate_limit_burst = 5\n"
    server: ForgeServer = forge_server(limits, env={"FORGE_API_KEY": ADMIN_KEY})
    alice, bob = make_key(server, "alice"), make_key(server, "bob")
    as_alice = httpx.Client(base_url=server.base_url, headers=bearer(alice["key"]), timeout=30)
    as_bob = httpx.Client(base_url=server.base_url, headers=bearer(bob["key"]), timeout=30)

    answers = [as_alice.get("/api/v1/agents") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    limited = answers[-1]
    assert limited.json()["error"] == "rate_limited"
    assert "60 requests a minute" in limited.json()["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # Each key has its own allowance; probes have none to spend.
    assert as_bob.get("/api/v1/agents").status_code == 200
    assert all(server.http.get("/healthz").status_code == 200 for _ in range(10))
    wait_for(lambda: as_alice.get("/api/v1/agents").status_code == 200, timeout=5)

    revoked = server.http.delete(f"/api/v1/keys/{bob['key_id']}", headers=bearer(ADMIN_KEY))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    after = as_bob.get("/api/v1/agents")
    assert after.status_code == 401 and after.json()["error"] == "invalid_api_key"
    for client in (as_alice, as_bob):
        client.close()


def test_without_auth_forge_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env["FORGE_DATA_DIR"] = str(tmp_path / "data")
    refused = subprocess.run(
        [sys.executable, "-m", "forge", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert "authentication is off" in refused.stderr
    assert "allow_remote_without_auth" in refused.stderr


def test_cli_keys_create_list_revoke(forge_server: Any) -> None:
    server = start(forge_server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}

    def forge(*args: str, key: str = ADMIN_KEY) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "forge", *args, "--base-url", server.base_url],
            env={**env, "FORGE_API_KEY": key},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    created = forge("keys", "create", "--owner", "carol", "--name", "laptop")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("fk_") and "shown only now" in created.stderr
    listed = forge("keys", "list", "--json")
    [entry] = json.loads(listed.stdout)["keys"]
    assert entry["owner_id"] == "carol" and entry["name"] == "laptop" and key not in listed.stdout

    # Carol's key drives the CLI; it may not manage keys.
    assert forge("sessions", "list", key=key).returncode == 0
    denied = forge("keys", "list", key=key)
    assert denied.returncode == 1 and "admin_only" in denied.stderr

    revoked = forge("keys", "revoke", entry["key_id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    after = forge("sessions", "list", key=key)
    assert after.returncode == 1 and "invalid_api_key" in after.stderr
    wait_for(lambda: server.http.get("/healthz").status_code == 200)


async def test_a_runner_refuses_a_connection_without_its_token(forge_server: Any) -> None:
    """Something else on the host that finds a sandbox's socket cannot drive its runner."""
    server: ForgeServer = forge_server()
    agent_id = server.create_agent()["id"]
    with sqlite3.connect(server.data_dir / "forge.db") as db:
        [(raw,)] = db.execute("SELECT sandbox FROM agents WHERE id = ?", (agent_id,)).fetchall()
    sandbox = Sandbox.from_json(json.loads(raw))
    assert sandbox.address.startswith("unix:") and len(sandbox.token) >= 32
    await assert_refuses_a_wrong_token(sandbox)
    # The platform, which has the token, still drives it.
    reply = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": "still"})
    events = server.wait_final(agent_id, reply.json()["request_id"])
    assert events[-1]["outcome"] == "succeeded"


def test_an_open_stream_ends_when_its_key_is_revoked(forge_server: Any) -> None:
    server = start(forge_server, "\n[sse]\nkeepalive_seconds = 0.5\n")
    alice = make_key(server, "alice")
    server.http.headers.update(bearer(alice["key"]))
    agent_id = server.create_agent(owner_id=None)["id"]
    events = f"{server.base_url}/api/v1/agents/{agent_id}/events"
    headers = {"accept": "text/event-stream", **bearer(alice["key"])}
    with httpx.stream("GET", events, headers=headers, timeout=20) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        revoked = server.http.delete(f"/api/v1/keys/{alice['key_id']}", headers=bearer(ADMIN_KEY))
        assert revoked.status_code == 200
        # The server ends the stream (a read timeout would raise instead).
        rest = list(lines)
    assert all(not line.startswith("data:") for line in rest)
    assert httpx.get(events, headers=headers).status_code == 401


def test_repositories_are_limited_to_the_allowed_roots(
    forge_server: Any, git_repo: Path, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server = start(forge_server, f'\n[worktrees]\nallowed_repo_roots = ["{allowed}"]\n')
    alice = make_key(server, "alice")
    as_alice = httpx.Client(base_url=server.base_url, headers=bearer(alice["key"]), timeout=60)
    outside = as_alice.post("/api/v1/agents", json={"repo": str(git_repo)})
    assert outside.status_code == 422 and "allowed_repo_roots" in outside.json()["message"]
    forge_data = as_alice.post("/api/v1/agents", json={"repo": str(server.data_dir)})
    assert forge_data.status_code == 422 and "data directory" in forge_data.json()["message"]
    inside = allowed / "repo"
    subprocess.run(["git", "clone", "-q", str(git_repo), str(inside)], check=True)
    created = as_alice.post("/api/v1/agents", params={"wait": "true"}, json={"repo": str(inside)})
    assert created.status_code == 201, created.text
    as_alice.close()


def test_wrong_keys_from_one_address_are_rate_limited(forge_server: Any) -> None:
    server: ForgeServer = forge_server(
        "\n[auth]\nenabled = true\nfailed_auth_burst = 5\n", env={"FORGE_API_KEY": ADMIN_KEY}
    )
    wrong = bearer("fk_" + "1" * 26 + "_" + "2" * 64)
    answers = [server.http.get("/api/v1/agents", headers=wrong) for _ in range(6)]
    assert [a.status_code for a in answers] == [401] * 5 + [429]
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert "failed authentications" in answers[-1].json()["message"]
    assert server.http.get("/healthz").status_code == 200
