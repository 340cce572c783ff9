"""The dashboard against a real `forge serve`, in headless Chromium: create a session, send a
message and watch its events arrive live, fold and unfold a tool call, read the diff and the
files, answer a permission request, and see the status and analytics pages with data."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import start_server
from tests.integration.conftest import ForgeServer, make_repository
from tests.support.model_server import Reply, Script, ScriptedModelServer, ToolCall

pytestmark = pytest.mark.integration

OWNER = "me"  # the dashboard's default owner


def _emit(entry: dict[str, Any]) -> str:
    return "printf '%s\\n' " + shlex.quote(json.dumps({"entry": entry}))


# Thinks, runs a tool (with input and output), answers.
DEMO = "\n".join(
    [
        'msg="$(cat)"',
        _emit({"kind": "thinking", "text": "looking at the files"}),
        _emit(
            {
                "kind": "tool_call",
                "tool": "bash",
                "action": "command_run",
                "status": "success",
                "tool_call_id": "call_1",
                "detail": "ls -1",
                "input": {"command": "ls -1"},
                "output": "first-file.txt\nsecond-file.txt",
            }
        ),
        'echo "echo: $msg"',
    ]
)
# Prints a line, then waits (up to 30 s) for the test to create `go` in its workspace.
LIVE = "\n".join(
    [
        'msg="$(cat)"',
        'echo "started: $msg"',
        "i=0",
        'while [ ! -f go ] && [ "$i" -lt 600 ]; do sleep 0.05; i=$((i + 1)); done',
        "echo 'after go'",
    ]
)
# Changes a tracked file and adds one.
EDITOR = "\n".join(
    [
        "cat > /dev/null",
        "echo more >> hello.txt",
        "printf 'notes\\nline two\\n' > notes.md",
        "echo 'edited two files'",
    ]
)
WRITE = {"path": "hello.py", "content": "print('hello')\n"}


def _profile(name: str, command: str) -> str:
    return f"\n[profiles.{name}]\nexecutor = \"command\"\ncommand = '''\n{command}\n'''\n"


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModelServer]:
    script = Script([Reply(tool_calls=[ToolCall("write_file", WRITE)]), Reply(text="Written.")])
    with ScriptedModelServer(script) as server:
        yield server


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model: ScriptedModelServer
) -> Iterator[ForgeServer]:
    """One server for the module, with every scenario's profile."""
    config = (
        _profile("demo", DEMO)
        + _profile("live", LIVE)
        + _profile("editor", EDITOR)
        + f"""
[profiles.careful]
executor = "forge"
model = "model-a"
permission_mode = "ask"
permission_timeout_seconds = 60
env = {{ OPENAI_BASE_URL = "{model.url}/v1", OPENAI_API_KEY = "test-key" }}
"""
    )
    forge = start_server(tmp_path_factory.mktemp("forge"), config)
    try:
        yield forge
    finally:
        forge.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repos") / "repo")


def _run(server: ForgeServer, profile: str, content: str, **create: Any) -> str:
    """A session of `profile` that ran one message to its end; its id."""
    agent = server.create_agent(owner_id=OWNER, profile=profile, **create)
    sent = server.http.post(f"/api/v1/agents/{agent['id']}/messages", json={"content": content})
    assert sent.status_code == 202, sent.text
    server.wait_final(agent["id"], sent.json()["request_id"])
    return str(agent["id"])


def _open_session(page: Page, server: ForgeServer, session_id: str) -> None:
    page.goto(f"{server.base_url}/#/sessions/{session_id}")
    expect(page.get_by_test_id("session-id")).to_have_text(session_id)
    expect(page.get_by_test_id("stream-state")).to_have_text("live")


