"""Sessions: agents seen as the units of work a developer queues, leaves and comes back to.

A session is an agent (same id). Its status says where the work stands:

| session status | the agent |
| --- | --- |
| `provisioning` | its workspace and sandbox are being made |
| `queued` | ready, with runs waiting for a slot |
| `running` | a run is executing |
| `idle` | ready, nothing queued |
| `stopped` | its sandbox was stopped (idle or lost runner); its workspace is kept |
| `failed` | provisioning failed |
| `completed` | deleted by its owner: history kept, no more runs |

The transcript is the session's runs in order: each message as sent, then the normalized entries
(`entry` of every `agent.event`) and how the run ended.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, and_, exists, func, or_, select

from forge.core.errors import NotFound
from forge.store.db import Database
from forge.store.tables import AgentRow, EventRow, RunRow

SessionStatus = Literal[
    "queued", "provisioning", "running", "idle", "stopped", "completed", "failed"
]
# Events read from the log at a time while building a transcript.
TRANSCRIPT_PAGE = 2000


class SessionUsage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0


class Session(BaseModel):
    """A session as `GET /sessions` shows it."""

    id: str
    owner_id: str
    profile: str
    executor: str
    status: SessionStatus
    repo: str | None = None
    base_ref: str | None = None
    branch: str | None = None
    workspace_path: str | None = None
    executor_session_id: str | None = None
    runs: int = Field(description="Messages sent to the session.")
    queued_runs: int
    usage: SessionUsage
    error: str | None = None
    created_at: datetime
    updated_at: datetime


class SessionPage(BaseModel):
    sessions: list[Session]
    total: int = Field(description="Sessions matching the filters, on every page.")
    next_cursor: str | None = None


class TranscriptEntry(BaseModel):
    """One line of a transcript: a `user_message`, an entry of the executor's output (its
    `kind`: assistant_message, thinking, tool_call, ...) or a `run_end`."""

    request_id: str
    seq: int | None = Field(default=None, description="The event's seq (None for the message).")
    timestamp: str
    kind: str
    entry: dict[str, Any]


class Transcript(BaseModel):
    session_id: str
    entries: list[TranscriptEntry]


class SessionService:
    """Reads sessions from the agents, runs and events tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def list_sessions(
        self,
        owner_id: str | None,
        *,
        profile: str | None = None,
        status: SessionStatus | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        filters: list[ColumnElement[bool]] = []
        if owner_id is not None:
            filters.append(AgentRow.owner_id == owner_id)
        if profile is not None:
            filters.append(AgentRow.profile == profile)
        if status is not None:
            filters.append(_status_filter(status))
        if created_after is not None:
            filters.append(AgentRow.created_at >= created_after)
        if created_before is not None:
            filters.append(AgentRow.created_at < created_before)
        async with self.db.read() as session:
            total = await session.scalar(select(func.count()).select_from(AgentRow).where(*filters))
            query = select(AgentRow).where(*filters)
            if cursor is not None:
                query = query.where(AgentRow.id < cursor)
            rows = list(await session.scalars(query.order_by(AgentRow.id.desc()).limit(limit + 1)))
            more = len(rows) > limit
            rows = rows[:limit]
            runs = await _run_summaries(session, [row.id for row in rows])
        return SessionPage(
            sessions=[_session(row, runs.get(row.id)) for row in rows],
            total=int(total or 0),
            next_cursor=rows[-1].id if more and rows else None,
        )

    async def get(self, session_id: str, owner_id: str | None) -> Session:
        async with self.db.read() as session:
            row = await session.get(AgentRow, session_id)
            if row is None or (owner_id is not None and row.owner_id != owner_id):
                raise NotFound(f"no session {session_id}")
            runs = await _run_summaries(session, [row.id])
        return _session(row, runs.get(row.id))

    async def transcript(self, session_id: str, owner_id: str | None) -> Transcript:
        await self.get(session_id, owner_id)
        entries: list[TranscriptEntry] = []
        async with self.db.read() as session:
            runs = list(
                await session.scalars(
                    select(RunRow)
                    .where(RunRow.agent_id == session_id)
                    .order_by(RunRow.created_at, RunRow.id)
                )
            )
            by_request: dict[str, list[TranscriptEntry]] = {run.request_id: [] for run in runs}
            after = 0
            while True:
                page = list(
                    await session.scalars(
                        select(EventRow)
                        .where(EventRow.agent_id == session_id, EventRow.seq > after)
                        .order_by(EventRow.seq)
                        .limit(TRANSCRIPT_PAGE)
                    )
                )
                for event in page:
                    line = _transcript_line(event)
                    if line is not None and event.request_id in by_request:
                        by_request[event.request_id].append(line)
                if len(page) < TRANSCRIPT_PAGE:
                    break
                after = page[-1].seq
        for run in runs:
            # The setup run (see AgentService) has no message: it is marked as the setup.
            kind = "setup" if run.request_id.startswith("setup_") else "user_message"
            entries.append(
                TranscriptEntry(
                    request_id=run.request_id,
                    timestamp=_iso(run.created_at),
                    kind=kind,
                    entry={"kind": kind, "text": run.prompt},
                )
            )
            entries.extend(by_request[run.request_id])
        return Transcript(session_id=session_id, entries=entries)


def transcript_markdown(transcript: Transcript) -> str:
    """The transcript as Markdown: one section a message, tool calls as list items."""
    lines = [f"# Session {transcript.session_id}", ""]
    for line in transcript.entries:
        entry = line.entry
        text = str(entry.get("text") or "").strip()
        if line.kind == "user_message":
            lines += [f"## {line.request_id}", "", "**You:**", "", _quote(text), ""]
        elif line.kind == "setup":
            lines += ["## Setup", ""]
        elif line.kind == "assistant_message":
            lines += ["**Agent:**", "", text, ""]
        elif line.kind == "thinking":
            lines += [f"*Thinking:* {text}", ""]
        elif line.kind == "tool_call":
            if entry.get("status") == "running":
                continue
            what = entry.get("command") or entry.get("path") or entry.get("detail") or ""
            status = entry.get("status", "")
            lines.append(f"- `{entry.get('tool', 'tool')}` {what} ({status})".rstrip())
            lines.append("")
        elif line.kind == "run_end":
            lines += [f"*Run ended: {entry.get('outcome')}*: {entry.get('message') or ''}", ""]
        elif line.kind == "error":
            lines += [f"**Error:** {text or entry.get('message', '')}", ""]
        elif text:
            lines += [f"*{line.kind}:* {text}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.splitlines()) or ">"


def _transcript_line(event: EventRow) -> TranscriptEntry | None:
    body = json.loads(event.body)
    request_id = event.request_id or ""
    timestamp = str(body.get("timestamp", ""))
    if event.event_type == "agent.event" and isinstance(body.get("entry"), dict):
        entry = body["entry"]
        return TranscriptEntry(
            request_id=request_id,
            seq=event.seq,
            timestamp=timestamp,
            kind=str(entry.get("kind", "event")),
            entry=entry,
        )
    if event.is_final:
        end = {
            "kind": "run_end",
            "outcome": body.get("outcome")
            or ("error" if event.event_type == "agent.error" else ""),
            "message": body.get("message") or (body.get("error") or {}).get("message"),
        }
        return TranscriptEntry(
            request_id=request_id, seq=event.seq, timestamp=timestamp, kind="run_end", entry=end
        )
    return None


def _status_filter(status: SessionStatus) -> ColumnElement[bool]:
    live = AgentRow.deleted_at.is_(None)
    queued_run = exists().where(RunRow.agent_id == AgentRow.id, RunRow.status == "queued")
    # A run is marked running a moment before its agent is: the session is running already.
    running_run = exists().where(RunRow.agent_id == AgentRow.id, RunRow.status == "running")
    ready = and_(live, AgentRow.status == "ready")
    return {
        "provisioning": and_(live, AgentRow.status == "provisioning"),
        "running": or_(and_(live, AgentRow.status == "running"), and_(ready, running_run)),
        "queued": and_(ready, queued_run, ~running_run),
        "idle": and_(ready, ~queued_run, ~running_run),
        "stopped": and_(live, AgentRow.status == "stopped"),
        "failed": and_(live, AgentRow.status == "failed"),
        "completed": AgentRow.deleted_at.is_not(None),
    }[status]


class _RunSummary:
    def __init__(self) -> None:
        self.runs = 0
        self.queued = 0
        self.running = 0
        self.usage = SessionUsage()


async def _run_summaries(session: Any, agent_ids: Sequence[str]) -> dict[str, _RunSummary]:
    summaries: dict[str, _RunSummary] = {}
    if not agent_ids:
        return summaries
    rows = await session.execute(
        select(RunRow.agent_id, RunRow.status, RunRow.usage).where(RunRow.agent_id.in_(agent_ids))
    )
    for agent_id, status, usage in rows:
        summary = summaries.setdefault(agent_id, _RunSummary())
        summary.runs += 1
        summary.queued += status == "queued"
        summary.running += status == "running"
        if isinstance(usage, dict):
            for name in (
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
            ):
                setattr(
                    summary.usage, name, getattr(summary.usage, name) + int(usage.get(name) or 0)
                )
            summary.usage.cost_usd += float(usage.get("cost_usd") or 0.0)
    return summaries


def _session(row: AgentRow, runs: _RunSummary | None) -> Session:
    summary = runs or _RunSummary()
    return Session(
        id=row.id,
        owner_id=row.owner_id,
        profile=row.profile,
        executor=row.executor,
        status=_status_of(row, summary),
        repo=row.repo,
        base_ref=row.base_ref,
        branch=row.branch,
        workspace_path=row.workspace_path,
        executor_session_id=row.executor_session_id,
        runs=summary.runs,
        queued_runs=summary.queued,
        usage=summary.usage,
        error=row.error_message,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _status_of(row: AgentRow, summary: _RunSummary) -> SessionStatus:
    if row.deleted_at is not None:
        return "completed"
    if row.status == "ready":
        # A run is marked running a moment before its agent is.
        if summary.running:
            return "running"
        return "queued" if summary.queued else "idle"
    if row.status in ("provisioning", "running", "stopped", "failed"):
        return row.status  # type: ignore[return-value]
    return "idle"


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
