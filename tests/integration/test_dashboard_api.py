"""The dashboard's API on a real server: status and analytics after real runs, signing in with
the session cookie (its attributes, WebSocket, CSRF, revocation, sign-out), and the page."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.integration.conftest import ForgeServer, wait_for

pytestmark = pytest.mark.integration

ADMIN_KEY = "dashboard-admin-" + "k" * 32
PROFILES = """
[profiles.fails]
executor = "command"
command = "exit 3"
"""
AUTH = """
[auth]
enabled = true
failed_auth_burst = 1000
failed_auth_per_minute = 100000
"""


def send(server: ForgeServer, agent_id: str, content: str, **headers: str) -> dict[str, Any]:
    reply = server.http.post(
        f"/api/v1/agents/{agent_id}/messages", json={"content": content}, headers=headers
    )
    assert reply.status_code == 202, reply.text
    events = server.wait_final(agent_id, reply.json()["request_id"])
    final: dict[str, Any] = events[-1]
    return final


def test_status_and_analytics_count_the_sessions_and_runs_made(
    forge_server: Any, git_repo: Any
) -> None:
    server: ForgeServer = forge_server(PROFILES)
    began = datetime.now(UTC)
    echo = server.create_agent(repo=str(git_repo))
    fails = server.create_agent(profile="fails")
    assert send(server, echo["id"], "one")["outcome"] == "succeeded"
    assert send(server, echo["id"], "two")["outcome"] == "succeeded"
    assert send(server, fails["id"], "three")["outcome"] == "failed"

    status = server.http.get("/api/v1/status")
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["version"] and body["runtime"] and body["uptime_s"] > 0
    assert body["database"]["backend"] == "sqlite" and body["database"]["ok"] is True
    assert body["database"]["latency_ms"] >= 0
    sessions = body["sessions"]
    assert sessions["total"] == 2 and sessions["idle"] == 2, sessions
    assert sessions["active"] == sessions["running"] == sessions["queued"] == 0
    assert body["queue"] == {"queued_runs": 0, "running_runs": 0, "max_concurrent": 8}
    listed = server.http.get("/api/v1/worktrees").json()
    assert body["worktrees"] == {
        "count": listed["count"],
        "disk_bytes": listed["total_size_bytes"],
    }
    assert body["worktrees"]["count"] >= 1 and body["worktrees"]["disk_bytes"] > 0
    # Another owner's numbers are their own.
    bob = server.http.get("/api/v1/status", params={"user_id": "bob"}).json()
    assert bob["sessions"]["total"] == 0 and bob["worktrees"]["count"] == 0

    week = server.http.get("/api/v1/analytics")
    assert week.status_code == 200, week.text
    data = week.json()
    assert data["bucket"] == "day"
    since, until = (datetime.fromisoformat(data[k]) for k in ("since", "until"))
    assert until - since == timedelta(days=7) and until >= began
    totals = data["totals"]
    assert totals["sessions"] == 2 and totals["runs"] == 3
    assert (totals["succeeded"], totals["failed"], totals["interrupted"]) == (2, 1, 0)
    assert totals["errors"] == 1 and totals["error_rate"] == round(1 / 3, 4)
    # The command executor reports no token usage (tests/unit/core/test_analytics.py
    # checks tokens and cost).
    assert totals["input_tokens"] == totals["output_tokens"] == 0 and totals["cost_usd"] == 0
    assert totals["average_run_seconds"] is not None and totals["average_run_seconds"] >= 0
    assert totals["average_session_seconds"] is not None
    assert 7 <= len(data["series"]) <= 8
    assert sum(p["runs"] for p in data["series"]) == 3
    # In today's bucket (or yesterday's too, when the test ran across midnight UTC).
    recent = data["series"][-2:]
    assert sum(p["runs"] for p in recent) == 3 and sum(p["errors"] for p in recent) == 1
    assert sum(p["busy_seconds"] for p in data["series"]) > 0
    assert all(0 <= p["utilization"] <= 1 for p in data["series"])
    profiles = {p["profile"]: p for p in data["profiles"]}
    assert set(profiles) == {"default", "fails"}
    assert (profiles["default"]["runs"], profiles["default"]["sessions"]) == (2, 1)
    assert profiles["default"]["error_rate"] == 0
    assert (profiles["fails"]["runs"], profiles["fails"]["error_rate"]) == (1, 1.0)

    hour = server.http.get(
        "/api/v1/analytics",
        params={"since": (began - timedelta(minutes=5)).isoformat(), "bucket": "hour"},
    ).json()
    assert hour["bucket"] == "hour" and 1 <= len(hour["series"]) <= 2
    assert hour["totals"]["runs"] == 3
    assert (
        server.http.get("/api/v1/analytics", params={"user_id": "bob"}).json()["totals"]["runs"]
        == 0
    )

    now = datetime.now(UTC)
    for params, expected in (
        ({"since": "2026-11-20T10:00:00"}, "offset"),
        ({"since": "yesterday"}, "offset"),
        ({"bucket": "week"}, "bucket"),
        ({"since": now.isoformat(), "until": (now - timedelta(hours=1)).isoformat()}, "before"),
        ({"since": (now - timedelta(days=30)).isoformat(), "bucket": "hour"}, "bucket=day"),
        ({"since": (now - timedelta(days=800)).isoformat()}, "shorten the range"),
    ):
        refused = server.http.get("/api/v1/analytics", params=params)
        assert refused.status_code == 422, (params, refused.text)
        assert expected in refused.json()["message"], (params, refused.text)

    # Without authentication there is nothing to sign in to.
    state = server.http.get("/api/v1/dashboard/session").json()
    assert state == {"auth_enabled": False, "signed_in": False, "owner_id": None, "admin": True}
    signin = server.http.post("/api/v1/dashboard/session", json={"key": "anything"})
    assert signin.status_code == 409 and signin.json()["error"] == "auth_disabled"


def session_cookie(reply: httpx.Response) -> tuple[str, str]:
    """(the cookie's value, its whole Set-Cookie line)."""
    [line] = [v for v in reply.headers.get_list("set-cookie") if v.startswith("forge_session=")]
    return line.split(";", 1)[0].removeprefix("forge_session="), line


def test_signing_in_sets_a_cookie_that_stands_for_the_key(forge_server: Any) -> None:
    server: ForgeServer = forge_server(AUTH, env={"FORGE_API_KEY": ADMIN_KEY})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    keys = {
        owner: server.http.post("/api/v1/keys", json={"owner_id": owner}, headers=admin).json()
        for owner in ("alice", "bob")
    }
    server.http.headers.update(admin)
    agent_id = server.create_agent(owner_id="alice")["id"]
    url = "/api/v1/dashboard/session"
    anonymous = httpx.Client(base_url=server.base_url, timeout=30)

    # The page needs no key; its data does.
    page = anonymous.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    script = anonymous.get("/ui/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert anonymous.get("/ui/nothing-here.js").status_code == 404
    assert anonymous.get("/api/v1/status").status_code == 401
    assert anonymous.get(url).json() == {
        "auth_enabled": True,
        "signed_in": False,
        "owner_id": None,
        "admin": False,
    }

    wrong = anonymous.post(url, json={"key": "fk_" + "0" * 26 + "_" + "1" * 64})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_api_key"
    assert "set-cookie" not in wrong.headers

    signed = anonymous.post(url, json={"key": keys["alice"]["key"]})
    assert signed.status_code == 200, signed.text
    assert signed.json() == {"owner_id": "alice", "admin": False}
    cookie, line = session_cookie(signed)
    attributes = {part.strip().lower() for part in line.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/", "max-age=43200"} <= attributes
    assert "secure" not in attributes  # plain http
    version, key_id, expires, mac = cookie.split(".")
    assert version == "v1" and key_id == keys["alice"]["key_id"] and len(mac) == 64
    assert 43000 < int(expires) - datetime.now(UTC).timestamp() <= 43200

    as_alice = httpx.Client(
        base_url=server.base_url, timeout=30, headers={"Cookie": f"forge_session={cookie}"}
    )
    assert as_alice.get(url).json() == {
        "auth_enabled": True,
        "signed_in": True,
        "owner_id": "alice",
        "admin": False,
    }
    listed = as_alice.get("/api/v1/sessions")
    assert listed.status_code == 200 and [s["id"] for s in listed.json()["sessions"]] == [agent_id]
    assert as_alice.get("/api/v1/status").json()["sessions"]["total"] == 1

    # Changes from another site's page are refused; from the dashboard's own origin (or with
    # no Origin, as non-browser clients send) they work.
    messages = f"/api/v1/agents/{agent_id}/messages"
    foreign = as_alice.post(
        messages, json={"content": "x"}, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403 and foreign.json()["error"] == "csrf_refused"
    assert "Origin" in foreign.json()["message"]
    own = as_alice.post(messages, json={"content": "hi"}, headers={"Origin": server.base_url})
    assert own.status_code == 202, own.text
    server.wait_final(agent_id, own.json()["request_id"])
    # Reading is fine from anywhere (the browser keeps the answer from the other site).
    assert as_alice.get("/api/v1/status", headers={"Origin": "http://evil.example"}).is_success

    # The WebSocket stream takes the cookie; from another origin it is refused.
    ws = f"ws://127.0.0.1:{server.port}/api/v1/agents/{agent_id}/stream"
    cookie_header = {"Cookie": f"forge_session={cookie}"}
    with connect(ws, additional_headers=cookie_header, origin=server.base_url) as stream:  # type: ignore[arg-type]
        assert json.loads(stream.recv(timeout=10))["seq"] == 1
    with pytest.raises(InvalidStatus) as refused:
        connect(ws, additional_headers=cookie_header, origin="http://evil.example", open_timeout=5)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["error"] == "csrf_refused"

    # A cookie changed in any way is no session.
    tampered = cookie[:-1] + ("0" if cookie[-1] != "0" else "1")
    longer = f"v1.{key_id}.{int(expires) + 3600}.{mac}"
    for bad in (tampered, longer, "v1.admin.9999999999." + "0" * 64, "garbage"):
        answer = anonymous.get("/api/v1/sessions", headers={"Cookie": f"forge_session={bad}"})
        assert answer.status_code == 401, bad
        assert answer.json()["error"] == "invalid_session"

    # Bob's session sees bob's numbers.
    bob_cookie, _ = session_cookie(anonymous.post(url, json={"key": keys["bob"]["key"]}))
    as_bob = httpx.Client(
        base_url=server.base_url, timeout=30, headers={"Cookie": f"forge_session={bob_cookie}"}
    )
    assert as_bob.get("/api/v1/status").json()["sessions"]["total"] == 0
    assert as_bob.get("/api/v1/analytics").json()["totals"]["runs"] == 0
    assert as_bob.get(f"/api/v1/sessions/{agent_id}").status_code == 404

    # The admin key signs in as the admin.
    admin_signed = anonymous.post(url, json={"key": ADMIN_KEY})
    assert admin_signed.json() == {"owner_id": None, "admin": True}
    admin_cookie, _ = session_cookie(admin_signed)
    assert admin_cookie.split(".")[1] == "admin"
    everyone = anonymous.get(
        "/api/v1/status", headers={"Cookie": f"forge_session={admin_cookie}"}
    ).json()
    assert everyone["sessions"]["total"] == 1

    # Signing in from another site's page is refused too.
    cross = anonymous.post(
        url, json={"key": keys["bob"]["key"]}, headers={"Origin": "http://evil.example"}
    )
    assert cross.status_code == 403 and cross.json()["error"] == "csrf_refused"

    # Revoking the key ends its sessions.
    revoked = server.http.delete(f"/api/v1/keys/{keys['alice']['key_id']}", headers=admin)
    assert revoked.status_code == 200
    after = as_alice.get("/api/v1/sessions")
    assert after.status_code == 401 and after.json()["error"] == "invalid_session"
    assert as_alice.get(url).json()["signed_in"] is False
    assert as_bob.get("/api/v1/sessions").status_code == 200

    # Signing out clears the cookie.
    out = as_bob.delete(url)
    assert out.status_code == 204
    _, cleared = session_cookie(out)
    assert cleared.startswith("forge_session=;") and "Max-Age=0" in cleared
    for client in (anonymous, as_alice, as_bob):
        client.close()


def test_wrong_keys_at_sign_in_count_against_the_failed_authentication_limit(
    forge_server: Any,
) -> None:
    server: ForgeServer = forge_server(
        "\n[auth]\nenabled = true\nfailed_auth_burst = 3\n", env={"FORGE_API_KEY": ADMIN_KEY}
    )
    url = "/api/v1/dashboard/session"
    answers = [server.http.post(url, json={"key": f"wrong-{n}"}) for n in range(4)]
    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    assert int(answers[-1].headers["retry-after"]) >= 1
    # The address is shut out of every key meanwhile, the right one included.
    assert server.http.post(url, json={"key": ADMIN_KEY}).status_code == 429
    # Only for a while: the right key signs in once the allowance refills.
    wait_for(lambda: server.http.post(url, json={"key": ADMIN_KEY}).status_code == 200, 90)


def test_cookies_are_secure_when_forced(forge_server: Any) -> None:
    server: ForgeServer = forge_server(
        "\n[auth]\nenabled = true\nsecure_cookies = true\n", env={"FORGE_API_KEY": ADMIN_KEY}
    )
    signed = server.http.post("/api/v1/dashboard/session", json={"key": ADMIN_KEY})
    _, line = session_cookie(signed)
    assert line.endswith("; Secure")


def test_the_page_may_not_be_framed_and_only_its_own_paths_are_public(forge_server: Any) -> None:
    server: ForgeServer = forge_server(
        "\n[auth]\nenabled = true\n", env={"FORGE_API_KEY": ADMIN_KEY}
    )
    for path in ("/", "/ui/app.js", "/ui/app.css"):
        page = server.http.get(path)
        assert page.status_code == 200, path
        assert page.headers["x-frame-options"] == "DENY"
        policy = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
    # Nothing else is public: not a look-alike prefix, not a way out of /ui.
    for path in ("/uix", "/ui/../api/v1/status", "/ui/%2e%2e/api/v1/status", "/api/v1/status"):
        answer = server.http.get(path)
        assert answer.status_code in (401, 404), (path, answer.status_code)
        assert "sessions" not in answer.text, path


def test_without_auth_other_sites_pages_cannot_act(forge_server: Any) -> None:
    server: ForgeServer = forge_server()
    create = {"owner_id": "me", "profile": "default"}
    foreign = server.http.post(
        "/api/v1/agents", json=create, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403 and foreign.json()["error"] == "csrf_refused"
    own = server.http.post("/api/v1/agents", json=create, headers={"Origin": server.base_url})
    assert own.status_code == 201, own.text
    # Clients that send no Origin (curl, SDKs) and reads from anywhere are unchanged.
    assert server.http.post("/api/v1/agents", json=create).status_code == 201
    listed = server.http.get(
        "/api/v1/agents", params={"user_id": "me"}, headers={"Origin": "http://evil.example"}
    )
    assert listed.status_code == 200 and listed.json()["total"] == 2
    agent_id = own.json()["id"]
    url = f"ws://127.0.0.1:{server.port}/api/v1/agents/{agent_id}/stream"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, origin=Origin("http://evil.example"))
    assert refused.value.response.status_code == 403
    with connect(url, origin=Origin(server.base_url)):
        pass


def test_an_origin_named_in_dashboard_origins_may_act(forge_server: Any) -> None:
    server: ForgeServer = forge_server(
        '\n[auth]\nenabled = true\ndashboard_origins = ["https://forge.example.com"]\n',
        env={"FORGE_API_KEY": ADMIN_KEY},
    )
    url = "/api/v1/dashboard/session"
    proxied = server.http.post(
        url, json={"key": ADMIN_KEY}, headers={"Origin": "https://forge.example.com"}
    )
    assert proxied.status_code == 200, proxied.text
    elsewhere = server.http.post(
        url, json={"key": ADMIN_KEY}, headers={"Origin": "https://other.example.com"}
    )
    assert elsewhere.status_code == 403 and elsewhere.json()["error"] == "csrf_refused"
