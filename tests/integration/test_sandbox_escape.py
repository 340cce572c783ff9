"""Sandbox escape suite: from inside an agent, try to read, write, signal and reach what a
sandbox must keep out of its reach, while a second agent works next to it.

Each attempt runs as the agent's own shell command (profile `shell`: the message is a script
read by `sh`), so it has exactly the powers an agent's tool call would have.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge.sandbox.bwrap import bwrap_works
from tests.integration.conftest import ForgeServer, git, runner_pids, wait_for
from tests.support.podman import PodmanEngine, docker_sandbox_config

pytestmark = pytest.mark.integration

LIMITS = """
[sandbox.limits]
processes = 150
memory_mb = 256
file_size_mb = 16

[profiles.shell]
executor = "command"
command = "sh"

[profiles.offline]
executor = "command"
command = "sh"
network = "none"

[profiles.ticker]
executor = "command"
command = "for i in $(seq 1 60); do echo tick $i; sleep 0.1; done"
"""


@pytest.fixture(params=["bwrap", "docker"])
def runtime_config(request: pytest.FixtureRequest) -> Iterator[str]:
    """The `[sandbox]` tables of the runtime under test: bwrap, and docker on podman."""
    if request.param == "bwrap":
        works, why = bwrap_works()
        if not works:
            pytest.skip(f"bubblewrap cannot run here: {why}")
        yield '[sandbox]\nruntime = "bwrap"\n'
        return
    engine: PodmanEngine = request.getfixturevalue("podman")
    yield docker_sandbox_config(engine.socket_url, engine.image)
    engine.remove_containers("forge.managed-by=forge")


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Secrets on the host: a file in the host's home and a variable in Forge's environment."""
    secret = f"planted-{uuid.uuid4().hex}"
    home_file = Path.home() / f".forge-escape-{uuid.uuid4().hex[:8]}"
    home_file.write_text(secret)
    monkeypatch.setenv("FORGE_ESCAPE_TEST_SECRET", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    try:
        yield {"secret": secret, "home_file": str(home_file)}
    finally:
        home_file.unlink(missing_ok=True)


class Listener:
    """A TCP listener on the host's loopback that records whether anyone connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def run_script(server: ForgeServer, agent_id: str, script: str, timeout: float = 60) -> str:
    """Run `script` as the agent's command and return everything it printed."""
    response = server.http.post(f"/api/v1/agents/{agent_id}/messages", json={"content": script})
    assert response.status_code == 202, response.text
    events = server.wait_final(agent_id, response.json()["request_id"], timeout=timeout)
    return _output(events)


def _output(events: list[dict[str, Any]]) -> str:
    lines = []
    for event in events:
        entry = event.get("entry") or {}
        if entry.get("text"):
            lines.append(entry["text"])
        if event["is_final"]:
            lines.append(f"[final: {event.get('outcome')}: {event.get('message')}]")
    return "\n".join(lines)


def test_an_agent_cannot_escape_its_sandbox(
    forge_server: Any, git_repo: Path, planted: dict[str, str], runtime_config: str
) -> None:
    secret = planted["secret"]
    server: ForgeServer = forge_server(runtime_config + LIMITS)
    config_text = server.config_path.read_text()
    database = server.data_dir / "forge.db"
    assert database.exists()

    victim = server.create_agent(profile="ticker", repo=str(git_repo))
    attacker = server.create_agent(profile="shell", repo=str(git_repo))
    offline = server.create_agent(profile="offline")
    victim_ws = Path(victim["workspace_path"])
    attacker_ws = Path(attacker["workspace_path"])
    (victim_ws / "victim-notes.txt").write_text(f"victim data {secret}")

    # The victim works the whole time the attacks go on.
    started = server.http.post(f"/api/v1/agents/{victim['id']}/messages", json={"content": "go"})
    victim_request = started.json()["request_id"]

    # ---- reading what is not the agent's ----
    reads = run_script(
        server,
        attacker["id"],
        f"""
cat {planted["home_file"]} 2>&1 || echo "home-file: refused"
ls -A {Path.home()} 2>&1 | head -20
cat {database} 2>&1 | head -c 200 || true; echo
cat {server.config_path} 2>&1 | head -c 200 || true; echo
ls {server.data_dir} 2>&1
cat {victim_ws}/victim-notes.txt 2>&1 || echo "victim: refused"
echo "== worktrees"; ls {victim_ws.parent} 2>&1; echo "== end"
cat /etc/shadow 2>&1 | head -c 100; echo
env
cat /proc/1/environ 2>&1 | tr '\\0' '\\n'
grep -h Cap /proc/self/status; grep NoNewPrivs /proc/self/status; id
""",
    )
    assert secret not in reads, reads
    assert "victim data" not in reads
    assert "SQLite format" not in reads
    assert "[server]" not in reads and str(server.port) not in reads
    listed = reads.split("== worktrees")[1].split("== end")[0].split()
    assert listed == [attacker["id"]], f"the sandbox sees other workspaces: {listed}"
    assert "CapEff:\t0000000000000000" in reads
    assert "NoNewPrivs:\t1" in reads
    assert "uid=1000" in reads
    assert "root:" not in reads.split("/etc/shadow")[-1][:50]

    # ---- writing outside the workspace ----
    outside = server.data_dir / "written-by-agent"
    repo_config = git_repo / ".git" / "config"
    config_before = repo_config.read_text()
    writes = run_script(
        server,
        attacker["id"],
        f"""
echo x > {outside} 2>&1 || echo "data dir: refused"
echo x > /usr/forge-escape 2>&1 || echo "usr: refused"
echo '[core] fsmonitor = evil' >> {repo_config} 2>&1 || echo "repo config: refused"
echo x > {victim_ws}/planted-by-attacker 2>&1 || echo "victim: refused"
echo x > /tmp/forge-escape-{attacker["id"]} && echo "private tmp: written"
echo "mine" > {attacker_ws}/mine.txt && echo "workspace: written"
git add mine.txt && git -c user.email=a@forge -c user.name=agent commit -qm mine \
  && echo "commit: ok"
""",
    )
    assert not outside.exists(), writes
    assert not Path("/usr/forge-escape").exists()
    assert repo_config.read_text() == config_before
    assert not (victim_ws / "planted-by-attacker").exists()
    assert not Path(f"/tmp/forge-escape-{attacker['id']}").exists(), "/tmp is the host's"
    assert "private tmp: written" in writes
    assert (attacker_ws / "mine.txt").read_text() == "mine\n"
    # The worktree's git metadata is writable as far as a commit on its own branch needs.
    assert "commit: ok" in writes, writes
    assert git("log", "-1", "--format=%s", attacker["branch"], cwd=git_repo).strip() == "mine"

    # ---- the network of an offline agent ----
    listener = Listener()
    try:
        probe = (
            "python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
            f"{listener.port}), 3); print('connected')\" 2>&1 | tail -1; "
            "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), 3)\" "
            "2>&1 | tail -1; ip -o link 2>/dev/null || cat /proc/net/dev"
        )
        offline_out = run_script(server, offline["id"], probe)
        assert "connected" not in offline_out, offline_out
        assert listener.connections == 0
        # The same probe from a `host` sandbox does connect: the check can see a connection.
        online_out = run_script(server, attacker["id"], probe)
        assert "connected" in online_out, online_out
        wait_for(lambda: listener.connections >= 1, timeout=5)
    finally:
        listener.close()

    # ---- a fork bomb, a memory hog, a file larger than the limit ----
    bomb = run_script(
        server,
        attacker["id"],
        """
python3 - <<'EOF'
import os, time
forked = refused = 0
end = time.time() + 4
while time.time() < end:
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        time.sleep(0.005)
        continue
    if pid == 0:
        time.sleep(6)
        os._exit(0)
    forked += 1
print("forked", forked, "refused", refused)
EOF
""",
    )
    forked = int(bomb.split("forked ")[1].split()[0])
    refused = int(bomb.split("refused ")[1].split()[0])
    assert refused > 0 and forked < 150, bomb
    assert server.http.get("/healthz").status_code == 200

    hog = run_script(
        server,
        attacker["id"],
        "python3 -c \"x = b'x' * (1024 * 1024 * 1024); print('allocated', len(x))\" 2>&1 "
        "| tail -1; echo exit=$?",
    )
    assert "allocated" not in hog, hog

    big = run_script(
        server,
        attacker["id"],
        "dd if=/dev/zero of=big.bin bs=1M count=64 2>&1 | tail -1; ls -l big.bin",
    )
    size = (attacker_ws / "big.bin").stat().st_size
    assert size <= 16 * 1024 * 1024, (size, big)

    # ---- signalling the platform ----
    platform_pid = server.proc.pid if server.proc else 0
    signals = run_script(
        server,
        attacker["id"],
        f"kill -9 {platform_pid} 2>&1 || echo 'platform: no such process'; "
        "ps -e -o pid=,comm= 2>/dev/null | head -20 || ls /proc | grep -E '^[0-9]+$'",
    )
    assert server.proc is not None and server.proc.poll() is None, "the platform was killed"
    assert f"{platform_pid} " not in signals.split("platform:")[-1]
    # Killing everything it can see ends only the attacker's own sandbox.
    response = server.http.post(
        f"/api/v1/agents/{attacker['id']}/messages", json={"content": "kill -9 -1"}
    )
    server.wait_final(attacker["id"], response.json()["request_id"], timeout=60)

    # ---- the platform is healthy and the victim finished unharmed ----
    assert server.http.get("/healthz").status_code == 200
    victim_events = server.wait_final(victim["id"], victim_request, timeout=60)
    final = victim_events[-1]
    assert final["outcome"] == "succeeded", final
    ticks = [e["entry"]["text"] for e in victim_events if (e.get("entry") or {}).get("text")]
    assert ticks == [f"tick {i}" for i in range(1, 61)]
    assert config_text == server.config_path.read_text()
    assert os.path.exists(database)


def test_what_an_agent_plants_does_not_reach_its_next_sandbox_or_the_host(
    forge_server: Any, git_repo: Path, tmp_path: Path, runtime_config: str
) -> None:
    """An agent rewrites its worktree's `.git` link to another repository, swaps the files of
    its state directory for links to Forge's database, deletes the repository's packs, then
    kills its runner. Its next sandbox (a new message re-provisions it) must be built from the
    repository's side, and nothing on the host may have been written through the links."""
    secret = f"other-tenant-{uuid.uuid4().hex}"
    other = tmp_path / "other-repo"
    other.mkdir()
    git("init", "-q", cwd=other)
    git("config", "forge-test.secret", secret, cwd=other)
    git("gc", "-q", cwd=git_repo)  # the history in a pack
    packs = sorted((git_repo / ".git" / "objects" / "pack").iterdir())
    assert packs

    server: ForgeServer = forge_server(runtime_config + LIMITS)
    database = server.data_dir / "forge.db"
    agent = server.create_agent(profile="shell", repo=str(git_repo))
    workspace = Path(agent["workspace_path"])
    token_file = server.data_dir / "runners" / agent["id"] / "token"

    planted = run_script(
        server,
        agent["id"],
        f"""
common=$(git rev-parse --path-format=absolute --git-common-dir)
rm -f "$common"/objects/pack/* 2>&1 || true
mkdir -p fake && echo "{other}/.git" > fake/commondir && echo "gitdir: $PWD/fake" > .git
ln -sf {database} /run/forge/token 2>&1 || true
ln -sf {database} /run/forge/runner.log 2>&1 || true
ls /etc/ssl/private 2>&1 || true
echo planted
""",
    )
    assert "planted" in planted
    assert sorted((git_repo / ".git" / "objects" / "pack").iterdir()) == packs, planted
    # Its runner goes; the next message starts a new sandbox for the same worktree.
    [runner] = runner_pids(agent["id"])
    os.kill(runner, signal.SIGKILL)
    wait_for(
        lambda: server.http.get(f"/api/v1/agents/{agent['id']}").json()["status"] != "ready",
        timeout=30,
    )

    second = run_script(
        server,
        agent["id"],
        f"""
cat .git
git rev-parse --path-format=absolute --git-common-dir
cat {other}/.git/config 2>&1 || echo "other repository: not there"
git config --get forge-test.secret || echo "no secret"
git log --oneline -1 && echo "git works"
""",
    )
    assert secret not in second, second
    assert f"gitdir: {git_repo / '.git' / 'worktrees' / workspace.name}" in second
    assert "git works" in second
    assert database.read_bytes().startswith(b"SQLite format 3")
    assert not token_file.is_symlink()
    assert (workspace / ".git").read_text().strip() == (
        f"gitdir: {git_repo / '.git' / 'worktrees' / workspace.name}"
    )
