"""The `forge` command against a running server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from forge import __version__
from tests.integration.conftest import ForgeServer

pytestmark = pytest.mark.integration

URL = "http://127.0.0.1:9"


def _forge(*args: str, base_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    if base_url:
        env["FORGE_BASE_URL"] = base_url
    return subprocess.run(
        [sys.executable, "-m", "forge", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_version() -> None:
    result = _forge("version")
    assert result.returncode == 0 and result.stdout.strip() == __version__


def test_agents_list_and_show(forge_server: Any) -> None:
    server: ForgeServer = forge_server()
    agent = server.create_agent(owner_id="carol")
    listed = _forge("agents", "list", base_url=server.base_url)
    assert listed.returncode == 0, listed.stderr
    assert agent["id"] in listed.stdout and "carol" in listed.stdout and "ready" in listed.stdout
    as_json = _forge(
        "agents", "list", "--json", "--user-id", "carol", "--config", str(server.config_path)
    )
    assert as_json.returncode == 0, as_json.stderr
    assert [a["id"] for a in json.loads(as_json.stdout)["agents"]] == [agent["id"]]
    shown = _forge("agents", "show", agent["id"], base_url=server.base_url)
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == agent["id"]
    missing = _forge("agents", "show", "ag_00000000000000000000000000", base_url=server.base_url)
    assert missing.returncode == 1 and "agent_not_found" in missing.stderr


def test_unreachable_server_and_bad_config_are_clear(tmp_path: Any) -> None:
    down = _forge("agents", "list", base_url=URL)
    assert down.returncode == 1, down.stderr
    assert "error: unreachable: cannot reach Forge at http://127.0.0.1:9" in down.stderr
    not_a_url = _forge("agents", "list", base_url="127.0.0.1:9")
    assert not_a_url.returncode == 2 and "http:// or https://" in not_a_url.stderr
    not_a_format = _forge("sessions", "transcript", "ag_1", "--format", "html", base_url=URL)
    assert not_a_format.returncode == 2 and "markdown or json" in not_a_format.stderr
    bad = _forge("serve", "--config", str(tmp_path / "missing.toml"))
    assert bad.returncode == 2 and "config file not found" in bad.stderr
