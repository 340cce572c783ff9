"""Neuron definitions and state documents: the fold, its operations (checked against the
`jsonpatch` package), and resuming at any version of a document stored in a real database."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import jsonpatch
import pytest

from forge.config import NeuronSettings, Settings
from forge.core.agents import AgentService
from forge.core.eventlog import EventBus, EventLog, StoredEvent
from forge.core.events import EventDraft, Usage
from forge.core.neurons import (
    EXAMPLES_DIR,
    FOLD,
    MAX_MESSAGES,
    MAX_TEXT,
    MAX_THINKING,
    TRUNCATED,
    NeuronService,
    apply_op,
    empty_document,
    load_definitions,
    markdown_sections,
    ops_for,
)
from forge.core.profiles import ProfileCatalog
from forge.store.db import Database
from tests.support.rows import agent_with_running_run


def _event(seq: int, event_type: str, request_id: str = "r1", **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "event_type": event_type, "request_id": request_id, **fields}


def _entry(seq: int, **entry: Any) -> dict[str, Any]:
    return _event(seq, "agent.event", entry=entry)


RUN = [
    _event(1, "agent.status", status="running"),
    _entry(2, kind="thinking", text="hmm"),
    _entry(3, kind="todo", items=[{"content": "a", "status": "pending"}, {"text": "b"}]),
    _entry(4, kind="tool_call", tool="edit", action="file_edit", status="running", path="x.py"),
    _entry(5, kind="tool_call", tool="edit", action="file_edit", status="success", path="x.py"),
    _entry(6, kind="permission_request", permission_id="p1", tool="bash", detail="rm -rf"),
    _entry(7, kind="tool_call", tool="bash", action="command_run", status="denied", detail="rm"),
    _entry(8, kind="assistant_message", text="# Title\nintro\n```\n# not a heading\n```\n## End"),
    _entry(9, kind="error", message="oops"),
    _event(10, "agent.complete", outcome="succeeded", usage={"input_tokens": 5, "cost_usd": 0.1}),
]


def _fold(events: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    doc = empty_document("n", "ag_1", None)
    version = 0
    for event in events:
        prompt = "do it" if event["event_type"] == "agent.status" else None
        for op in ops_for(doc, event, prompt=prompt):
            apply_op(doc, op)
            version += 1
    return doc, version


def test_the_operations_are_rfc_6902_and_build_the_document() -> None:
    ours = empty_document("n", "ag_1", None)
    theirs = copy.deepcopy(ours)
    for event in RUN:
        prompt = "do it" if event["event_type"] == "agent.status" else None
        ops = ops_for(ours, event, prompt=prompt)
        assert ops[-1] == {"op": "replace", "path": "/seq", "value": event["seq"]}
        for op in ops:
            apply_op(ours, op)
        # Sent as JSON, applied by another implementation: the same document.
        theirs = jsonpatch.apply_patch(theirs, json.loads(json.dumps(ops)))
        assert theirs == ours
    assert ours["status"] == "idle" and ours["outcome"] == "succeeded"
    assert [(m["role"], m["text"]) for m in ours["messages"]] == [
        ("user", "do it"),
        ("assistant", RUN[7]["entry"]["text"]),
    ]
    assert ours["sections"] == [
        {"title": "Title", "text": "intro\n```\n# not a heading\n```"},
        {"title": "End", "text": ""},
    ]
    assert ours["todos"] == [
        {"content": "a", "status": "pending"},
        {"content": "b", "status": "pending"},
    ]
    assert ours["files_changed"] == ["x.py"]
    assert ours["error"] == "oops"
    assert ours["usage"]["input_tokens"] == 5 and ours["usage"]["runs"] == 1
    assert ours["usage"]["cost_usd"] == pytest.approx(0.1)


def test_the_status_follows_the_run_and_its_permission_requests() -> None:
    statuses = []
    doc = empty_document("n", "ag_1", None)
    for event in RUN:
        for op in ops_for(doc, event, prompt=None):
            apply_op(doc, op)
        statuses.append(doc["status"])
    assert statuses[0] == "working"
    assert statuses[5] == "waiting_permission" and doc["activity"] is None
    assert statuses[6] == "working" and statuses[-1] == "idle"


def test_old_messages_leave_the_document_and_long_texts_are_cut() -> None:
    events = [_event(1, "agent.status", status="running")]
    count = MAX_MESSAGES + 5
    events += [_entry(seq, kind="assistant_message", text=f"m{seq}") for seq in range(2, count + 1)]
    events.append(_entry(count + 1, kind="assistant_message", text="x" * (MAX_TEXT + 1)))
    events.append(_entry(count + 2, kind="thinking", text="t" * (MAX_THINKING * 2)))
    doc, _ = _fold(events)
    assert len(doc["messages"]) == MAX_MESSAGES
    assert doc["messages"][0]["text"] == f"m{count + 1 - MAX_MESSAGES + 1}"
    assert len(doc["messages"][-1]["text"]) == MAX_TEXT
    assert doc["messages"][-1]["text"].endswith(TRUNCATED)
    assert len(doc["thinking"]) == MAX_THINKING


def test_a_setup_run_is_not_part_of_the_conversation() -> None:
    setup = [
        _event(1, "agent.status", "setup_ag_1", status="running"),
        _event(2, "agent.event", "setup_ag_1", entry={"kind": "assistant_message", "text": "ok"}),
        _event(3, "agent.complete", "setup_ag_1", outcome="succeeded"),
    ]
    doc, version = _fold(setup)
    assert doc == {**empty_document("n", "ag_1", None), "seq": 3}
    assert version == 3  # one `/seq` an event


def test_markdown_sections() -> None:
    assert markdown_sections("no headings") == []
    assert markdown_sections("## A ##\nx\n\n### B\ny\nz\n") == [
        {"title": "A", "text": "x"},
        {"title": "B", "text": "y\nz"},
    ]


def _write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_definitions_load_in_order_and_skip_broken_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    genie, forge = tmp_path / ".genie", tmp_path / ".forge"
    _write(genie, "wish.md", "---\nname: wish\nexecutor: command\n---\nGenie's wish.\n")
    _write(forge, "wish.md", "---\nforge_profile_name: default\nmodel: m1\n---\nOurs.\n")
    _write(forge, "extra.md", "---\nexecutor: command\nvariant: default\ngenie: {x: 1}\n---\n")
    _write(forge, "Bad Name.md", "---\nexecutor: command\n---\n")
    _write(forge, "both.md", "---\nexecutor: command\nforge_profile_name: default\n---\n")
    _write(forge, "nothing.md", "---\ndescription: no executor\n---\n")
    _write(forge, "unknown.md", "---\nforge_profile_name: nosuch\n---\n")
    settings = NeuronSettings(dirs=[str(genie), str(forge)])
    catalog = ProfileCatalog(Settings(data_dir=tmp_path / "data"))
    with caplog.at_level(logging.WARNING):
        found = load_definitions(settings, catalog)
    assert sorted(found) == ["extra", "forge", "master", "review", "wish"]
    assert found["wish"].append_prompt == "Ours." and found["wish"].model == "m1"
    assert found["wish"].executor == "command" and found["wish"].source.endswith(".forge/wish.md")
    assert catalog.get("neuron:wish").append_prompt == "Ours."
    warnings = caplog.text
    assert "ignoring unknown front matter keys ['genie']" in warnings
    for broken in ("Bad Name.md", "both.md", "nothing.md", "unknown.md"):
        assert f"skipping neuron file {forge / broken}" in warnings
    assert str(EXAMPLES_DIR) not in warnings  # the shipped examples all load

    only_ours = load_definitions(
        NeuronSettings(dirs=[str(forge)], examples=False),
        ProfileCatalog(Settings(data_dir=tmp_path / "data")),
    )
    assert sorted(only_ours) == ["extra", "wish"]


# A run long enough that its operations outnumber what a kept document remembers (256).
LONG_RUN = [
    *RUN[:-1],
    *(_entry(len(RUN) + i, kind="assistant_message", text=f"m{i}") for i in range(150)),
    {**RUN[-1], "seq": len(RUN) + 150},
]


def _drafts(events: list[dict[str, Any]]) -> list[EventDraft]:
    drafts = []
    for event in events:
        fields = {k: v for k, v in event.items() if k not in ("seq", "request_id")}
        if "usage" in fields:
            fields["usage"] = Usage(**fields["usage"])
        drafts.append(EventDraft(request_id="r1", **fields))
    return drafts


def _fold_to(events: list[dict[str, Any]], version: int) -> dict[str, Any]:
    """The document after `version` operations of `events` (the run's prompt is "hi")."""
    doc = empty_document("n", "ag_1", None)
    done = 0
    for event in events:
        prompt = "hi" if event["event_type"] == "agent.status" else None
        for op in ops_for(doc, event, prompt=prompt):
            if done == version:
                return doc
            apply_op(doc, op)
            done += 1
    return doc


@pytest.mark.parametrize("db", ["sqlite", "postgres"], indirect=True)
async def test_a_stream_resumes_at_any_version_of_a_stored_log(db: Database) -> None:
    await agent_with_running_run(db, webhook_url=None)
    log = EventLog(db, EventBus())
    half = len(LONG_RUN) // 2
    await log.append("ag_1", _drafts(LONG_RUN[:half]))
    agents = cast(AgentService, None)  # not used to fold or stream

    async def stored(after: int) -> AsyncIterator[Sequence[StoredEvent]]:
        # What `follow_log` starts with; the stream then waits for live events, not here.
        yield await log.read_stored("ag_1", after=after, limit=1000)

    def service() -> NeuronService:
        return NeuronService(NeuronSettings(), db, log, EventBus(), agents, {})

    async def frames(neurons: NeuronService, version: int | None) -> list[dict[str, Any]]:
        stream = neurons.stream("n", "ag_1", None, version=version, pages=stored)
        return [json.loads(frame) async for step in stream for frame in step]

    # A replica that folded the first half (its kept document is behind the log), then the
    # rest of the run is stored.
    behind = service()
    halfway = await behind.fold("n", "ag_1", None)
    await log.append("ag_1", _drafts(LONG_RUN[half:]))

    [snapshot] = await frames(service(), None)
    assert snapshot["source"] == "snapshot" and snapshot["seq"] == len(LONG_RUN)
    assert snapshot["fold"] == FOLD
    final, total = snapshot["data"], snapshot["version"]
    assert final == _fold_to(LONG_RUN, total)
    assert final["messages"][0]["text"] == "hi"  # the run's message, from the runs table
    assert total > 256  # some versions are older than any operation a document keeps

    # A replica whose kept document is at the end of the log.
    ahead = service()
    await ahead.fold("n", "ag_1", None)

    # From any version (mid-event ones too), whether the replica folds the log, goes on from
    # a document behind, or sends kept operations, the operations after it lead to the same
    # document, with gapless versions.
    versions = sorted({*range(0, total + 1, 7), halfway.version, total - 256, total - 1, total})
    for version in versions:
        for neurons in (service(), behind, ahead):
            resumed = await frames(neurons, version)
            assert [f["version"] for f in resumed] == list(range(version + 1, total + 1))
            assert all(f["source"] == "diff" and f["fold"] == FOLD for f in resumed)
            doc = jsonpatch.apply_patch(_fold_to(LONG_RUN, version), [f["data"] for f in resumed])
            assert doc == final, version

    # A version past the end gets a snapshot.
    [again] = await frames(service(), total + 1)
    assert again["source"] == "snapshot" and again["data"] == final
