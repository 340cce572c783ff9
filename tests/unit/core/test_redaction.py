"""Secret redaction: the redactor itself, the values it is built from, the event log redacting
before it stores (real SQLite), and the log filter the runner uses."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from forge.config import Settings
from forge.core.eventlog import EventBus, EventLog
from forge.core.events import ErrorInfo, EventDraft
from forge.core.profiles import ProfileCatalog
from forge.core.redaction import (
    MIN_SECRET_CHARS,
    REDACTED,
    SecretLogFilter,
    SecretRedactor,
    secret_values,
)
from forge.store.db import Database
from forge.store.tables import AgentRow, EventRow, PermissionRow, RunRow
from tests.support.rows import agent_with_running_run

SECRET = "sk-live-0123456789abcdef"
QUOTED = 'pa"ss\\word-ünï'  # needs escaping inside JSON


def test_text_is_redacted_wherever_the_secret_stands() -> None:
    redactor = SecretRedactor([SECRET])
    assert redactor.redact_text(SECRET) == REDACTED
    assert (
        redactor.redact_text(f"token={SECRET};then {SECRET}") == f"token={REDACTED};then {REDACTED}"
    )
    assert redactor.redact_text("nothing here") == "nothing here"


def test_short_values_are_not_secrets() -> None:
    short = "x" * (MIN_SECRET_CHARS - 1)
    redactor = SecretRedactor([short, "1", "true"])
    assert not redactor
    assert redactor.count == 0
    assert redactor.redact_text(f"a {short} b true") == f"a {short} b true"
    assert SecretRedactor(["y" * MIN_SECRET_CHARS]).count == 1


def test_the_longer_of_two_overlapping_secrets_goes_whole() -> None:
    redactor = SecretRedactor(["abcdefgh", "abcdefgh-and-more"])
    assert redactor.redact_text("x abcdefgh-and-more y abcdefgh") == f"x {REDACTED} y {REDACTED}"


def test_nested_values_keys_included() -> None:
    redactor = SecretRedactor([SECRET])
    value = {
        "a": [1, None, True, f"say {SECRET}", {"deep": [SECRET]}],
        f"key-{SECRET}": 2.5,
    }
    assert redactor.redact_value(value) == {
        "a": [1, None, True, f"say {REDACTED}", {"deep": [REDACTED]}],
        f"key-{REDACTED}": 2.5,
    }


def test_the_json_escaped_form_is_caught_too() -> None:
    redactor = SecretRedactor([QUOTED])
    escaped = json.dumps(QUOTED)[1:-1]  # as it reads when an agent prints JSON as text
    assert redactor.redact_text(f"raw {QUOTED} json {escaped}") == f"raw {REDACTED} json {REDACTED}"
    body = json.dumps({"text": f"x {QUOTED}", "line": f'{{"k": "{escaped}"}}'})
    assert redactor.found_in_json(body)
    assert QUOTED not in json.dumps(redactor.redact_value(json.loads(body)), ensure_ascii=False)


def test_the_fast_check_says_no_without_a_secret() -> None:
    redactor = SecretRedactor([SECRET, QUOTED])
    assert not redactor.found_in_json(json.dumps({"text": "sk-live-0123 no"}))
    assert redactor.found_in_json(json.dumps({"text": SECRET}))
    assert not SecretRedactor([]).found_in_json(json.dumps({"text": SECRET}))


def test_a_draft_is_redacted_in_every_field_the_agent_writes() -> None:
    redactor = SecretRedactor([SECRET])
    draft = EventDraft(
        event_type="agent.error",
        request_id="r1",
        session_id=f"s-{SECRET}",
        executor="command",
        executor_event_type=SECRET,
        event={"line": SECRET},
        entry={"kind": "assistant_message", "text": SECRET},
        message=f"failed: {SECRET}",
        error=ErrorInfo(code="EXECUTOR_CRASHED", message=f"stderr: {SECRET}"),
    )
    clean = redactor.redact_draft(draft)
    assert SECRET not in clean.model_dump_json()
    assert clean.request_id == "r1" and clean.executor == "command"
    assert clean.error is not None and clean.error.message == f"stderr: {REDACTED}"
    assert draft.event == {"line": SECRET}  # the original is left alone


def test_secret_values_come_from_config_files_and_the_environment(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "helper.md").write_text(
        "---\nexecutor: command\ncommand: cat\nenv:\n  FILE_TOKEN: from-an-agent-file\n---\n"
    )
    settings = Settings(
        data_dir=tmp_path,
        agent_files={"dir": str(agents)},
        database={"url": "postgresql+asyncpg://forge:db-password-1@localhost/forge"},
        executors={
            "COMMAND": {"X": {"command": "env", "env": {"VARIANT_TOKEN": "from-a-variant"}}}
        },
        profiles={"p": {"executor": "command", "command": "env", "env": {"T": "from-a-profile"}}},
        secrets={"redact_env": ["EXTRA_SECRET"]},
        auth={"session_secret": "the-dashboard-cookie-signing-key"},
    )
    environ = {
        "ANTHROPIC_API_KEY": "platform-anthropic-key",
        "OPENAI_API_KEY": "platform-openai-key",
        "FORGE_API_KEY": "the-admin-key-of-forge",
        "EXTRA_SECRET": "named-in-redact-env",
        "UNRELATED": "not-a-secret-at-all",
    }
    values = set(secret_values(settings, ProfileCatalog(settings), environ))
    assert values >= {
        "from-an-agent-file",
        "from-a-variant",
        "from-a-profile",
        "db-password-1",
        "platform-anthropic-key",
        "platform-openai-key",
        "the-admin-key-of-forge",
        "named-in-redact-env",
        "the-dashboard-cookie-signing-key",
    }
    assert "not-a-secret-at-all" not in values


def _files_holding(secret: str, folder: Path, pattern: str) -> list[Path]:
    return [path for path in folder.glob(pattern) if secret.encode() in path.read_bytes()]


async def test_the_event_log_stores_no_secret(db: Database, tmp_path: Path) -> None:
    await agent_with_running_run(db)
    bus = EventBus()
    log = EventLog(db, bus, redactor=SecretRedactor([SECRET]))
    drafts = [
        EventDraft(
            event_type="agent.event",
            request_id="r1",
            runner_seq=1,
            session_id=f"sess-{SECRET}",
            event={"type": "x", "line": f"token {SECRET}"},
            entry={"kind": "assistant_message", "text": f"token {SECRET}"},
        ),
        EventDraft(
            event_type="agent.event",
            request_id="r1",
            runner_seq=2,
            entry={
                "kind": "permission_request",
                "permission_id": "perm_1",
                "tool": "bash",
                "detail": f"curl -H 'Authorization: {SECRET}'",
            },
        ),
        EventDraft(
            event_type="agent.error",
            request_id="r1",
            runner_seq=3,
            error=ErrorInfo(code="EXECUTOR_CRASHED", message=f"stderr {SECRET}"),
            message=f"stderr {SECRET}",
        ),
    ]
    waiter = asyncio.create_task(bus.wait_for_events("ag_1", 0, timeout=5))
    await asyncio.sleep(0)  # waiting before the append, so the wake-up carries the events
    sealed = await log.append("ag_1", drafts, runner_ack=3)
    _, published = await waiter
    assert all(SECRET not in envelope.model_dump_json() for envelope in sealed)
    assert published and all(SECRET not in event.body for event in published)
    assert sealed[0].entry == {"kind": "assistant_message", "text": f"token {REDACTED}"}
    async with db.read() as s:
        bodies = list(await s.scalars(select(EventRow.body)))
        run = (await s.scalars(select(RunRow))).one()
        agent = await s.get(AgentRow, "ag_1")
        permission = (await s.scalars(select(PermissionRow))).one()
    assert len(bodies) == 3 and all(SECRET not in body for body in bodies)
    assert SECRET not in json.dumps(run.error)
    assert agent is not None and agent.executor_session_id == f"sess-{REDACTED}"
    assert permission.detail == f"curl -H 'Authorization: {REDACTED}'"
    await db.close()  # checkpoint the WAL, then look at the bytes on disk
    assert _files_holding(SECRET, tmp_path, "forge.db*") == []


async def test_events_without_secrets_are_stored_as_they_are(db: Database) -> None:
    await agent_with_running_run(db)
    log = EventLog(db, EventBus(), redactor=SecretRedactor([SECRET]))
    entry = {"kind": "assistant_message", "text": "nothing secret"}
    sealed = await log.append(
        "ag_1", [EventDraft(event_type="agent.event", request_id="r1", entry=entry)]
    )
    assert sealed[0].entry == entry


@pytest.fixture
def captured() -> tuple[logging.Logger, list[str]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    logger = logging.getLogger("test_redaction.captured")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    return logger, lines


def test_the_log_filter_redacts_messages_arguments_and_tracebacks(
    captured: tuple[logging.Logger, list[str]],
) -> None:
    logger, lines = captured
    log_filter = SecretLogFilter()
    logger.handlers[0].addFilter(log_filter)
    logger.info("before: %s", SECRET)
    log_filter.add(["short", SECRET])
    logger.info("run completed: %s", f"stderr {SECRET}")
    try:
        raise RuntimeError(f"boom {SECRET}")
    except RuntimeError:
        logger.exception("the executor failed")
    assert SECRET in lines[0]  # not known yet
    assert lines[1] == f"run completed: stderr {REDACTED}"
    assert SECRET not in lines[2] and f"boom {REDACTED}" in lines[2]
