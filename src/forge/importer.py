"""`forge import`: bring sessions over from the file-based store users move from.

The store is a directory holding an index, `sessions.json` (`{"sessions": [...]}` or a bare list),
and one transcript log per session: `<id>.jsonl`, `sessions/<id>.jsonl` or `logs/<id>.log`, one
JSON object a line (`timestamp`, `type`: user | assistant | thinking | tool_use | tool_result |
system | error, and the text in `content`, `text` or `message`).

Each session becomes an agent (`stopped`, or `failed` when the source says so) whose metadata
names the source id (`imported_from`); each `user` line a run (succeeded, its prompt the text);
the other lines `agent.event` envelopes with normalized entries, and each run ends with an
`agent.complete`. A session already imported (same `imported_from`) is left alone, so importing a
directory twice imports nothing the second time. A session whose log is missing or has a line that
is not a JSON object is skipped and reported; nothing of it is written, so fixing the file and
importing again brings it in.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, insert, select

from forge.core import ids
from forge.core.eventlog import event_row
from forge.core.events import EventDraft, Usage, utc_timestamp
from forge.core.schemas import NAME_PATTERN
from forge.executors import EXECUTOR_CLASSES
from forge.executors import entries as build
from forge.store.db import Database
from forge.store.tables import AgentRow, EventRow, RunRow, utcnow

_AGENTS = cast(Table, AgentRow.__table__)
_RUNS = cast(Table, RunRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)

INDEX_NAME = "sessions.json"
# Where a session's log may be, relative to the store's directory, in the order tried.
LOG_PLACES = ("{id}.jsonl", "sessions/{id}.jsonl", "logs/{id}.log")
FAILED_STATUSES = frozenset({"failed", "error", "errored", "crashed"})
# Source agent names that are not spelled like Forge's executor kinds.
_EXECUTOR_ALIASES = {"claude": "claude_code", "claude-code": "claude_code", "gemini-cli": "gemini"}
_OWNER = re.compile(NAME_PATTERN)
# Ids become file names: nothing that could leave the directory.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$")


class ImportSourceError(Exception):
    """Raised when the store cannot be imported at all: its index is missing or is not a valid
    index (the message names the file, and the line where it can)."""


@dataclass(frozen=True)
class ImportedSession:
    source_id: str
    agent_id: str
    runs: int
    events: int


@dataclass(frozen=True)
class SkippedSession:
    """A session of the index left out, and why (`reason` names the file and line)."""

    source_id: str
    reason: str


@dataclass
class ImportReport:
    """What `import_sessions` did with each session of the index."""

    directory: Path
    total: int = 0
    imported: list[ImportedSession] = field(default_factory=list)
    already_imported: list[str] = field(default_factory=list)
    skipped: list[SkippedSession] = field(default_factory=list)


class BrokenLog(Exception):
    """A session's log cannot be read; the message names the file and line."""


ProgressCallback = Callable[[int, int], None]


async def import_sessions(
    db: Database,
    directory: str | Path,
    *,
    owner_default: str,
    progress: ProgressCallback | None = None,
    progress_every: int = 100,
) -> ImportReport:
    """Import the sessions of the store in `directory` into `db` (migrated), one transaction a
    session. `progress(done, total)` is called every `progress_every` sessions and at the end.
    Raises `ImportSourceError` for a missing or invalid index."""
    root = Path(directory)
    entries = await asyncio.to_thread(read_index, root)
    report = ImportReport(directory=root, total=len(entries))
    known = await _imported_ids(db)
    for done, (position, raw) in enumerate(entries, start=1):
        await _import_one(db, root, position, raw, owner_default, known, report)
        if progress is not None and (done % progress_every == 0 or done == len(entries)):
            progress(done, len(entries))
    return report


