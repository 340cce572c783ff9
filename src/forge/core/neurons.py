"""Neurons: named, long-lived agents a team talks to, and their live state documents.

A neuron is defined by a Markdown file (YAML front matter + its instructions) and becomes a
profile named `neuron:<name>`. For each owner and project (a repository, or none) it has one
agent, made on first use and kept: a stopped one is resumed by the next message, a deleted or
failed one is replaced.

Its state document (status, current thinking, messages, sections, todos, files changed,
usage) is a fold of the agent's event log. `ops_for` turns one event into RFC 6902 operations
on the document; applying them in order is the only way the document changes, so a document
is fully described by the number of operations applied to it (its `version`), on every replica
and after every restart. A stream sends a snapshot and then each operation; a client that
reconnects with the version it reached gets the next operation, even in the middle of an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import re
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from forge.config import NeuronSettings
from forge.core.agents import SETUP_PREFIX, AgentService
from forge.core.auth import Caller
from forge.core.errors import InvalidRequest, NotFound
from forge.core.eventlog import EventBus, EventLog, StoredEvent
from forge.core.events import utc_timestamp
from forge.core.profiles import Profile, ProfileCatalog, parse_front_matter
from forge.core.schemas import AgentCreate, MessageAccepted, MessageCreate
from forge.patch import apply_operation
from forge.store.db import Database
from forge.store.tables import AgentRow, NeuronRow, RunRow, utcnow

log = logging.getLogger(__name__)

NEURON_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_NEURON_NAME = re.compile(NEURON_NAME_PATTERN)
PROFILE_PREFIX = "neuron:"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "neurons"
NEURON_FILE_KEYS = frozenset(
    {"name", "description", "forge_profile_name", "executor", "variant", "model"}
)
MAX_PROJECT_CHARS = 1024
# What a document keeps: the latest messages and changed files, texts cut at a length (the
# transcript has them whole).
MAX_MESSAGES = 200
MAX_FILES = 500
MAX_TEXT = 8192
MAX_THINKING = 4096
MAX_TODOS = 100
MAX_DETAIL = 500
TRUNCATED = "… [truncated]"
# Changes whenever `ops_for` (or a bound above) would fold a log differently: a client resuming
# with another `fold` gets a snapshot, not operations for a document it does not have.
FOLD = "1"
# How many documents a replica keeps folded in memory, and how many of each one's latest
# operations (for clients that resume a little behind).
_CACHE_SIZE = 64
_RECENT_OPS = 256
_PAGE = 500

Op = dict[str, Any]
NeuronStatus = Literal["idle", "working", "waiting_permission"]


# ---- definitions -----------------------------------------------------------------------------


def load_definitions(settings: NeuronSettings, catalog: ProfileCatalog) -> dict[str, Profile]:
    """Read the neuron files (the shipped examples first, then `settings.dirs` in order, a later
    file winning on a name) and register each as the profile `neuron:<name>` in `catalog`.
    Returns each neuron's profile (named as the neuron).
    A broken file is skipped with a warning naming it; it never stops the server."""
    folders = [EXAMPLES_DIR] if settings.examples else []
    folders += [Path(folder).expanduser() for folder in settings.dirs]
    found: dict[str, Profile] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.md")):
            try:
                profile = _neuron_profile(path, catalog)
            except (OSError, ValueError, InvalidRequest) as exc:
                log.warning("skipping neuron file %s: %s", path, exc)
                continue
            found[profile.name] = profile
    for name, profile in found.items():
        catalog.register(replace(profile, name=PROFILE_PREFIX + name))
    return found


def _neuron_profile(path: Path, catalog: ProfileCatalog) -> Profile:
    meta, body = parse_front_matter(path.read_text(encoding="utf-8"))
    unknown = sorted(set(meta) - NEURON_FILE_KEYS)
    if unknown:
        log.warning(
            "neuron file %s: ignoring unknown front matter keys %s (known: %s)",
            path,
            unknown,
            sorted(NEURON_FILE_KEYS),
        )
    name = str(meta.get("name") or path.stem).strip().lower()
    if not _NEURON_NAME.match(name):
        raise ValueError(f"its name {name!r} must match {NEURON_NAME_PATTERN}")
    if meta.get("forge_profile_name") is not None:
        if meta.get("executor") is not None:
            raise ValueError("give either `forge_profile_name` or `executor` (+ `variant`)")
        base = catalog.get(str(meta["forge_profile_name"]))
    elif meta.get("executor") is not None:
        variant = meta.get("variant")
        base = catalog.for_executor(str(meta["executor"]), str(variant) if variant else None)
    else:
        raise ValueError("its front matter needs `forge_profile_name` or `executor`")
    instructions = "\n\n".join(part for part in (base.append_prompt, body.strip()) if part)
    return replace(
        base,
        name=name,
        model=str(meta.get("model") or base.model),
        append_prompt=instructions,
        description=str(meta.get("description") or ""),
        source=str(path),
    )


# ---- the state document ----------------------------------------------------------------------


def empty_document(neuron: str, agent_id: str | None, project: str | None) -> dict[str, Any]:
    return {
        "neuron": neuron,
        "agent_id": agent_id,
        "project": project,
        "seq": 0,
        "status": "idle",
        "request_id": None,
        "thinking": "",
        "messages": [],
        "sections": [],
        "todos": [],
        "files_changed": [],
        "activity": None,
        "usage": {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cost_usd": 0.0,
            "runs": 0,
        },
        "outcome": None,
        "error": None,
    }


def ops_for(doc: dict[str, Any], event: dict[str, Any], *, prompt: str | None) -> list[Op]:
    """The operations that take `doc` (a document that has seen the events before this one)
    past `event`. Reads `doc`, never changes it. `prompt` is the message of the run `event`
    belongs to (the log does not carry what the user sent). Depends on nothing else, so a log
    folds to the same operations everywhere (see `FOLD`)."""
    ops: list[Op] = []

    def set_(key: str, value: Any) -> None:
        if doc[key] != value:
            ops.append({"op": "replace", "path": f"/{key}", "value": value})

    def message(role: str, text: str) -> None:
        value = {"role": role, "text": _clip(text, MAX_TEXT), "request_id": event.get("request_id")}
        ops.append({"op": "add", "path": "/messages/-", "value": {**value, "seq": event["seq"]}})
        if len(doc["messages"]) + 1 > MAX_MESSAGES:
            ops.append({"op": "remove", "path": "/messages/0"})

    event_type = event.get("event_type")
    request_id = event.get("request_id")
    if str(request_id or "").startswith(SETUP_PREFIX):
        pass  # the workspace's setup, before the first message: not part of the conversation
    elif event_type == "agent.status" and event.get("status") == "running":
        set_("status", "working")
        set_("request_id", request_id)
        set_("thinking", "")
        set_("activity", None)
        set_("error", None)
        if prompt is not None:
            message("user", prompt)
    elif event_type == "agent.event" and isinstance(event.get("entry"), dict):
        entry: dict[str, Any] = event["entry"]
        kind = entry.get("kind")
        if doc["status"] == "waiting_permission" and kind != "permission_request":
            set_("status", "working")
        if kind == "assistant_message" and str(entry.get("text") or "").strip():
            text = _clip(str(entry["text"]), MAX_TEXT)
            message("assistant", text)
            sections = markdown_sections(text)
            if sections:
                set_("sections", sections)
        elif kind == "thinking":
            set_("thinking", _clip(str(entry.get("text") or ""), MAX_THINKING))
        elif kind == "tool_call":
            set_("activity", _activity(entry, str(entry.get("status") or "")))
            path = entry.get("path")
            if (
                entry.get("action") == "file_edit"
                and entry.get("status") == "success"
                and isinstance(path, str)
                and path
                and path not in doc["files_changed"]
            ):
                ops.append({"op": "add", "path": "/files_changed/-", "value": path})
                if len(doc["files_changed"]) + 1 > MAX_FILES:
                    ops.append({"op": "remove", "path": "/files_changed/0"})
        elif kind == "permission_request":
            set_("status", "waiting_permission")
            set_("activity", _activity(entry, "pending_approval"))
        elif kind == "todo" and isinstance(entry.get("items"), list):
            items = [_todo(item) for item in entry["items"] if isinstance(item, dict)]
            set_("todos", items[:MAX_TODOS])
        elif kind == "error":
            set_(
                "error",
                _clip(str(entry.get("message") or entry.get("text") or "error"), MAX_DETAIL),
            )
    elif event_type in ("agent.complete", "agent.error"):
        set_("status", "idle")
        set_("request_id", None)
        set_("thinking", "")
        set_("activity", None)
        if event_type == "agent.complete":
            set_("outcome", event.get("outcome"))
        else:
            set_("outcome", "error")
            error = event.get("error") or {}
            message_ = str(error.get("message") or event.get("message") or "error")
            set_("error", _clip(message_, MAX_DETAIL))
        used = event.get("usage") or {}
        usage = dict(doc["usage"])
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
            usage[name] += int(used.get(name) or 0)
        usage["cost_usd"] = round(usage["cost_usd"] + float(used.get("cost_usd") or 0.0), 6)
        usage["runs"] += 1
        set_("usage", usage)
    set_("seq", event["seq"])
    return ops


def apply_op(doc: dict[str, Any], op: Op) -> None:
    """Apply one operation to `doc` in place (its value copied: the operation is kept and sent
    as it is)."""
    if "value" in op:
        op = {**op, "value": copy.deepcopy(op["value"])}
    apply_operation(doc, op)


def markdown_sections(text: str) -> list[dict[str, str]]:
    """The sections of a Markdown text: each heading's title and the text under it, until the
    next heading (none when the text has no headings)."""
    sections: list[dict[str, str]] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if heading:
            sections.append({"title": heading.group(1), "text": ""})
        elif sections:
            sections[-1]["text"] += line + "\n"
    for section in sections:
        section["text"] = section["text"].strip()
    return sections


def _activity(entry: dict[str, Any], status: str) -> dict[str, Any]:
    detail = _clip(str(entry.get("detail") or entry.get("command") or entry.get("path") or ""))
    return {"tool": _clip(str(entry.get("tool") or "tool")), "detail": detail, "status": status}


def _todo(item: dict[str, Any]) -> dict[str, Any]:
    content = item.get("content") or item.get("text") or item.get("step") or ""
    return {"content": _clip(str(content)), "status": _clip(str(item.get("status") or "pending"))}


def _clip(text: str, limit: int = MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


@dataclass
class Folded:
    """A document after `version` operations, the last of event `seq`; with its latest
    operations as (version, seq, operation)."""

    doc: dict[str, Any]
    seq: int = 0
    version: int = 0
    recent: deque[tuple[int, int, Op]] = field(default_factory=lambda: deque(maxlen=_RECENT_OPS))

    def apply(self, op: Op, seq: int) -> None:
        apply_op(self.doc, op)
        self.version += 1
        self.recent.append((self.version, seq, op))

    def copy(self) -> Folded:
        # The operations are never changed once made: the ring may share them.
        recent = deque(self.recent, maxlen=_RECENT_OPS)
        return Folded(copy.deepcopy(self.doc), self.seq, self.version, recent)


# ---- API shapes ------------------------------------------------------------------------------


class NeuronInfo(BaseModel):
    """A neuron as defined, and its agent for the caller and project (if it was used)."""

    name: str
    description: str = ""
    source: str = Field(description="The Markdown file it is defined in.")
    profile: str = Field(description="The profile its agent runs as: `neuron:<name>`.")
    executor: str
    model: str | None = None
    project: str | None = Field(default=None, description="The repository it works in.")
    agent_id: str | None = Field(default=None, description="Null until its first use.")
    status: str = Field(
        description="Its agent's status (provisioning, ready, running, stopped, failed), or "
        "not_started."
    )
    last_seq: int = 0


class Neuron(NeuronInfo):
    state: dict[str, Any] = Field(description="The state document (see docs/neurons.md).")
    version: int = Field(description="Operations applied to the state document so far.")
    fold: str = Field(
        default=FOLD, description="How the document is built: send it back with `version`."
    )


class NeuronList(BaseModel):
    neurons: list[NeuronInfo]


class NeuronMessage(MessageCreate):
    """Body of `POST /api/v1/neurons/{name}/messages`: a message, and the project."""

    project: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PROJECT_CHARS,
        description="Absolute path of the repository the neuron works in; its agent for this "
        "project (one per owner, project and neuron). None: no repository.",
    )

    def message(self) -> MessageCreate:
        return MessageCreate.model_validate(self.model_dump(exclude={"project"}))


class NeuronAccepted(MessageAccepted):
    neuron: str


# ---- the service -----------------------------------------------------------------------------


class NeuronService:
    def __init__(
        self,
        settings: NeuronSettings,
        db: Database,
        eventlog: EventLog,
        bus: EventBus,
        agents: AgentService,
        definitions: dict[str, Profile],
    ) -> None:
        self.settings = settings
        self.db = db
        self.eventlog = eventlog
        self.bus = bus
        self.agents = agents
        self.definitions = definitions
        self._folded: OrderedDict[str, Folded] = OrderedDict()
        # One agent is made at a time per neuron, owner and project (the others wait, then find
        # it). A lock lives as long as someone holds or waits for it.
        self._making: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def definition(self, name: str) -> Profile:
        profile = self.definitions.get(name.lower())
        if profile is None:
            known = ", ".join(sorted(self.definitions)) or "none"
            raise NotFound(f"no neuron {name!r}; neurons: {known}", code="neuron_not_found")
        return profile

    async def list_neurons(self, owner_id: str, project: str | None) -> NeuronList:
        project_key = _project_key(project)
        async with self.db.read() as session:
            rows = {
                row.name: row
                for row in await session.scalars(
                    select(NeuronRow).where(
                        NeuronRow.owner_id == owner_id, NeuronRow.project == project_key
                    )
                )
            }
            agents = await self._agents(session, [row.agent_id for row in rows.values()])
        return NeuronList(
            neurons=[
                self._info(profile, project, agents.get(getattr(rows.get(name), "agent_id", "")))
                for name, profile in sorted(self.definitions.items())
            ]
        )

    async def get(self, name: str, owner_id: str, project: str | None) -> Neuron:
        profile = self.definition(name)
        agent_id = await self._agent_id(profile.name, owner_id, _project_key(project))
        agent = None
        if agent_id is not None:
            async with self.db.read() as session:
                agent = (await self._agents(session, [agent_id])).get(agent_id)
        info = self._info(profile, project, agent)
        if agent is None:
            folded = Folded(empty_document(profile.name, None, project))
        else:
            folded = await self.fold(profile.name, agent.id, project)
        return Neuron(**info.model_dump(), state=folded.doc, version=folded.version)

    async def send(
        self, name: str, *, owner_id: str, project: str | None, body: MessageCreate
    ) -> NeuronAccepted:
        profile = self.definition(name)
        agent_id = await self.agent_for(profile.name, owner_id, project)
        accepted = await self.agents.send_message(agent_id, owner_id, body)
        return NeuronAccepted(**accepted.model_dump(), neuron=profile.name)

    async def agent_for(self, name: str, owner_id: str, project: str | None) -> str:
        """The neuron's agent for `owner_id` and `project`: the one it has, unless that was
        deleted or failed, else a new one. Requests racing for it get the same one: in one
        process they wait their turn; across replicas the loser's agent is deleted."""
        profile = self.definition(name)
        key = _project_key(project)
        lock = self._making.setdefault((owner_id, key, profile.name), asyncio.Lock())
        async with lock:
            return await self._agent_for(profile.name, owner_id, key)

    async def _agent_for(self, name: str, owner_id: str, key: str) -> str:
        for _ in range(3):
            async with self.db.read() as session:
                row = await session.get(NeuronRow, (owner_id, key, name))
                agent = await session.get(AgentRow, row.agent_id) if row is not None else None
            if row is not None and agent is not None and _usable(agent):
                return row.agent_id
            created = await self.agents.create(
                AgentCreate(
                    profile=PROFILE_PREFIX + name,
                    repo=key or None,
                    metadata={"neuron": name, "title": f"neuron {name}"},
                ),
                owner_id=owner_id,
            )
            if await self._claim(owner_id, key, name, created.id, replacing=row):
                log.info(
                    "neuron %s of %s (project %r) is agent %s", name, owner_id, key, created.id
                )
                return created.id
            # Another replica made one first: use that one, drop ours.
            await self.agents.delete(created.id, owner_id, graceful=False, purge=True)
        raise RuntimeError(f"could not settle the agent of neuron {name!r}")

    async def current_agent(self, name: str, owner_id: str, project: str | None) -> str | None:
        """The agent the neuron has now for `owner_id` and `project` (None before first use)."""
        return await self._agent_id(self.definition(name).name, owner_id, _project_key(project))

    async def _claim(
        self,
        owner_id: str,
        project: str,
        name: str,
        agent_id: str,
        *,
        replacing: NeuronRow | None,
    ) -> bool:
        try:
            async with self.db.write() as session:
                if replacing is None:
                    session.add(
                        NeuronRow(owner_id=owner_id, project=project, name=name, agent_id=agent_id)
                    )
                    return True
                result = await session.execute(
                    update(NeuronRow)
                    .where(
                        NeuronRow.owner_id == owner_id,
                        NeuronRow.project == project,
                        NeuronRow.name == name,
                        NeuronRow.agent_id == replacing.agent_id,
                    )
                    .values(agent_id=agent_id, updated_at=utcnow())
                )
                return bool(getattr(result, "rowcount", 0))
        except IntegrityError:
            return False

    async def _agent_id(self, name: str, owner_id: str, project: str) -> str | None:
        async with self.db.read() as session:
            row = await session.get(NeuronRow, (owner_id, project, name))
        return row.agent_id if row is not None else None

    async def _agents(self, session: Any, agent_ids: Iterable[str]) -> dict[str, AgentRow]:
        wanted = [agent_id for agent_id in agent_ids if agent_id]
        if not wanted:
            return {}
        rows = await session.scalars(select(AgentRow).where(AgentRow.id.in_(wanted)))
        return {row.id: row for row in rows if row.deleted_at is None}

    def _info(self, profile: Profile, project: str | None, agent: AgentRow | None) -> NeuronInfo:
        return NeuronInfo(
            name=profile.name,
            description=profile.description,
            source=profile.source,
            profile=PROFILE_PREFIX + profile.name,
            executor=profile.executor,
            model=profile.model or None,
            project=project,
            agent_id=agent.id if agent is not None else None,
            status=agent.status if agent is not None else "not_started",
            last_seq=agent.last_seq if agent is not None else 0,
        )

    # ---- documents ---------------------------------------------------------------------------

    async def fold(self, name: str, agent_id: str, project: str | None) -> Folded:
        """The document of `agent_id` after every stored event."""
        folded = self._cached(agent_id) or Folded(empty_document(name, agent_id, project))
        async for _ in self._fold_stored(folded, agent_id):
            pass
        self._remember(agent_id, folded)
        return folded

    async def stream(
        self,
        name: str,
        agent_id: str,
        project: str | None,
        *,
        version: int | None,
        pages: Callable[[int], AsyncIterator[Sequence[StoredEvent]]],
    ) -> AsyncGenerator[list[str]]:
        """Frames for a client: a snapshot (or, when `version` is one this document passed
        through, the operations after it), then the operations of every later event.
        `pages(after_seq)` follows the log live. Each item is the frames of one step."""
        folded: Folded | None = None
        frames: list[str] = []
        if version is not None:
            folded, frames = await self._at_version(name, agent_id, project, version)
        if folded is None:
            folded = await self.fold(name, agent_id, project)
            frames = [self._frame(name, "snapshot", folded.version, folded.seq, folded.doc)]
        if frames:
            yield frames
        async for page in pages(folded.seq):
            events = [json.loads(event.body) for event in page]
            prompts = await self._prompts(agent_id, events)
            frames = []
            for event in events:
                frames += self._send(name, folded, self._ops(folded, event, prompts))
            if frames:
                self._remember(agent_id, folded)
                yield frames

    def _send(self, name: str, folded: Folded, ops: Sequence[Op]) -> list[str]:
        """Apply `ops` (the rest of an event's operations) and return their frames."""
        seq = next((op["value"] for op in ops if op["path"] == "/seq"), folded.doc["seq"])
        frames = []
        for op in ops:
            folded.apply(op, seq)
            frames.append(self._frame(name, "diff", folded.version, seq, op))
        folded.seq = folded.doc["seq"]
        return frames

    def _ops(self, folded: Folded, event: dict[str, Any], prompts: dict[str, str]) -> list[Op]:
        return ops_for(folded.doc, event, prompt=prompts.get(event.get("request_id") or ""))

    async def _at_version(
        self, name: str, agent_id: str, project: str | None, version: int
    ) -> tuple[Folded | None, list[str]]:
        """A document to go on from, for a client that has applied `version` operations, and
        the frames that bring the client to it; (None, []) when the log never reached
        `version`. From the kept document when it is there and `version` is among its latest
        operations (or before it); else the log is folded up to `version`."""
        cached = self._cached(agent_id)
        if cached is not None and version <= cached.version:
            behind = [entry for entry in cached.recent if entry[0] > version]
            if len(behind) == cached.version - version:
                frames = [self._frame(name, "diff", v, seq, op) for v, seq, op in behind]
                return cached, frames
        start = cached if cached is not None and cached.version <= version else None
        folded = start or Folded(empty_document(name, agent_id, project))
        steps = self._fold_stored(folded, agent_id, stop_at=version)
        async with contextlib.aclosing(steps):
            async for rest in steps:
                return folded, self._send(name, folded, rest)
        if folded.version == version:
            return folded, []
        return None, []

    async def _fold_stored(
        self, folded: Folded, agent_id: str, *, stop_at: int | None = None
    ) -> AsyncGenerator[list[Op]]:
        """Apply the stored events after `folded.seq`. With `stop_at`: stop once the document
        reaches that version, yielding the event's operations still to apply (if any)."""
        while True:
            page = await self.eventlog.read_stored(agent_id, after=folded.seq, limit=_PAGE)
            events = [json.loads(stored.body) for stored in page]
            prompts = await self._prompts(agent_id, events)
            for stored, event in zip(page, events, strict=True):
                ops = self._ops(folded, event, prompts)
                if stop_at is not None and folded.version + len(ops) > stop_at:
                    done = stop_at - folded.version
                    for op in ops[:done]:
                        folded.apply(op, stored.seq)
                    yield ops[done:]
                    return
                for op in ops:
                    folded.apply(op, stored.seq)
                folded.seq = stored.seq
            if len(page) < _PAGE:
                return

    async def _prompts(self, agent_id: str, events: Sequence[dict[str, Any]]) -> dict[str, str]:
        """The messages of the runs that start among `events` (parsed envelopes), by request
        id."""
        wanted = {
            event["request_id"]
            for event in events
            if event.get("event_type") == "agent.status" and event.get("request_id")
        }
        if not wanted:
            return {}
        async with self.db.read() as session:
            rows = await session.execute(
                select(RunRow.request_id, RunRow.prompt).where(
                    RunRow.agent_id == agent_id, RunRow.request_id.in_(wanted)
                )
            )
            return {request_id: prompt for request_id, prompt in rows}

    def _cached(self, agent_id: str) -> Folded | None:
        folded = self._folded.get(agent_id)
        if folded is None:
            return None
        self._folded.move_to_end(agent_id)
        return folded.copy()

    def _remember(self, agent_id: str, folded: Folded) -> None:
        current = self._folded.get(agent_id)
        if current is not None and current.version >= folded.version:
            return
        self._folded[agent_id] = folded.copy()
        self._folded.move_to_end(agent_id)
        while len(self._folded) > _CACHE_SIZE:
            self._folded.popitem(last=False)

    @staticmethod
    def _frame(name: str, source: str, version: int, seq: int, data: Any) -> str:
        return json.dumps(
            {
                "timestamp": utc_timestamp(),
                "neuron": name,
                "source": source,
                "version": version,
                "fold": FOLD,
                "seq": seq,
                "data": data,
            },
            ensure_ascii=False,
        )


def neuron_owner(caller: Caller, requested: str | None) -> str:
    """The owner a neuron request acts for: the key's owner, or the one the admin names."""
    owner = caller.scope(requested)
    if owner is None:
        raise InvalidRequest(
            "say whose neuron this is: with the admin key (or with auth off) name the owner, "
            "`user_id` in the API (e.g. ?user_id=alice), `owner_id` in MCP tools",
            code="owner_required",
        )
    return owner


def _usable(agent: AgentRow) -> bool:
    return agent.deleted_at is None and agent.status != "failed"


def _project_key(project: str | None) -> str:
    """The repository a neuron works in, as its rows name it: the absolute path with symbolic
    links resolved ("" for none)."""
    if project is None:
        return ""
    if any(ord(char) < 32 or ord(char) == 127 for char in project):
        raise InvalidRequest("project must not contain control characters", code="invalid_project")
    if not os.path.isabs(project):
        raise InvalidRequest(
            f"project must be an absolute path of a repository, not {project[:80]!r}",
            code="invalid_project",
        )
    return str(Path(project).resolve())