def test_create_a_session_send_a_message_and_see_events_live(
    page: Page, server: ForgeServer
) -> None:
    page.goto(f"{server.base_url}/#/new")
    expect(page.locator("[data-testid=new-profile] option[value=live]")).to_have_count(1)
    page.get_by_test_id("new-profile").select_option("live")
    page.get_by_test_id("new-submit").click()
    page.wait_for_url(re.compile(r"#/sessions/ag_"))
    session_id = page.url.rsplit("/", 1)[-1]
    expect(page.get_by_test_id("stream-state")).to_have_text("live")
    # Anything that reloads the page loses this.
    page.evaluate("window.__sameDocument = true")

    page.get_by_test_id("message-input").fill("hello from the browser")
    page.get_by_test_id("send-message").click()
    transcript = page.get_by_test_id("transcript")
    expect(transcript.get_by_text("started: hello from the browser")).to_be_visible()
    expect(transcript.locator("[data-kind=user_message]")).to_have_text("hello from the browser")
    expect(page.get_by_test_id("session-status")).to_have_text("running")
    assert transcript.get_by_text("after go").count() == 0

    # The run goes on only now, with the page open: its next line must arrive by itself.
    session = server.http.get(f"/api/v1/sessions/{session_id}").json()
    (Path(session["workspace_path"]) / "go").touch()
    expect(transcript.get_by_text("after go")).to_be_visible()
    expect(transcript.get_by_test_id("run-outcome")).to_have_text("succeeded")
    expect(page.get_by_test_id("session-status")).to_have_text("idle")
    assert page.evaluate("window.__sameDocument") is True

    # The list shows the session with its status.
    page.get_by_test_id("nav-sessions").click()
    row = page.locator(f"[data-testid=session-row][data-session-id={session_id}]")
    expect(row.get_by_test_id("session-status")).to_have_text("idle")
    # Filters (by the server) and search (in the page).
    page.get_by_test_id("filter-profile").select_option("live")
    expect(page.get_by_test_id("session-row")).to_have_count(1)
    page.get_by_test_id("filter-status").select_option("failed")
    expect(page.get_by_test_id("sessions-empty")).to_be_visible()
    page.get_by_test_id("filter-status").select_option("")
    page.get_by_test_id("filter-search").fill("no-such-session")
    expect(page.get_by_test_id("sessions-empty")).to_be_visible()
    page.get_by_test_id("filter-search").fill(session_id[-6:])
    expect(row).to_be_visible()


def test_fold_and_unfold_a_tool_call(page: Page, server: ForgeServer) -> None:
    session_id = _run(server, "demo", "list the files")
    _open_session(page, server, session_id)
    call = page.get_by_test_id("tool-call")
    expect(call.get_by_test_id("tool-summary")).to_contain_text("bash")
    expect(call.get_by_test_id("tool-summary")).to_contain_text("ls -1")
    expect(call.get_by_test_id("tool-status")).to_have_text("success")
    output = call.get_by_test_id("tool-output")
    expect(output).to_be_hidden()

    call.get_by_test_id("tool-summary").click()
    expect(output).to_be_visible()
    expect(output).to_contain_text("second-file.txt")
    expect(call.get_by_test_id("tool-input")).to_contain_text('"command": "ls -1"')

    call.get_by_test_id("tool-summary").click()
    expect(output).to_be_hidden()
    # The rest of the run beside it: thinking dimmed, the answer, the usage panel.
    transcript = page.get_by_test_id("transcript")
    expect(transcript.locator("[data-kind=thinking]")).to_have_text("looking at the files")
    expect(transcript.get_by_text("echo: list the files")).to_be_visible()
    expect(page.get_by_test_id("usage-cost")).to_have_text(re.compile(r"^\$\d"))
    expect(page.get_by_test_id("session-meta")).to_contain_text("demo")


def test_diff_with_per_file_stats_and_the_file_viewer(
    page: Page, server: ForgeServer, repo: Path
) -> None:
    session_id = _run(server, "editor", "edit", repo=str(repo))
    _open_session(page, server, session_id)
    page.get_by_test_id("tab-diff").click()
    expect(page.get_by_test_id("diff-summary")).to_contain_text("2 files changed")
    changed = page.locator("[data-testid=diff-file][data-path='hello.txt']")
    expect(changed.get_by_test_id("diff-additions")).to_have_text("+1")
    expect(changed.get_by_test_id("diff-deletions")).to_have_text("\u22120")  # a minus sign
    added = page.locator("[data-testid=diff-file][data-path='notes.md']")
    expect(added).to_contain_text("added")
    expect(added.get_by_test_id("diff-additions")).to_have_text("+2")
    expect(page.locator(".patch .l-add", has_text="+more")).to_be_visible()

    page.get_by_test_id("tab-files").click()
    page.locator("[data-testid=file-entry][data-path='hello.txt']").click()
    expect(page.get_by_test_id("file-viewer")).to_have_text("hello\nmore\n")