def read_index(root: Path) -> list[tuple[int, Any]]:
    """The index's session entries with their positions (from 1). Raises `ImportSourceError`."""
    path = root / INDEX_NAME
    if not root.is_dir():
        raise ImportSourceError(f"{root}: not a directory")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ImportSourceError(f"{path}: not found (the store's index)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportSourceError(f"{path}: cannot be read: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportSourceError(
            f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        ) from exc
    if isinstance(data, dict):
        data = data.get("sessions")
    if not isinstance(data, list):
        raise ImportSourceError(
            f'{path}: expected {{"sessions": [...]}} or a list of sessions, '
            f"got {type(data).__name__}"
        )
    return list(enumerate(data, start=1))


async def _imported_ids(db: Database) -> set[str]:
    """The source ids of the sessions imported before."""
    source = AgentRow.metadata_["imported_from"].as_string()
    async with db.read() as session:
        rows = await session.scalars(select(source).where(source.is_not(None)))
        return set(rows)


async def _import_one(
    db: Database,
    root: Path,
    position: int,
    raw: Any,
    owner_default: str,
    known: set[str],
    report: ImportReport,
) -> None:
    if not isinstance(raw, dict):
        report.skipped.append(
            SkippedSession(f"#{position}", _where(root, position, "not an object"))
        )
        return
    source_id = _text(raw.get("id"))
    if not source_id:
        report.skipped.append(SkippedSession(f"#{position}", _where(root, position, "no id")))
        return
    if source_id in known:
        report.already_imported.append(source_id)
        return
    if not _SAFE_ID.match(source_id):
        reason = _where(root, position, f"id {source_id!r} cannot name a log file")
        report.skipped.append(SkippedSession(source_id, reason))
        return
    owner = _text(raw.get("owner_id") or raw.get("owner") or raw.get("user_id")) or owner_default
    if not _OWNER.match(owner):
        reason = _where(root, position, f"owner {owner!r} is not a valid owner name")
        report.skipped.append(SkippedSession(source_id, reason))
        return
    try:
        lines = await asyncio.to_thread(_read_log, root, source_id)
        plan = _plan(raw, source_id, owner, lines)
    except BrokenLog as exc:
        report.skipped.append(SkippedSession(source_id, str(exc)))
        return
    async with db.write() as session:
        conn = await session.connection()
        await conn.execute(insert(_AGENTS), [plan.agent])
        await conn.execute(insert(_RUNS), plan.runs)
        if plan.events:
            await conn.execute(insert(_EVENTS), plan.events)
    known.add(source_id)
    report.imported.append(
        ImportedSession(source_id, plan.agent["id"], len(plan.runs), len(plan.events))
    )


def _where(root: Path, position: int, problem: str) -> str:
    return f"{root / INDEX_NAME}: session #{position}: {problem}"


# ---- reading a log -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    number: int
    data: dict[str, Any]


def _read_log(root: Path, source_id: str) -> list[_Line]:
    """The log's lines, blank ones left out. Raises `BrokenLog`."""
    tried = [root / place.format(id=source_id) for place in LOG_PLACES]
    path = next((p for p in tried if p.is_file()), None)
    if path is None:
        raise BrokenLog(f"no log: none of {', '.join(str(p) for p in tried)} exists")
    lines = []
    try:
        with path.open(encoding="utf-8") as stream:
            for number, text in enumerate(stream, start=1):
                if not text.strip():
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise BrokenLog(f"{path}: line {number}: invalid JSON: {exc.msg}") from exc
                if not isinstance(data, dict):
                    raise BrokenLog(f"{path}: line {number}: not a JSON object")
                lines.append(_Line(number, data))
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokenLog(f"{path}: cannot be read: {exc}") from exc
    return lines


# ---- turning a session into rows -----------------------------------------------------------------


@dataclass
class _Plan:
    agent: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Run:
    prompt: str
    at: datetime
    lines: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list)


