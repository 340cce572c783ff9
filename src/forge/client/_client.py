"""`ForgeClient`: Forge's API from synchronous code."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx
from websockets.exceptions import ConnectionClosedError, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websocket_connect

from forge.client import _calls as calls
from forge.client._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_SECONDS,
    bad_body,
    connection_error,
    default_headers,
    resolve_api_key,
    resolve_base_url,
    websocket_url,
)
from forge.client._exceptions import ForgeClientError
from forge.client._neurons import (
    NeuronFrame,
    NeuronPosition,
    neuron_stream_ended,
    neuron_stream_path,
)
from forge.client._stream import (
    DEFAULT_RECONNECT_FOR_SECONDS,
    MAX_FRAME_BYTES,
    SSE_TIMEOUT,
    WS_OPEN_TIMEOUT_SECONDS,
    Resumption,
    SseDecoder,
    Transport,
    check_transport,
    dropped,
    handshake_refusal,
    refusal,
    stream_ended,
)
from forge.client.models import (
    Agent,
    AgentCreate,
    AgentList,
    AgentUpdate,
    Analytics,
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    Bucket,
    CleanupReport,
    DashboardStatus,
    Delivery,
    DeliveryPage,
    DeliveryStatus,
    EventEnvelope,
    EventPage,
    FileView,
    Health,
    InterruptAccepted,
    InterruptRequest,
    MergeRequest,
    MergeResult,
    MessageAccepted,
    MessageCreate,
    Neuron,
    NeuronAccepted,
    NeuronList,
    NeuronMessage,
    PermissionAnswer,
    PermissionDecision,
    PermissionList,
    ProfileList,
    ResumeRequest,
    Session,
    SessionDiff,
    SessionPage,
    SessionStatus,
    Task,
    TaskCreate,
    TaskList,
    Transcript,
    WorktreeList,
)
from forge.client.models import Permission as PermissionModel

T = TypeVar("T")


class ForgeClient:
    """A client of one Forge server.

        with ForgeClient() as forge:  # $FORGE_BASE_URL and $FORGE_API_KEY, or the arguments
            agent = forge.create_agent(profile="claude", repo="/srv/repo", wait=True)
            run = forge.send_message(agent.id, "Add a README")
            for event in forge.stream(agent.id, request_id=run.request_id):
                print(event.event_type, event.seq)

    Every method sends one request and returns the server's answer as its pydantic model; an
    error answer raises a `ForgeClientError` carrying the server's `code` and `message`. Reads
    are retried on 429/502/503/504 and on a dropped connection (`max_retries` times); writes
    only when the server never received them. `user_id` is for the admin key (or a server with
    authentication off): it names the owner to act for.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.max_retries = max_retries
        self._headers = default_headers(resolve_api_key(api_key), headers)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> ForgeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: calls.Call[T]) -> T:
        """Send `call`, retrying as the class says, and read its answer."""
        attempt = 0
        while True:
            outcome: httpx.Response | Exception
            try:
                outcome = self._http.request(
                    call.method,
                    call.path,
                    params=call.query(),
                    content=call.content(),
                    headers={"Content-Type": "application/json"} if call.body else None,
                )
            except httpx.TransportError as exc:
                outcome = exc
            except httpx.DecodingError as exc:
                raise bad_body(exc, self.base_url) from exc
            delay = calls.retry_delay(call, attempt, self.max_retries, outcome)
            if delay is None:
                if isinstance(outcome, Exception):
                    what = f"{call.method} {call.path}"
                    raise connection_error(outcome, self.base_url, what) from outcome
                return call.answer(outcome)
            time.sleep(delay)
            attempt += 1

    # ---- agents ----------------------------------------------------------------------------

    def create_agent(
        self, body: AgentCreate | None = None, /, *, wait: bool = False, **fields: Any
    ) -> Agent:
        """A new agent, from `body` or from the fields of `AgentCreate` (`profile`, `repo`,
        `base_ref`, `owner_id`, ...). With `wait`, answered once its sandbox is ready."""
        return self.send(calls.create_agent(calls.build(AgentCreate, body, fields), wait))

    def list_agents(
        self, *, user_id: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> AgentList:
        """A page of agents, newest first; pass `next_cursor` as `cursor` for the next."""
        return self.send(calls.list_agents(user_id, limit, cursor))

    def get_agent(self, agent_id: str, *, user_id: str | None = None) -> Agent:
        return self.send(calls.get_agent(agent_id, user_id))

    def update_agent(
        self, agent_id: str, *, model: str | None, user_id: str | None = None
    ) -> Agent:
        """Change the model of the agent's next runs (None: back to its profile's)."""
        body = calls.build(AgentUpdate, None, {"model": model})
        return self.send(calls.update_agent(agent_id, body, user_id))

    def delete_agent(
        self,
        agent_id: str,
        *,
        graceful: bool = True,
        purge: bool = False,
        user_id: str | None = None,
    ) -> None:
        """Delete the agent (letting its run end cleanly with `graceful`); `purge` removes its
        worktree and branch too."""
        self.send(calls.delete_agent(agent_id, graceful, purge, user_id))

    def list_profiles(self) -> ProfileList:
        return self.send(calls.list_profiles())

    # ---- runs ------------------------------------------------------------------------------

    def send_message(
        self,
        agent_id: str,
        message: str | MessageCreate,
        /,
        *,
        user_id: str | None = None,
        **fields: Any,
    ) -> MessageAccepted:
        """Queue a run: `message` is its text (with `MessageCreate`'s other fields as keywords:
        `attachments`, `webhook_url`, `webhook_secret`, `request_id`, `priority`) or a whole
        `MessageCreate`. Answered at once (202); follow it with `stream`."""
        body = calls.message_body(MessageCreate, message, fields)
        return self.send(calls.send_message(agent_id, body, user_id))

    def interrupt(
        self,
        agent_id: str,
        *,
        request_id: str | None = None,
        webhook_url: str | None = None,
        user_id: str | None = None,
    ) -> InterruptAccepted:
        """Stop the agent's current run (or run `request_id`)."""
        fields = {"request_id": request_id, "webhook_url": webhook_url}
        body = calls.build(InterruptRequest, None, {k: v for k, v in fields.items() if v})
        return self.send(calls.interrupt(agent_id, body, user_id))

    def list_permissions(
        self, agent_id: str, *, pending: bool = False, user_id: str | None = None
    ) -> PermissionList:
        """The tool calls that waited (with `pending`, still wait) for approval."""
        return self.send(calls.list_permissions(agent_id, pending, user_id))

    def answer_permission(
        self,
        agent_id: str,
        permission_id: str,
        decision: PermissionDecision,
        *,
        message: str | None = None,
        user_id: str | None = None,
    ) -> PermissionModel:
        """Allow the waiting tool call `once` or `always`, or `reject` it (telling the agent
        `message`)."""
        body = calls.build(PermissionAnswer, None, {"decision": decision, "message": message})
        return self.send(calls.answer_permission(agent_id, permission_id, body, user_id))

    # ---- events and webhook deliveries -----------------------------------------------------

    def events(
        self, agent_id: str, *, after: int = 0, limit: int = 100, user_id: str | None = None
    ) -> EventPage:
        """One page of the agent's event log: events with `seq` > `after`."""
        return self.send(calls.events(agent_id, after, limit, user_id))

    def iter_events(
        self, agent_id: str, *, after: int = 0, user_id: str | None = None
    ) -> Iterator[EventEnvelope]:
        """Every event already in the log after `after`, page by page; ends at the last one.
        (`stream` goes on live.)"""
        while True:
            page = self.events(agent_id, after=after, limit=1000, user_id=user_id)
            yield from (EventEnvelope.model_validate(event) for event in page.events)
            if not page.has_more:
                return
            after = page.next_after

    def stream(
        self,
        agent_id: str,
        *,
        after: int = 0,
        request_id: str | None = None,
        transport: Transport = "sse",
        user_id: str | None = None,
        reconnect_for: float | None = DEFAULT_RECONNECT_FOR_SECONDS,
    ) -> EventStream:
        """The agent's events with `seq` > `after`, live, each exactly once: the stream
        reconnects by itself (server restarts, dropped connections) and resumes after the last
        `seq` it yielded. With `request_id`, only that run's events, ending with its final
        one; otherwise it ends when the agent is deleted. `transport` is `sse` or `websocket`.
        Raises `StreamLostError` after `reconnect_for` seconds without a connection (None:
        never)."""
        check_transport(transport)
        state = Resumption(agent_id, after, request_id, reconnect_for)
        return EventStream(self, state, transport, user_id)

    def list_deliveries(
        self,
        agent_id: str,
        *,
        status: DeliveryStatus | None = None,
        after: int = 0,
        limit: int = 100,
        user_id: str | None = None,
    ) -> DeliveryPage:
        """The agent's webhook deliveries in `seq` order."""
        return self.send(calls.list_deliveries(agent_id, status, after, limit, user_id))

    def redeliver(self, delivery_id: str, *, user_id: str | None = None) -> Delivery:
        """Send the delivery again (and re-enable its endpoint)."""
        return self.send(calls.redeliver(delivery_id, user_id))

    # ---- tasks and sessions ----------------------------------------------------------------

    def create_task(self, body: TaskCreate | None = None, /, **fields: Any) -> Task:
        """A new session with its first run queued, from `body` or `TaskCreate`'s fields
        (`title`, `prompt`, `profile`, `repo`, `priority`, ...)."""
        return self.send(calls.create_task(calls.build(TaskCreate, body, fields)))

    def list_tasks(
        self, *, user_id: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> TaskList:
        return self.send(calls.list_tasks(user_id, limit, cursor))

    def get_task(self, task_id: str, *, user_id: str | None = None) -> Task:
        return self.send(calls.get_task(task_id, user_id))

    def list_sessions(
        self,
        *,
        user_id: str | None = None,
        profile: str | None = None,
        status: SessionStatus | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        """A page of sessions, newest first (times must carry a time zone)."""
        return self.send(
            calls.list_sessions(
                user_id, profile, status, created_after, created_before, limit, cursor
            )
        )

    def get_session(self, agent_id: str, *, user_id: str | None = None) -> Session:
        return self.send(calls.get_session(agent_id, user_id))

    def transcript(self, agent_id: str, *, user_id: str | None = None) -> Transcript:
        """The session's messages and the normalized entries of every run."""
        return self.send(calls.transcript(agent_id, user_id))

    def transcript_markdown(self, agent_id: str, *, user_id: str | None = None) -> str:
        """The transcript as Markdown."""
        return self.send(calls.transcript_markdown(agent_id, user_id))

    def resume_session(
        self, agent_id: str, prompt: str, *, priority: int = 0, user_id: str | None = None
    ) -> MessageAccepted:
        """Send the session its next message; a stopped session gets a new sandbox."""
        body = calls.build(ResumeRequest, None, {"prompt": prompt, "priority": priority})
        return self.send(calls.resume_session(agent_id, body, user_id))

    def stop_session(self, agent_id: str, *, user_id: str | None = None) -> Session:
        """Interrupt the run, end queued ones and remove the sandbox (the worktree stays)."""
        return self.send(calls.stop_session(agent_id, user_id))

    # ---- worktrees, diffs and files --------------------------------------------------------

    def list_worktrees(self, *, user_id: str | None = None) -> WorktreeList:
        return self.send(calls.list_worktrees(user_id))

    def cleanup_worktrees(self, *, older_than_hours: float | None = None) -> CleanupReport:
        """Remove finished sessions' worktrees and orphans (admin key)."""
        return self.send(calls.cleanup_worktrees(older_than_hours))

    def diff(self, agent_id: str, *, user_id: str | None = None) -> SessionDiff:
        """The session's changes against its base commit."""
        return self.send(calls.diff(agent_id, user_id))

    def files(self, agent_id: str, path: str = "", *, user_id: str | None = None) -> FileView:
        """A directory listing or a file of the session's worktree (`path` relative to it)."""
        return self.send(calls.files(agent_id, path, user_id))

    def merge(
        self, agent_id: str, *, message: str | None = None, user_id: str | None = None
    ) -> MergeResult:
        """Squash the session's branch into one commit on its base branch."""
        body = calls.build(MergeRequest, None, {"message": message} if message else {})
        return self.send(calls.merge(agent_id, body, user_id))

    # ---- neurons ---------------------------------------------------------------------------

    def list_neurons(self, *, project: str | None = None, user_id: str | None = None) -> NeuronList:
        return self.send(calls.list_neurons(project, user_id))

    def get_neuron(
        self, name: str, *, project: str | None = None, user_id: str | None = None
    ) -> Neuron:
        """The neuron with its state document and `version`."""
        return self.send(calls.get_neuron(name, project, user_id))

    def message_neuron(
        self,
        name: str,
        message: str | NeuronMessage,
        /,
        *,
        user_id: str | None = None,
        **fields: Any,
    ) -> NeuronAccepted:
        """Send the neuron a message (`project` and `MessageCreate`'s fields as keywords); its
        agent is made on first use."""
        body = calls.message_body(NeuronMessage, message, fields)
        return self.send(calls.message_neuron(name, body, user_id))

    def neuron_stream(
        self,
        name: str,
        *,
        project: str | None = None,
        user_id: str | None = None,
        reconnect_for: float | None = DEFAULT_RECONNECT_FOR_SECONDS,
    ) -> NeuronStream:
        """The neuron's state document, live (`WS /ws/neurons/{name}`): a snapshot frame, then
        one JSON Patch operation a frame. It reconnects by itself and resumes after the last
        version received (a new snapshot comes when the neuron has a new agent); refusals
        raise as `stream` does, and `StreamLostError` after `reconnect_for` seconds without a
        connection (None: never)."""
        return NeuronStream(self, NeuronPosition(name, reconnect_for), project, user_id)

    # ---- keys (admin key) ------------------------------------------------------------------

    def create_key(self, owner_id: str, *, name: str = "") -> ApiKeyCreated:
        """A new key for `owner_id`; `key` is in this answer only."""
        body = calls.build(ApiKeyCreate, None, {"owner_id": owner_id, "name": name})
        return self.send(calls.create_key(body))

    def list_keys(self, *, owner_id: str | None = None) -> ApiKeyList:
        return self.send(calls.list_keys(owner_id))

    def revoke_key(self, key_id: str) -> ApiKey:
        return self.send(calls.revoke_key(key_id))

    # ---- the server ------------------------------------------------------------------------

    def health(self) -> Health:
        return self.send(calls.health())

    def ready(self) -> bool:
        """Whether the server can serve (its database answers)."""
        return self.send(calls.ready())

    def status(self, *, user_id: str | None = None) -> DashboardStatus:
        """Sessions, queue, database and worktrees now."""
        return self.send(calls.status(user_id))

    def analytics(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        bucket: Bucket | None = None,
        user_id: str | None = None,
    ) -> Analytics:
        """Runs, errors, tokens, cost and utilization over a range."""
        return self.send(calls.analytics(since, until, bucket, user_id))

    # ---- streams ---------------------------------------------------------------------------

    def _sse(self, state: Resumption, user_id: str | None) -> Iterator[EventEnvelope]:
        """One SSE connection's events; returns when the server ends it."""
        path = calls.event_stream_path(state.agent_id)
        params = {"after": str(state.last_seq)} | ({"user_id": user_id} if user_id else {})
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(state.last_seq)}
        try:
            with self._http.stream(
                "GET", path, params=params, headers=headers, timeout=SSE_TIMEOUT
            ) as response:
                if not response.is_success:
                    raise refusal(response.status_code, response.headers, response.read())
                state.connected()
                decoder = SseDecoder()
                for chunk in response.iter_text():
                    for data in decoder.feed(chunk):
                        if (event := state.take(data)) is not None:
                            yield event
                    if state.finished:
                        return
        except httpx.DecodingError as exc:
            raise bad_body(exc, self.base_url) from exc
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise dropped(exc, self.base_url, state.agent_id) from exc

    def _websocket(self, state: Resumption, user_id: str | None) -> Iterator[EventEnvelope]:
        """One WebSocket connection's events; returns when the server closes it normally."""
        path = calls.websocket_path(state.agent_id)
        url = websocket_url(self.base_url, path, {"after": state.last_seq, "user_id": user_id})
        try:
            with websocket_connect(
                url,
                additional_headers=self._headers,
                open_timeout=WS_OPEN_TIMEOUT_SECONDS,
                max_size=MAX_FRAME_BYTES,
            ) as connection:
                state.connected()
                for frame in connection:
                    if (event := state.take(frame)) is not None:
                        yield event
                    if state.finished:
                        return
        except InvalidStatus as exc:
            raise handshake_refusal(exc) from exc
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosedError) as exc:
            raise dropped(exc, self.base_url, state.agent_id) from exc


class EventStream:
    """The events of `ForgeClient.stream`: iterate over it (once). `last_seq` is the last seq
    yielded, to resume from later; `connections` how many connections it took."""

    def __init__(
        self, client: ForgeClient, state: Resumption, transport: Transport, user_id: str | None
    ) -> None:
        self._client = client
        self._state = state
        self._transport = transport
        self._user_id = user_id
        self._events: Generator[EventEnvelope] | None = None

    @property
    def last_seq(self) -> int:
        return self._state.last_seq

    @property
    def connections(self) -> int:
        return self._state.connections

    def __iter__(self) -> Iterator[EventEnvelope]:
        if self._events is None:
            self._events = _follow_events(self._client, self._state, self._transport, self._user_id)
        return self._events

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (iterating ends)."""
        if self._events is not None:
            self._events.close()


def _follow_events(
    client: ForgeClient, state: Resumption, transport: Transport, user_id: str | None
) -> Generator[EventEnvelope]:
    """The events of a stream across its connections, then the run's final event once its
    connection is closed. A function of its own, holding no reference to the stream object: a
    stream dropped mid-iteration is freed (and its connection closed) at once, not by a later
    garbage collection that could run where its connection pool is locked."""
    connect = client._websocket if transport == "websocket" else client._sse
    while not state.finished:
        try:
            yield from connect(state, user_id)
            if state.finished:
                break
            # Closed by the server: its agent was deleted (a 404 now), or it is stopping.
            client.get_agent(state.agent_id, user_id=user_id)
            cause: ForgeClientError = stream_ended()
        except ForgeClientError as exc:
            if state.finished:
                break  # closing the connection failed; the run's events are all in
            cause = exc
        delay = state.retry_in(cause)
        if delay is None:
            return
        time.sleep(delay)
    if state.final is not None:
        yield state.final


class NeuronStream:
    """The frames of `ForgeClient.neuron_stream`: iterate over it (once), applying each
    operation to the last snapshot. `version`, `agent_id` and `fold` are where it is;
    `snapshots` and `resumes` count how its connections began. `resync()` and `close()` may be
    called from another thread while one iterates."""

    def __init__(
        self,
        client: ForgeClient,
        position: NeuronPosition,
        project: str | None,
        user_id: str | None,
    ) -> None:
        self._position = position
        self._follower = _NeuronFollower(client, position, {"project": project, "user_id": user_id})
        self._frames: Generator[NeuronFrame] | None = None

    @property
    def name(self) -> str:
        return self._position.name

    @property
    def version(self) -> int | None:
        return self._position.version

    @property
    def agent_id(self) -> str | None:
        return self._position.agent_id

    @property
    def fold(self) -> str | None:
        return self._position.fold

    @property
    def generation(self) -> int:
        """How many times `resync()` was called; frames of older connections carry less."""
        return self._position.generation

    @property
    def snapshots(self) -> int:
        return self._position.snapshots

    @property
    def resumes(self) -> int:
        return self._position.resumes

    @property
    def connections(self) -> int:
        return self._position.connections

    def __iter__(self) -> Iterator[NeuronFrame]:
        if self._frames is None:
            self._frames = self._follower.follow()
        return self._frames

    def __enter__(self) -> NeuronStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def resync(self) -> None:
        """Forget the position and reconnect at once: the next frame is a snapshot."""
        self._position.resync()
        self._follower.wake.set()
        self._follower.drop()

    def close(self) -> None:
        """Close the connection: iterating ends, here or in the thread that iterates (the
        generator itself is left to that thread, which may be inside it)."""
        self._follower.closed.set()
        self._follower.wake.set()
        self._follower.drop()


class _NeuronFollower:
    """The connections of one `NeuronStream`, and the generator of its frames. Kept apart from
    the stream object so that the generator holds no reference to it: a stream dropped
    mid-iteration is freed, and its connection closed, at once."""

    def __init__(
        self, client: ForgeClient, position: NeuronPosition, params: dict[str, str | None]
    ) -> None:
        self._client = client
        self._position = position
        self._params = params
        self._lock = threading.Lock()
        self._connection: ClientConnection | None = None
        self.closed = threading.Event()
        # Set to cut a wait between connections short (resync, close).
        self.wake = threading.Event()

    def drop(self) -> None:
        with self._lock:
            connection = self._connection
        if connection is not None:
            connection.close()

    def follow(self) -> Generator[NeuronFrame]:
        position = self._position
        while not self.closed.is_set():
            params, generation = position.resume_params()
            try:
                yield from self._websocket(params, generation)
                cause: ForgeClientError = neuron_stream_ended()
            except ForgeClientError as exc:
                cause = exc
            if self.closed.is_set():
                return
            if position.stale(generation):
                continue  # given up by resync(): a snapshot at once
            self.wake.wait(position.retry_in(cause))
            self.wake.clear()

    def _websocket(
        self, resume: dict[str, object | None], generation: int
    ) -> Iterator[NeuronFrame]:
        """One connection's frames; returns when it is closed normally."""
        client, position = self._client, self._position
        path = neuron_stream_path(position.name)
        url = websocket_url(client.base_url, path, self._params | resume)
        try:
            with websocket_connect(
                url,
                additional_headers=client._headers,
                open_timeout=WS_OPEN_TIMEOUT_SECONDS,
                max_size=MAX_FRAME_BYTES,
            ) as connection:
                with self._lock:
                    self._connection = connection
                try:
                    # resync() or close() while it opened: they could not close it.
                    if self.closed.is_set() or position.stale(generation):
                        return
                    position.connected()
                    for text in connection:
                        if (frame := position.take(text, generation)) is not None:
                            yield frame
                        elif position.stale(generation):
                            return
                finally:
                    with self._lock:
                        self._connection = None
        except InvalidStatus as exc:
            raise handshake_refusal(exc) from exc
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosedError) as exc:
            what = f"the state stream of neuron {position.name}"
            raise connection_error(exc, client.base_url, what) from exc
