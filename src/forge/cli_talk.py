"""`forge talk NEURON`: a conversation with a neuron in the terminal.

Each line typed is sent as a message (`forge.client`'s `message_neuron`); while the neuron
works, its state document arrives over `WS /ws/neurons/{name}` (a snapshot, then one RFC 6902
operation a frame), is kept here by applying the operations, and what changed is printed:
thinking, tool activity, assistant text, todos, and a footer when the run ends. A dropped
connection resumes with `?version=<last version applied>&agent_id=&fold=`; when the neuron has
a new agent (the old one failed or was deleted) it starts again from that one's snapshot.
With `FORGE_TALK_DEBUG` set, how each connection started (a snapshot, or resumed) goes to stderr.

Registered on the main app by `cli.py`'s `talk` command; imports nothing of `cli.py`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

import typer

from forge.client import ForgeClient, ForgeClientError, NeuronFrame
from forge.client.models import MessageAccepted, Neuron
from forge.patch import PatchError, apply_operation

__all__ = ["Conversation", "TalkError", "exchange", "talk"]

# How long a lost stream is retried without a connection before giving up.
RECONNECT_FOR_SECONDS = 30.0
# How long the first snapshot may take.
FIRST_SNAPSHOT_SECONDS = 20.0
# Statuses in which a neuron is not working on a run.
RESTING = ("idle", "failed", "stopped")

T = TypeVar("T")


class TalkError(Exception):
    """Raised when the conversation cannot go on: the server cannot be reached, refuses the
    stream, or the neuron is unknown (`code`, `message` as in the server's error body)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---- the stream --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One frame as received, with the connection generation it came on."""

    generation: int
    body: dict[str, Any]


class NeuronSocket:
    """Reads the neuron's state stream (`ForgeClient.neuron_stream`) in a thread, across
    reconnections, into `frames`. After a drop it resumes after the last version it received;
    `resync()` drops the connection and starts again from a snapshot. A refusal (unknown neuron,
    bad key) or a server unreachable for `RECONNECT_FOR_SECONDS` puts a `TalkError` in `frames`
    and ends."""

    def __init__(
        self, client: ForgeClient, name: str, project: str | None, owner: str | None
    ) -> None:
        self.stream = client.neuron_stream(
            name, project=project, user_id=owner, reconnect_for=RECONNECT_FOR_SECONDS
        )
        self.where = f"neuron {name} at {client.base_url}"
        self.frames: queue.Queue[Frame | TalkError] = queue.Queue()
        self._debug = bool(os.environ.get("FORGE_TALK_DEBUG"))
        # Connections whose beginning was told (with `FORGE_TALK_DEBUG`).
        self._told = 0
        self._thread = threading.Thread(target=self._run, name="forge-talk-stream", daemon=True)

    @property
    def generation(self) -> int:
        return self.stream.generation

    @property
    def snapshots(self) -> int:
        """How many connections began with a snapshot."""
        return self.stream.snapshots

    @property
    def resumes(self) -> int:
        """How many connections resumed after the version last received."""
        return self.stream.resumes

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stream.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def resync(self) -> None:
        """Forget the position and reconnect: the next frame is a snapshot."""
        self.stream.resync()

    def _run(self) -> None:
        try:
            for frame in self.stream:
                self._tell_start(frame)
                self.frames.put(Frame(frame.generation, frame.to_wire()))
        except ForgeClientError as exc:
            self.frames.put(TalkError(exc.code, exc.message))

    def _tell_start(self, frame: NeuronFrame) -> None:
        """With `FORGE_TALK_DEBUG`, how a connection's stream began."""
        began = self.stream.snapshots + self.stream.resumes
        if began == self._told:
            return
        self._told = began
        if frame.is_snapshot:
            self.debug(f"snapshot at version {frame.version}")
        else:
            self.debug(f"resumed at version {frame.version - 1}")

    def debug(self, note: str) -> None:
        if self._debug:
            typer.echo(f"forge talk: {note}", err=True)


# ---- what is shown -----------------------------------------------------------------------------

TODO_MARKS = {"completed": "[x]", "in_progress": "[>]", "pending": "[ ]", "cancelled": "[-]"}


@dataclass
class Run:
    """The run this conversation waits for."""

    request_id: str
    agent_id: str | None
    usage_before: dict[str, Any]
    # The event seq of the document when the message was sent.
    seq_before: int = 0
    # The neuron was seen working on it (or answering it): from then on, resting means done.
    started: bool = False
    interrupted: bool = False
    # Ended without starting (a final event before any other, found in the log): that event.
    ended_unstarted: bool = False
    final: dict[str, Any] | None = None
    # The number of ended runs (`usage.runs`, setup runs not counted) last looked at for that.
    runs_checked: int = 0
    # The document followed was seen to be of the run's agent; then of another one (the
    # neuron moved on: the agent was deleted or failed before the run ended).
    agent_seen: bool = False
    agent_lost: bool = False


@dataclass
class Renderer:
    """Prints what changed in the state document while a run of ours is on; between runs it
    only remembers what was there (`baseline`)."""

    out: TextIO
    shown: dict[str, Any] = field(default_factory=dict)
    printed: dict[tuple[str, int], str] = field(default_factory=dict)

    def echo(self, text: str, **style: Any) -> None:
        typer.echo(typer.style(text, **style) if style else text, file=self.out)

    def baseline(self, doc: dict[str, Any]) -> None:
        for key in ("thinking", "activity", "todos", "files_changed", "error", "status"):
            self.shown[key] = doc.get(key)
        for i, message in enumerate(doc.get("messages") or []):
            self.printed[_message_key(message, i)] = str(message.get("text") or "")

    def changed(self, doc: dict[str, Any], path: str, run: Run) -> None:
        """Print what the operation at `path` changed, if it belongs to `run`."""
        tokens = path.split("/")[1:]
        key = tokens[0] if tokens else ""
        current = doc.get("request_id")
        ours = current in (None, run.request_id)
        if key == "messages" or not key:
            self._messages(doc, tokens, run)
        if not ours:
            return
        if key in ("thinking", "") and doc.get("thinking") != self.shown.get("thinking"):
            self._thinking(str(doc.get("thinking") or ""))
        if key in ("activity", "") and doc.get("activity") != self.shown.get("activity"):
            self._activity(doc.get("activity"))
        if key in ("todos", "") and doc.get("todos") != self.shown.get("todos"):
            self._todos(doc.get("todos") or [])
        if key in ("files_changed", ""):
            self._files(doc.get("files_changed") or [])
        if key in ("status", "") and doc.get("status") != self.shown.get("status"):
            self.shown["status"] = doc.get("status")
            if doc.get("status") == "waiting_permission":
                self.echo("… waiting for a permission answer", fg=typer.colors.YELLOW)
        if key in ("error", "") and doc.get("error") != self.shown.get("error"):
            self.shown["error"] = doc.get("error")
            if doc.get("error"):
                self.echo(f"error: {doc['error']}", fg=typer.colors.RED)

    def _messages(self, doc: dict[str, Any], tokens: list[str], run: Run) -> None:
        messages = doc.get("messages") or []
        if len(tokens) >= 2 and tokens[1] != "-" and tokens[1].isdigit():
            indexes: Iterator[int] = iter([int(tokens[1])])
        elif len(tokens) >= 2:
            indexes = iter([len(messages) - 1])
        else:
            indexes = iter(range(len(messages)))  # the whole list, or a snapshot
        for i in indexes:
            if not 0 <= i < len(messages) or not isinstance(messages[i], dict):
                continue
            message = messages[i]
            if message.get("request_id") == run.request_id:
                run.started = True  # the user's message is added when the run starts
            text = str(message.get("text") or "")
            key = _message_key(message, i)
            before = self.printed.get(key, "")
            self.printed[key] = text
            if message.get("role") != "assistant" or message.get("request_id") not in (
                run.request_id,
                None,
            ):
                continue
            new = text[len(before) :] if text.startswith(before) else text
            if new.strip():
                self.echo(new.rstrip("\n"))

    def _thinking(self, text: str) -> None:
        before = str(self.shown.get("thinking") or "")
        self.shown["thinking"] = text
        new = text[len(before) :] if before and text.startswith(before) else text
        for line in new.strip("\n").splitlines():
            if line.strip():
                self.echo(f"  {line}", dim=True, italic=True)

    def _activity(self, activity: Any) -> None:
        before = self.shown.get("activity")
        self.shown["activity"] = activity
        if not isinstance(activity, dict):
            return
        status = activity.get("status") or "running"
        same_call = isinstance(before, dict) and all(
            before.get(k) == activity.get(k) for k in ("tool", "detail")
        )
        if status == "success" and same_call:
            return  # already shown when it started
        detail = str(activity.get("detail") or "").strip().splitlines()[:1]
        tool = activity.get("tool") or "tool"
        line = f"→ {tool}: {detail[0]}" if detail else f"→ {tool}"
        color = typer.colors.CYAN if status in ("running", "success") else typer.colors.RED
        self.echo(f"{line} ({status})", fg=color)

    def _todos(self, todos: list[Any]) -> None:
        self.shown["todos"] = todos
        if not todos:
            return
        self.echo("todos:", bold=True)
        for todo in todos:
            if isinstance(todo, dict):
                mark = TODO_MARKS.get(str(todo.get("status")), "[ ]")
                self.echo(f"  {mark} {todo.get('content')}")

    def _files(self, files: list[Any]) -> None:
        before = set(self.shown.get("files_changed") or [])
        self.shown["files_changed"] = list(files)
        for path in files:
            if path not in before:
                self.echo(f"  edited {path}", dim=True)

    def footer(self, doc: dict[str, Any], run: Run) -> bool:
        """Print the end of `run`; whether it succeeded."""
        status = doc.get("status")
        outcome = doc.get("outcome")
        name: object
        message: object
        if run.agent_lost:
            name, message = "lost", "the neuron has a new agent (its agent was deleted or failed)"
        elif run.final is not None:
            name, message = _final_outcome(run.final)
        elif isinstance(outcome, dict):
            name = outcome.get("outcome") or outcome.get("status")
            message = outcome.get("message") or ""
        else:
            name, message = outcome, ""
        if not name:
            # Never taken for a success: only an outcome of `succeeded` is one.
            name = "interrupted" if run.interrupted else f"ended without an outcome ({status})"
        parts = [str(name)]
        tokens = _usage_delta(run.usage_before, doc.get("usage") or {})
        if tokens:
            parts.append(tokens)
        if message and name != "succeeded":
            parts.append(str(message))
        ok = name == "succeeded"
        color = typer.colors.GREEN if ok else typer.colors.RED
        self.echo(f"── {' · '.join(parts)}", fg=color, dim=ok)
        if not ok and doc.get("error") and doc.get("error") != self.shown.get("error"):
            self.echo(f"error: {doc['error']}", fg=typer.colors.RED)
        return ok


def _message_key(message: dict[str, Any], index: int) -> tuple[str, int]:
    seq = message.get("seq")
    return (str(message.get("request_id")), seq if isinstance(seq, int) else -index - 1)


def _final_outcome(event: dict[str, Any]) -> tuple[str | None, str]:
    """The outcome and message of a run's final event."""
    if event.get("event_type") == "agent.error":
        error = event.get("error") or {}
        return "error", str(error.get("message") or event.get("message") or "")
    return event.get("outcome"), ""


def _usage_delta(before: dict[str, Any], after: dict[str, Any]) -> str:
    def delta(name: str) -> float:
        value = (after.get(name) or 0) - (before.get(name) or 0)
        return float(value) if isinstance(value, int | float) else 0.0

    spent_in, spent_out, cost = delta("input_tokens"), delta("output_tokens"), delta("cost_usd")
    if not (spent_in or spent_out or cost):
        return ""
    text = f"{int(spent_in):,} in / {int(spent_out):,} out tokens"
    return text + (f" · ${cost:.4f}" if cost else "")


# ---- the conversation --------------------------------------------------------------------------


class Conversation:
    """One neuron, its stream and the local copy of its state document."""

    def __init__(
        self, base_url: str, name: str, project: str | None, owner: str | None, out: TextIO
    ) -> None:
        self.client = ForgeClient(base_url)
        self.name = name
        self.project = project
        self.owner = owner or None
        # With the admin key or auth off the server needs to know whose neuron this is.
        self.socket = NeuronSocket(self.client, name, project or None, self.owner)
        # Whether the last operation applied ended an event (`/seq` is each event's last).
        self.at_event_end = True
        self.doc: dict[str, Any] = {}
        self.version: int | None = None
        self.renderer = Renderer(out)

    # -- requests --

    def ask(self, request: Callable[[ForgeClient], T]) -> T:
        """`request` made with the client; its error (none answered, or an error answer) raised
        as `TalkError`."""
        try:
            return request(self.client)
        except ForgeClientError as exc:
            raise TalkError(exc.code, exc.message) from exc

    def describe(self) -> Neuron:
        """The neuron; an unknown one names the known ones."""
        try:
            return self.ask(
                lambda c: c.get_neuron(self.name, project=self.project, user_id=self.owner)
            )
        except TalkError as exc:
            if not exc.code.endswith("not_found"):
                raise
            try:
                listed = self.ask(
                    lambda c: c.list_neurons(project=self.project, user_id=self.owner)
                )
            except TalkError:
                raise exc from None
            names = [neuron.name for neuron in listed.neurons]
            known = ", ".join(names) if names else "none are configured ([neurons] dirs)"
            raise TalkError(exc.code, f"unknown neuron {self.name!r}; known: {known}") from None

    def send(self, text: str) -> MessageAccepted:
        return self.ask(
            lambda c: c.message_neuron(self.name, text, project=self.project, user_id=self.owner)
        )

    def interrupt(self, agent_id: str | None) -> None:
        target = agent_id or self.doc.get("agent_id")
        if target:
            self.ask(lambda c: c.interrupt(str(target)))

    # -- the stream --

    def start(self) -> None:
        """Connect and wait for the first snapshot."""
        self.socket.start()
        deadline = time.monotonic() + FIRST_SNAPSHOT_SECONDS
        while self.version is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TalkError("stream_timeout", f"no snapshot of {self.socket.where}")
            self.pump(min(left, 0.5), run=None)

    def pump(self, timeout: float, run: Run | None) -> None:
        """Apply the frames that arrive within `timeout` (at least one wait), printing what
        changed for `run` (nothing without one)."""
        try:
            item = self.socket.frames.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._take(item, run)
            try:
                item = self.socket.frames.get_nowait()
            except queue.Empty:
                return

    def _take(self, item: Frame | TalkError, run: Run | None) -> None:
        if isinstance(item, TalkError):
            raise item
        if item.generation != self.socket.generation:
            return  # from a connection given up for a snapshot
        body = item.body
        version = body.get("version")
        if body.get("source") == "snapshot":
            data = body.get("data")
            if not isinstance(data, dict) or not isinstance(version, int):
                self.socket.resync()
                return
            self.doc, self.version, self.at_event_end = data, version, True
            if run is None:
                self.renderer.baseline(self.doc)
            else:
                self.renderer.changed(self.doc, "", run)
            self._note_run(run)
            return
        if self.version is None or not isinstance(version, int) or version <= self.version:
            return  # before the snapshot, or seen already
        operation = body.get("data")
        if version != self.version + 1 or not isinstance(operation, dict):
            self.socket.resync()  # a gap: start again from a snapshot
            return
        try:
            doc = apply_operation(self.doc, operation)
        except PatchError:
            self.socket.resync()
            return
        if not isinstance(doc, dict):
            self.socket.resync()
            return
        self.doc, self.version = doc, version
        path = str(operation.get("path"))
        self.at_event_end = path == "/seq"
        if run is None:
            self.renderer.baseline(self.doc)
        else:
            self.renderer.changed(self.doc, path, run)
        self._note_run(run)

    def _note_run(self, run: Run | None) -> None:
        # Called after every operation, so every state the neuron passed through is seen.
        if run is None:
            return
        working = self.doc.get("status") not in RESTING
        if self.doc.get("request_id") == run.request_id and working:
            run.started = True
        outcome = self.doc.get("outcome")
        if isinstance(outcome, dict) and outcome.get("request_id") == run.request_id:
            run.started = True

    def run_over(self, run: Run) -> bool:
        """Whether `run` has ended: it was seen started, and after a whole event the neuron
        rests again (or works on another run)."""
        if run.ended_unstarted or run.agent_lost:
            return True
        if not self.at_event_end:
            return False
        if run.agent_id and self.doc.get("agent_id") != run.agent_id:
            # Still the previous agent's document (the new one's snapshot is on its way), or,
            # after the run's own, another one's: the run's agent is gone and so is the run.
            run.agent_lost = run.agent_seen
            return run.agent_lost
        run.agent_seen = True
        if not run.started:
            self._check_unstarted(run)
            return run.ended_unstarted
        current = self.doc.get("request_id")
        return self.doc.get("status") in RESTING or current not in (None, run.request_id)

    def _check_unstarted(self, run: Run) -> None:
        """A run that ends before it starts (its agent failed, it was cancelled) leaves no
        trace in the document but an ended run in `usage.runs`: look for its final event."""
        runs = (self.doc.get("usage") or {}).get("runs")
        if not isinstance(runs, int) or runs <= run.runs_checked or not run.agent_id:
            return
        run.runs_checked = runs
        agent_id, after = run.agent_id, run.seq_before
        for event in self.ask(lambda c: list(c.iter_events(agent_id, after=after))):
            if event.request_id == run.request_id and event.is_final:
                run.ended_unstarted, run.final = True, event.to_wire()
                return

    def follow_agent(self, agent_id: str) -> None:
        """The neuron has a new agent (the one followed failed or was deleted): follow that
        one's document from its snapshot."""
        self.socket.debug(f"the neuron has a new agent {agent_id}: starting from a snapshot")
        self.socket.resync()

    def close(self) -> None:
        self.socket.close()
        self.client.close()


def talk(
    base_url: str,
    name: str,
    *,
    project: str | None = None,
    owner: str | None = None,
    message: str | None = None,
    lines: TextIO | None = None,
    out: TextIO | None = None,
) -> int:
    """Talk to neuron `name`: one `message` (exit code 0 if its run succeeded), or every line
    read (a prompt on a terminal); the exit code."""
    source = lines or sys.stdin
    out = out or sys.stdout
    interactive = message is None and source.isatty()
    conversation = Conversation(base_url, name, project, owner, out)
    try:
        neuron = conversation.describe()
        conversation.start()
        if interactive:
            _greet(conversation, neuron)
        if message is not None:
            return 0 if exchange(conversation, message) else 1
        for text in _inputs(source, interactive):
            exchange(conversation, text)
        return 0
    except TalkError as exc:
        typer.echo(f"error: {exc.code}: {exc.message}", err=True)
        if exc.code == "owner_required":
            typer.echo("say whose neuron with --owner NAME or $FORGE_OWNER", err=True)
        return 1
    except (_Quit, KeyboardInterrupt):
        typer.echo("", file=out)
        return 130
    finally:
        conversation.close()


class _Quit(Exception):
    """A second Ctrl-C during a run."""


def _greet(conversation: Conversation, neuron: Neuron) -> None:
    description = f" — {neuron.description}" if neuron.description else ""
    where = f" in {conversation.project}" if conversation.project else ""
    conversation.renderer.echo(f"{neuron.name}{description}{where}")
    conversation.renderer.echo("Type a message; `exit` or Ctrl-D leaves.", dim=True)


def _inputs(source: TextIO, interactive: bool) -> Iterator[str]:
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
    while True:
        try:
            if interactive:
                text = input("you> ")
            else:
                text = source.readline()
                if not text:
                    return
        except (EOFError, KeyboardInterrupt):
            if interactive:
                typer.echo("")
            return
        text = text.strip()
        if text in ("exit", "quit"):
            return
        if text:
            yield text


def exchange(conversation: Conversation, text: str) -> bool:
    """Send `text`, print the run live until it ends; whether it succeeded."""
    conversation.pump(0, run=None)  # what happened while we were away: quietly
    accepted = conversation.send(text)
    agent_id = accepted.agent_id or conversation.doc.get("agent_id")
    if agent_id == conversation.doc.get("agent_id"):
        usage_before = dict(conversation.doc.get("usage") or {})
        seq_before = int(conversation.doc.get("seq") or 0)
    else:
        # The message made the neuron a new agent: its document starts empty.
        conversation.follow_agent(str(agent_id))
        usage_before, seq_before = {}, 0
    run = Run(
        accepted.request_id,
        agent_id,
        usage_before,
        seq_before=seq_before,
        runs_checked=int(usage_before.get("runs") or 0),
    )
    if accepted.status == "queued":
        conversation.renderer.echo("(queued)", dim=True)
    while True:
        try:
            while not conversation.run_over(run):
                conversation.pump(0.25, run)
            return conversation.renderer.footer(conversation.doc, run)
        except KeyboardInterrupt:
            if run.interrupted:
                raise _Quit() from None
            run.interrupted = True
            conversation.renderer.echo("\ninterrupting… (Ctrl-C again to quit)", dim=True)
            try:
                conversation.interrupt(run.agent_id)
            except TalkError as exc:
                typer.echo(f"error: {exc.code}: {exc.message}", err=True)