def _plan(raw: dict[str, Any], source_id: str, owner: str, lines: list[_Line]) -> _Plan:
    """The agent, run and event rows of one session."""
    agent_id = ids.agent_id()
    profile = _text(raw.get("agent") or raw.get("profile")) or "default"
    executor = _executor_kind(profile)
    session_id = _text(raw.get("executor_session_id") or raw.get("claude_session_id")) or None
    runs = _split_runs(lines, _time(raw.get("created_at")))
    first = runs[0].at if runs else utcnow()
    created = _time(raw.get("created_at")) or first
    last_line = max((at for run in runs for at, _ in run.lines), default=None)
    updated = _time(raw.get("updated_at")) or last_line or created
    failed = _text(raw.get("status")).lower() in FAILED_STATUSES
    title = _text(raw.get("title")) or None
    agent = {
        "id": agent_id,
        "owner_id": owner,
        "profile": profile[:128],
        "executor": executor,
        "status": "failed" if failed else "stopped",
        "repo": _text(raw.get("repo")) or None,
        "branch": _text(raw.get("branch")) or None,
        "workspace_path": _text(raw.get("worktree_path") or raw.get("workspace_path")) or None,
        "metadata": {"imported_from": source_id, "title": title},
        "executor_session_id": session_id,
        "last_seq": 0,
        "runner_ack": 0,
        "error_message": (_text(raw.get("error")) or "failed before the import")
        if failed
        else None,
        "created_at": created,
        "updated_at": updated,
    }
    plan = _Plan(agent=agent)
    seq = 0
    for number, run in enumerate(runs, start=1):
        request_id = f"import-{number:05d}"
        finished = run.lines[-1][0] if run.lines else run.at
        plan.runs.append(
            {
                "agent_id": agent_id,
                "request_id": request_id,
                "owner_id": owner,
                "prompt": run.prompt,
                "body_hash": hashlib.sha256(run.prompt.encode()).hexdigest(),
                "status": "succeeded",
                "priority": 0,
                "interrupt_requested": False,
                "outcome": "succeeded",
                "created_at": run.at,
                "started_at": run.at,
                "finished_at": finished,
            }
        )
        pairs = _pair_tools(run.lines)
        answered = {id(result) for result in pairs.values()}
        drafts = [
            EventDraft(
                event_type="agent.event",
                request_id=request_id,
                session_id=session_id,
                timestamp=utc_timestamp(at),
                executor=executor,
                executor_event_type=_text(data.get("type")) or None,
                event=data,
                entry=entry,
            )
            for at, data in run.lines
            if (entry := _entry(data, pairs, answered)) is not None
        ]
        drafts.append(
            EventDraft(
                event_type="agent.complete",
                request_id=request_id,
                session_id=session_id,
                timestamp=utc_timestamp(finished),
                executor=executor,
                outcome="succeeded",
                usage=Usage(),
                message="imported",
            )
        )
        for draft in drafts:
            seq += 1
            plan.events.append(_event_row(agent_id, seq, draft))
    agent["last_seq"] = seq
    return plan


def _split_runs(lines: list[_Line], created: datetime | None) -> list[_Run]:
    """One run a `user` line. Lines before the first go to the first run (after its message),
    or to a run with an empty prompt when the log has no `user` line."""
    runs: list[_Run] = []
    leading: list[tuple[datetime, dict[str, Any]]] = []
    previous = created or utcnow()
    for line in lines:
        at = _time(line.data.get("timestamp") or line.data.get("time")) or previous
        previous = at
        if _text(line.data.get("type")).lower() == "user":
            runs.append(_Run(prompt=_content(line.data), at=at))
            if leading:
                runs[0].lines.extend(leading)
                leading = []
        elif runs:
            runs[-1].lines.append((at, line.data))
        else:
            leading.append((at, line.data))
    if leading:
        runs.append(_Run(prompt="", at=leading[0][0], lines=leading))
    return runs


def _pair_tools(
    run_lines: list[tuple[datetime, dict[str, Any]]],
) -> dict[int, dict[str, Any]]:
    """The `tool_result` line answering each `tool_use` line (keyed by `id()` of the call): the
    one with its id, else (no id on either) the first unanswered call's."""
    pairs: dict[int, dict[str, Any]] = {}
    by_id: dict[str, dict[str, Any]] = {}
    anonymous: deque[dict[str, Any]] = deque()
    for _, data in run_lines:
        kind = _text(data.get("type")).lower()
        if kind == "tool_use":
            call_id = _call_id(data)
            if call_id:
                by_id[call_id] = data
            else:
                anonymous.append(data)
        elif kind == "tool_result":
            result_id = _call_id(data)
            call = by_id.pop(result_id, None) if result_id else None
            if call is None and not result_id and anonymous:
                call = anonymous.popleft()
            if call is not None:
                pairs[id(call)] = data
    return pairs