def test_answer_a_permission_request(page: Page, server: ForgeServer, repo: Path) -> None:
    agent = server.create_agent(owner_id=OWNER, profile="careful", repo=str(repo))
    _open_session(page, server, agent["id"])
    page.get_by_test_id("message-input").fill("write hello.py")
    page.get_by_test_id("send-message").click()

    request = page.get_by_test_id("permission-request")
    expect(request).to_contain_text("write_file")
    expect(request.get_by_test_id("permission-state")).to_have_text("Waiting for your answer")
    request.get_by_test_id("permission-once").click()
    expect(request.get_by_test_id("permission-state")).to_have_text("Allowed once")
    expect(request.get_by_test_id("permission-once")).to_be_hidden()

    # The run goes on: the write succeeds, the model answers, the run ends well.
    transcript = page.get_by_test_id("transcript")
    expect(transcript.get_by_text("Written.")).to_be_visible()
    expect(transcript.get_by_test_id("run-outcome")).to_have_text("succeeded")
    expect(page.get_by_test_id("tool-call").last.get_by_test_id("tool-status")).to_have_text(
        "success"
    )
    assert (Path(agent["workspace_path"]) / "hello.py").read_text() == WRITE["content"]
    expect(page.get_by_test_id("usage-input")).not_to_have_text("0")


def test_status_page_shows_the_numbers(page: Page, server: ForgeServer) -> None:
    _run(server, "demo", "for the status page")
    page.goto(f"{server.base_url}/#/status")
    expect(page.get_by_test_id("status-database")).to_have_text("ok")
    total = page.get_by_test_id("status-sessions-total")
    expect(total).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(page.get_by_test_id("status-uptime")).to_have_text(re.compile(r"\d"))
    expect(page.get_by_test_id("status-worktrees-count")).to_have_text(re.compile(r"^\d+$"))
    expect(page.get_by_test_id("status-queue-max")).to_have_text(re.compile(r"^[1-9]"))


def test_analytics_page_renders_charts_with_data(page: Page, server: ForgeServer) -> None:
    _run(server, "demo", "for the charts")
    page.goto(f"{server.base_url}/#/analytics")
    expect(page.get_by_test_id("analytics-runs")).to_have_text(re.compile(r"^[1-9]"))
    runs = page.get_by_test_id("chart-runs")
    expect(runs.locator("svg rect.bar").first).to_be_visible()
    expect(page.get_by_test_id("chart-tokens").locator("svg circle.point").first).to_be_attached()
    expect(page.get_by_test_id("chart-errors").locator("svg circle.point").first).to_be_attached()
    utilization = page.get_by_test_id("chart-utilization")
    expect(utilization.locator("svg rect.bar").first).to_be_visible()
    expect(utilization).to_contain_text("demo")


def test_stop_and_resume_a_session(page: Page, server: ForgeServer) -> None:
    session_id = _run(server, "demo", "first")
    _open_session(page, server, session_id)
    expect(page.get_by_test_id("session-status")).to_have_text("idle")
    page.get_by_test_id("stop").click()
    expect(page.get_by_test_id("session-status")).to_have_text("stopped")

    page.get_by_test_id("message-input").fill("second")
    page.get_by_test_id("resume").click()
    transcript = page.get_by_test_id("transcript")
    expect(transcript.get_by_text("echo: second")).to_be_visible()
    expect(transcript.get_by_test_id("run-outcome")).to_have_count(2)
    expect(transcript.locator("[data-kind=user_message]")).to_have_text(["first", "second"])
    expect(page.get_by_test_id("session-status")).to_have_text("idle")