def _entry(
    data: dict[str, Any], pairs: dict[int, dict[str, Any]], answered: set[int]
) -> dict[str, Any] | None:
    """The normalized entry of one line; None for a `tool_result` (folded into its call)."""
    kind = _text(data.get("type")).lower()
    text = _content(data)
    if kind == "assistant":
        return build.assistant_message(text)
    if kind == "thinking":
        return build.thinking(text)
    if kind == "tool_use":
        return _tool_call(data, pairs.get(id(data)))
    if kind == "tool_result":
        # A result whose call is in the log is part of that call's entry.
        return None if id(data) in answered else _tool_call({}, data)
    if kind == "error":
        return build.error(text or "error")
    if kind == "system":
        return build.system(text)
    return build.system(text, source_type=kind or None)


def _tool_call(call: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    """One `tool_call` entry from a call and its result (either may be missing)."""
    name = _text(call.get("name") or call.get("tool") or call.get("tool_name"))
    if not name and result is not None:
        name = _text(result.get("name") or result.get("tool") or result.get("tool_name"))
    arguments = call.get("input", call.get("arguments", call.get("params")))
    command = path = None
    if isinstance(arguments, dict):
        command = _text(arguments.get("command") or arguments.get("cmd")) or None
        path = _text(arguments.get("file_path") or arguments.get("path")) or None
    output = _content(result) if result is not None else None
    error = None
    if result is None:
        error = "no result in the imported log"
    elif _is_error(result):
        error = output or "failed"
    return build.tool_call(
        name or "tool",
        "failed" if error is not None else "success",
        tool_call_id=_call_id(call) or (_call_id(result) if result else "") or None,
        input=arguments,
        output=output,
        command=command,
        path=path,
        detail=command or path,
        error=error,
    )


def _call_id(data: dict[str, Any]) -> str:
    return _text(data.get("tool_use_id") or data.get("tool_call_id") or data.get("id"))


def _is_error(result: dict[str, Any]) -> bool:
    status = _text(result.get("status")).lower()
    return bool(result.get("is_error")) or status in ("error", "failed", "failure")


def _event_row(agent_id: str, seq: int, draft: EventDraft) -> dict[str, Any]:
    envelope = draft.seal(agent_id=agent_id, seq=seq, event_id=ids.event_id())
    body = json.dumps(envelope.to_wire(), separators=(",", ":"))
    return event_row(envelope, draft, body, _time(draft.timestamp) or utcnow())


# ---- values --------------------------------------------------------------------------------------


def _executor_kind(profile: str) -> str:
    """Forge's executor kind for the source's agent name (`command` when none matches)."""
    name = profile.strip().lower()
    name = _EXECUTOR_ALIASES.get(name, name.replace("-", "_"))
    return name if name in EXECUTOR_CLASSES else "command"


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _content(data: dict[str, Any]) -> str:
    """A line's text: `content`, `text`, `message` or `output`, flattening content blocks."""
    for key in ("content", "text", "message", "output"):
        if key in data and data[key] is not None:
            return "".join(_flatten(data[key]))
    return ""


def _flatten(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        parts = [part for item in value for part in _flatten(item)]
        yield "\n".join(parts)
    elif isinstance(value, dict):
        inner = value.get("text", value.get("content"))
        yield from _flatten(inner) if inner is not None else [json.dumps(value)]
    elif value is not None:
        yield str(value)


def _time(value: Any) -> datetime | None:
    """An aware UTC time from ISO 8601 (naive read as UTC) or seconds/milliseconds since the
    epoch; None when missing or unreadable."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
