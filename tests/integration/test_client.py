"""The Python client against a real `forge serve`: every method of `ForgeClient` and of
`AsyncForgeClient`, with the server's real answers and errors, then a check that no method of
either client, and no operation of the server's OpenAPI document, went uncalled.

One server serves the module (authentication on, a `writer` profile that runs its message as a
shell script, a `careful` profile whose built-in agent asks before it writes, against the
scripted model server). Each test runs once per flavour: the scenarios are written once, against
`ForgeClient`'s interface; the async flavour runs each of `AsyncForgeClient`'s coroutines to its
end on an event loop of its own (see `Recorded`), so both clients send every request for real.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
from collections.abc import AsyncIterable, Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest

from forge import __version__ as FORGE_VERSION
from forge.client import (
    APIConnectionError,
    AsyncForgeClient,
    AuthenticationError,
    ConflictError,
    ForgeClient,
    InvalidRequestError,
    InvalidResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StreamLostError,
)
from forge.client.models import AgentCreate, EventEnvelope, MessageCreate
from tests.integration.conftest import (
    ForgeServer,
    WebhookReceiver,
    free_port,
    git,
    make_repository,
    serve_webhooks,
    stop_serving,
    wait_for,
)
from tests.support.model_server import RecordedRequest, Reply, ScriptedModelServer, ToolCall

pytestmark = pytest.mark.integration

T = TypeVar("T")
FLAVOURS = ("sync", "async")
ADMIN_KEY = "forge-admin-" + "c" * 32
# A well-formed key that no server issued.
WRONG_KEY = "fk_" + "0" * 26 + "_" + "0" * 64

# Public names of the client classes that are not API operations.
NOT_OPERATIONS = {
    "close": "ends the client itself",
    "aclose": "ends the client itself (the async client's name for `close`)",
    "send": "sends a hand-made `Call`; every method below goes through it",
}
# Operations of the server's OpenAPI document that no client method is for.
NOT_CALLED_ROUTES = {
    ("GET", "/api/v1/dashboard/session"): "the dashboard's cookie sign-in, for browsers",
    ("POST", "/api/v1/dashboard/session"): "the dashboard's cookie sign-in, for browsers",
    ("DELETE", "/api/v1/dashboard/session"): "the dashboard's cookie sign-in, for browsers",
    ("GET", "/healthz"): "the liveness probe, for orchestrators; the client has health and ready",
}


def server_config(model_url: str) -> str:
    return f"""
[auth]
enabled = true
rate_limit_per_minute = 60000
rate_limit_burst = 10000
failed_auth_per_minute = 100000
failed_auth_burst = 100000

[sse]
# Streams notice a deleted agent when idle this long.
keepalive_seconds = 0.5

[profiles.writer]
executor = "command"
command = "sh"

[profiles.careful]
executor = "forge"
model = "model-a"
permission_mode = "ask"
permission_timeout_seconds = 60
env = {{ OPENAI_BASE_URL = "{model_url}/v1", OPENAI_API_KEY = "test-key" }}
"""


def ask_to_write(request: RecordedRequest) -> Reply:
    """The model of profile `careful`: it asks to write `approved.txt`, and once the tool has
    answered, it is done. It looks only at the request, so any number of runs can use it."""
    messages = request.body.get("messages", []) if isinstance(request.body, dict) else []
    if messages and messages[-1].get("role") == "tool":
        return Reply(text="Written.")
    write = {"path": "approved.txt", "content": "approved\n"}
    return Reply(tool_calls=[ToolCall("write_file", write)])


@dataclass
class Setup:
    server: ForgeServer
    receiver: WebhookReceiver
    root: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The module's server, with the model it asks and a webhook receiver."""
    root = tmp_path_factory.mktemp("client")
    (root / "forge").mkdir()
    receiver = WebhookReceiver()
    hooks = serve_webhooks(receiver)
    with ScriptedModelServer(ask_to_write) as model:
        server = ForgeServer(
            root / "forge", server_config(model.url), env={"FORGE_API_KEY": ADMIN_KEY}
        )
        try:
            server.start()
            yield Setup(server, receiver, root)
        finally:
            server.close()
            stop_serving(hooks)


# ---- recording what the clients did ------------------------------------------------------------


@dataclass
class Sent:
    """What one flavour's clients did: the methods the tests called, and each request the server
    answered (method, path, status)."""

    methods: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, int]] = field(default_factory=list)


class RecordingTransport(httpx.BaseTransport):
    """httpx's own transport, noting each answered request in `sent`."""

    def __init__(self, sent: Sent) -> None:
        self._sent = sent
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        self._sent.requests.append((request.method, request.url.path, response.status_code))
        return response

    def close(self) -> None:
        self._inner.close()


class AsyncRecordingTransport(httpx.AsyncBaseTransport):
    """httpx's own async transport, noting each answered request in `sent`."""

    def __init__(self, sent: Sent) -> None:
        self._sent = sent
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        self._sent.requests.append((request.method, request.url.path, response.status_code))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class EventLoopThread:
    """An asyncio event loop in a thread of its own, for the async client's coroutines to run on
    while the tests stay synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wait() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wait(), self.loop).result()

    def close(self) -> None:
        self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class BlockingIterator:
    """An async iterable (`AsyncEventStream`, `iter_events`) read as an iterator, closed with
    `close` as the sync streams are; its other attributes (`last_seq`, ...) are the
    iterable's."""

    def __init__(self, source: AsyncIterable[Any], loop: EventLoopThread) -> None:
        self._source = source
        self._iterator = source.__aiter__()
        self._loop = loop

    def __iter__(self) -> BlockingIterator:
        return self

    def __next__(self) -> Any:
        try:
            return self._loop.run(anext(self._iterator))
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._loop.run(self._source.aclose())  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class Recorded:
    """A client as the tests call it: `ForgeClient`'s interface, with the name of each method
    called noted in `sent.methods`. Over an `AsyncForgeClient` (`loop` given) each coroutine is
    run to its end on the loop and each async iterable read as an iterator."""

    def __init__(
        self, client: ForgeClient | AsyncForgeClient, sent: Sent, loop: EventLoopThread | None
    ) -> None:
        self._client = client
        self._sent = sent
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._sent.methods.add(name)
            return self._settle(attribute(*args, **kwargs))

        return call

    def _settle(self, result: Any) -> Any:
        if self._loop is None:
            return result
        if inspect.isawaitable(result):
            return self._loop.run(result)
        if isinstance(result, AsyncIterable):
            return BlockingIterator(result, self._loop)
        return result


class Clients:
    """One flavour's clients of one server: `admin` (the admin key) and, once `add_owners` has
    run, `owner` (a key of its own owner, which most tests act as) and `other` (another
    owner's key)."""

    owner: ForgeClient
    owner_id: str
    other: ForgeClient

    def __init__(self, flavour: str, base_url: str, root: Path) -> None:
        self.flavour = flavour
        self.base_url = base_url
        self.root = root
        self.sent = Sent()
        self._loop = EventLoopThread() if flavour == "async" else None
        self._opened: list[ForgeClient | AsyncForgeClient] = []
        self.admin = self.make(ADMIN_KEY)

    def add_owners(self) -> None:
        self.owner_id = f"alice-{self.flavour}"
        self.owner = self.make(self.admin.create_key(self.owner_id, name="owner").key)
        self.other = self.make(self.admin.create_key(f"bob-{self.flavour}").key)

    def make(
        self, api_key: str, *, base_url: str | None = None, record: bool = True, **options: Any
    ) -> ForgeClient:
        """A client of this flavour with `api_key`, of this server unless `base_url` says
        otherwise; `record`: note its requests in `sent` (only a Forge server's answers count)."""
        url = base_url or self.base_url
        client: ForgeClient | AsyncForgeClient
        if self._loop is None:
            transport = RecordingTransport(self.sent) if record else None
            client = ForgeClient(url, api_key, transport=transport, **options)
        else:
            async_transport = AsyncRecordingTransport(self.sent) if record else None

            async def open_client() -> AsyncForgeClient:
                return AsyncForgeClient(url, api_key, transport=async_transport, **options)

            client = self._loop.run(open_client())
        self._opened.append(client)
        # The async flavour answers as `ForgeClient` does (see `Recorded`).
        return cast(ForgeClient, Recorded(client, self.sent, self._loop))

    def repository(self, name: str) -> Path:
        return make_repository(self.root / f"{self.flavour}-{name}")

    def close(self) -> None:
        for client in self._opened:
            if isinstance(client, AsyncForgeClient):
                assert self._loop is not None
                self._loop.run(client.close())
            else:
                client.close()
        if self._loop is not None:
            self._loop.close()


@pytest.fixture(scope="module", params=FLAVOURS)
def clients(request: pytest.FixtureRequest, setup: Setup) -> Iterator[Clients]:
    made = Clients(request.param, setup.server.base_url, setup.root)
    try:
        made.add_owners()
        yield made
    finally:
        made.close()


def finished(forge: ForgeClient, agent_id: str, request_id: str) -> list[EventEnvelope]:
    """The run's events, streamed until its final one."""
    events = list(forge.stream(agent_id, request_id=request_id))
    assert events and events[-1].is_final, events
    return events


# ---- agents, runs and events -------------------------------------------------------------------


def test_agents_and_profiles(clients: Clients) -> None:
    forge = clients.owner
    profiles = forge.list_profiles()
    by_name = {p.name: p for p in profiles.profiles}
    assert (by_name["writer"].executor, by_name["careful"].permission_mode) == ("command", "ask")
    assert "DEFAULT" in profiles.executors["forge"]

    repo = clients.repository("agents")
    agent = forge.create_agent(profile="writer", repo=str(repo), wait=True)
    assert (agent.status, agent.owner_id, agent.repo) == ("ready", clients.owner_id, str(repo))
    assert agent.workspace_path and agent.branch == f"forge/{agent.id}"
    assert Path(agent.workspace_path, "hello.txt").read_text() == "hello\n"
    assert forge.get_agent(agent.id).id == agent.id
    # The admin reaches it by naming its owner.
    assert clients.admin.get_agent(agent.id, user_id=clients.owner_id).id == agent.id

    newer = forge.create_agent(AgentCreate(profile="writer"), wait=True)
    first = forge.list_agents(limit=1)
    assert [a.id for a in first.agents] == [newer.id] and first.next_cursor
    listed = [*first.agents, *forge.list_agents(cursor=first.next_cursor).agents]
    assert {agent.id, newer.id} <= {a.id for a in listed}
    assert len(listed) == first.total

    assert forge.update_agent(agent.id, model="model-x").model == "model-x"
    assert forge.get_agent(agent.id).model == "model-x"
    assert forge.update_agent(agent.id, model=None).model is None

    # Without a run to follow, a stream goes on until its agent is deleted.
    run = forge.send_message(newer.id, "echo one")
    everything = iter(forge.stream(newer.id))
    before_delete = [next(everything)]
    while not before_delete[-1].is_final:
        before_delete.append(next(everything))
    assert before_delete[-1].request_id == run.request_id
    forge.delete_agent(newer.id, purge=True)
    # The loop ends by itself once the agent is gone, every seq once and in order.
    seqs = [e.seq for e in before_delete + list(everything)]
    assert seqs == list(range(1, len(seqs) + 1))
    with pytest.raises(NotFoundError) as gone:
        forge.get_agent(newer.id)
    assert (gone.value.code, gone.value.status_code) == ("agent_not_found", 404)


def test_runs_events_and_streams(clients: Clients) -> None:
    forge = clients.owner
    agent = forge.create_agent(profile="writer", wait=True)
    said = f"said-by-{clients.flavour}"
    run = forge.send_message(agent.id, f"echo {said}")
    assert run.agent_id == agent.id and run.status in ("processing", "queued")

    over_sse = finished(forge, agent.id, run.request_id)
    assert over_sse[-1].outcome == "succeeded"
    assert {e.request_id for e in over_sse} == {run.request_id}
    assert said in json.dumps([e.model_dump(mode="json") for e in over_sse])
    over_websocket = list(forge.stream(agent.id, request_id=run.request_id, transport="websocket"))
    assert [e.seq for e in over_websocket] == [e.seq for e in over_sse]

    logged = list(forge.iter_events(agent.id))
    assert [e.seq for e in logged] == list(range(1, logged[-1].seq + 1))
    page = forge.events(agent.id, limit=2)
    assert [e["seq"] for e in page.events] == [1, 2] and page.has_more
    rest = forge.events(agent.id, after=page.next_after, limit=1000)
    assert [e["seq"] for e in page.events + rest.events] == [e.seq for e in logged]
    assert not rest.has_more and rest.last_seq == logged[-1].seq

    # A run interrupted once its first event has streamed in.
    slow = forge.send_message(agent.id, MessageCreate(content="sleep 60"))
    live = iter(forge.stream(agent.id, request_id=slow.request_id))
    assert next(live).request_id == slow.request_id
    stopping = forge.interrupt(agent.id, request_id=slow.request_id)
    assert (stopping.status, stopping.request_id) == ("interrupting", slow.request_id)
    ended = list(live)
    assert ended[-1].is_final and ended[-1].outcome == "interrupted"


def test_permissions_asked_and_answered(clients: Clients) -> None:
    forge = clients.owner
    agent = forge.create_agent(profile="careful", wait=True)
    assert agent.permission_mode == "ask" and agent.workspace_path
    run = forge.send_message(agent.id, "write approved.txt")

    wait_for(lambda: forge.list_permissions(agent.id, pending=True).permissions, timeout=30)
    [asked] = forge.list_permissions(agent.id, pending=True).permissions
    assert (asked.status, asked.request_id, asked.tool) == ("pending", run.request_id, "write_file")
    answered = forge.answer_permission(agent.id, asked.permission_id, "once")
    assert (answered.permission_id, answered.status, answered.decision) == (
        asked.permission_id,
        "answered",
        "once",
    )
    with pytest.raises(ConflictError) as again:
        forge.answer_permission(agent.id, asked.permission_id, "reject", message="too late")
    assert (again.value.code, again.value.status_code) == ("permission_answered", 409)

    assert finished(forge, agent.id, run.request_id)[-1].outcome == "succeeded"
    assert Path(agent.workspace_path, "approved.txt").read_text() == "approved\n"
    listed = forge.list_permissions(agent.id).permissions
    assert [(p.permission_id, p.status) for p in listed] == [(asked.permission_id, "answered")]


def test_webhook_deliveries_and_redelivery(clients: Clients, setup: Setup) -> None:
    forge, receiver = clients.owner, setup.receiver
    agent = forge.create_agent(profile="writer", wait=True)
    run = forge.send_message(agent.id, "echo hooked", webhook_url=receiver.url)
    finished(forge, agent.id, run.request_id)

    def delivered() -> list[Any]:
        page = forge.list_deliveries(agent.id)
        return page.deliveries if all(d.status == "delivered" for d in page.deliveries) else []

    wait_for(delivered, timeout=30)
    deliveries = forge.list_deliveries(agent.id).deliveries
    assert {(d.request_id, d.endpoint_url) for d in deliveries} == {(run.request_id, receiver.url)}
    only_delivered = forge.list_deliveries(agent.id, status="delivered").deliveries
    assert [d.id for d in only_delivered] == [d.id for d in deliveries]
    assert forge.list_deliveries(agent.id, status="failed").deliveries == []
    tail = forge.list_deliveries(agent.id, after=deliveries[0].seq, limit=1)
    assert [d.id for d in tail.deliveries] == [d.id for d in deliveries[1:2]]

    first = deliveries[0]
    again = forge.redeliver(first.id)
    assert (again.id, again.event_id) == (first.id, first.event_id)
    receiver.wait_for(
        lambda got: sum(r.headers.get("webhook-id") == first.event_id for r in got) == 2
    )


# ---- tasks, sessions, worktrees ----------------------------------------------------------------


def test_tasks_sessions_and_transcripts(clients: Clients) -> None:
    forge = clients.owner
    # Well before the task (the server's clock is this machine's).
    early = datetime.now(UTC) - timedelta(seconds=2)
    prompt = f"echo task-of-{clients.flavour}"
    task = forge.create_task(title=f"a {clients.flavour} task", prompt=prompt, profile="writer")
    assert task.owner_id == clients.owner_id and task.title == f"a {clients.flavour} task"
    assert finished(forge, task.session_id, task.request_id)[-1].outcome == "succeeded"
    got = forge.get_task(task.task_id)
    assert (got.session_id, got.status) == (task.session_id, "succeeded")
    assert task.task_id in {t.task_id for t in forge.list_tasks().tasks}

    recent = forge.list_sessions(
        profile="writer", created_after=early, created_before=datetime.now(UTC) + timedelta(1)
    )
    assert task.session_id in {s.id for s in recent.sessions}
    older = forge.list_sessions(created_before=early)
    assert task.session_id not in {s.id for s in older.sessions}
    session = forge.get_session(task.session_id)
    assert (session.id, session.profile, session.runs) == (task.session_id, "writer", 1)

    transcript = forge.transcript(task.session_id)
    assert transcript.session_id == task.session_id
    kinds = [e.kind for e in transcript.entries]
    assert kinds[0] == "user_message" and kinds[-1] == "run_end"
    assert prompt in json.dumps(transcript.entries[0].entry)
    assert prompt in forge.transcript_markdown(task.session_id)

    stopped = forge.stop_session(task.session_id)
    assert (stopped.id, stopped.status) == (task.session_id, "stopped")
    assert task.session_id in {s.id for s in forge.list_sessions(status="stopped").sessions}
    resumed = forge.resume_session(task.session_id, f"echo resumed-{clients.flavour}")
    assert resumed.agent_id == task.session_id
    assert finished(forge, task.session_id, resumed.request_id)[-1].outcome == "succeeded"
    assert forge.get_session(task.session_id).runs == 2
    assert f"resumed-{clients.flavour}" in forge.transcript_markdown(task.session_id)


AGENT_WORK = """set -e
printf 'made by the agent\\n' > made.txt
echo changed > hello.txt
git add -A
git commit -qm 'agent work'
"""


def test_worktrees_diffs_files_merge_and_cleanup(clients: Clients) -> None:
    forge = clients.owner
    repo = clients.repository("merge")
    agent = forge.create_agent(profile="writer", repo=str(repo), base_ref="main", wait=True)
    assert agent.workspace_path
    run = forge.send_message(agent.id, AGENT_WORK)
    assert finished(forge, agent.id, run.request_id)[-1].outcome == "succeeded"

    worktrees = {w.session: w for w in forge.list_worktrees().worktrees}
    mine = worktrees[agent.id]
    assert (mine.path, mine.branch, mine.kind) == (agent.workspace_path, agent.branch, "session")

    diff = forge.diff(agent.id)
    assert {f.path: f.status for f in diff.files} == {"made.txt": "added", "hello.txt": "modified"}
    assert "+made by the agent" in diff.diff and "-hello" in diff.diff
    assert diff.base_commit == agent.base_commit
    root = forge.files(agent.id)
    assert root.type == "dir" and {e.name for e in root.entries or []} == {"made.txt", "hello.txt"}
    made = forge.files(agent.id, "made.txt")
    assert (made.type, made.content) == ("file", "made by the agent\n")
    with pytest.raises(InvalidRequestError) as outside:
        forge.files(agent.id, "../../etc/passwd")
    assert (outside.value.code, outside.value.status_code) == ("invalid_path", 422)

    # `main` is checked out in the repository: moving it would desync that checkout.
    with pytest.raises(ConflictError) as checked_out:
        forge.merge(agent.id)
    assert (checked_out.value.code, checked_out.value.status_code) == ("base_checked_out", 409)
    git("checkout", "-q", "--detach", cwd=repo)
    merged = forge.merge(agent.id, message=f"land {clients.flavour}")
    assert (merged.session, merged.base_branch) == (agent.id, "main")
    assert git("rev-parse", "main", cwd=repo).strip() == merged.commit
    assert git("show", "main:made.txt", cwd=repo) == "made by the agent\n"
    assert git("log", "-1", "--format=%s", "main", cwd=repo).strip() == f"land {clients.flavour}"

    forge.delete_agent(agent.id, graceful=False)
    report = clients.admin.cleanup_worktrees(older_than_hours=0)
    assert (agent.id, "deleted") in {(r.session, r.reason) for r in report.removed}
    assert not Path(agent.workspace_path).exists()
    assert agent.id not in {w.session for w in forge.list_worktrees().worktrees}


# ---- neurons, keys, the server -----------------------------------------------------------------


def test_neurons(clients: Clients) -> None:
    forge = clients.owner
    before = {n.name: n for n in forge.list_neurons().neurons}
    assert (before["wish"].status, before["wish"].agent_id) == ("not_started", None)

    accepted = forge.message_neuron("wish", f"a wish from {clients.flavour}")
    assert accepted.neuron == "wish" and accepted.agent_id
    neuron = forge.get_neuron("wish")
    assert (neuron.name, neuron.profile, neuron.agent_id) == (
        "wish",
        "neuron:wish",
        accepted.agent_id,
    )
    assert isinstance(neuron.state, dict) and neuron.version >= 0
    after = {n.name: n for n in forge.list_neurons().neurons}
    assert after["wish"].agent_id == accepted.agent_id
    # Its agent is an agent of the caller's, reached the same way.
    assert forge.get_agent(accepted.agent_id).owner_id == clients.owner_id

    # Its state document, live: a snapshot first.
    states = forge.neuron_stream("wish")
    snapshot = next(iter(states))
    states.close()
    assert snapshot.is_snapshot and snapshot.neuron == "wish" and snapshot.version >= 0
    assert isinstance(snapshot.data, dict) and states.agent_id == accepted.agent_id


def test_keys(clients: Clients) -> None:
    admin = clients.admin
    owner_id = f"carol-{clients.flavour}"
    created = admin.create_key(owner_id, name="ci")
    assert (created.owner_id, created.name, created.revoked_at) == (owner_id, "ci", None)
    listed = admin.list_keys(owner_id=owner_id).keys
    assert [k.key_id for k in listed] == [created.key_id]
    assert created.key not in json.dumps([k.model_dump(mode="json") for k in listed])
    assert created.key_id in {k.key_id for k in admin.list_keys().keys}

    carol = clients.make(created.key)
    assert carol.list_agents().total == 0
    revoked = admin.revoke_key(created.key_id)
    assert revoked.key_id == created.key_id and revoked.revoked_at is not None
    with pytest.raises(AuthenticationError) as refused:
        carol.list_agents()
    assert (refused.value.code, refused.value.status_code) == ("invalid_api_key", 401)


def test_server_health_status_and_analytics(clients: Clients) -> None:
    forge = clients.owner
    health = forge.health()
    assert (health.status, health.version) == ("ok", FORGE_VERSION)
    assert forge.ready() is True

    agent = forge.create_agent(profile="writer", wait=True)
    run = forge.send_message(agent.id, "exit 3")
    assert finished(forge, agent.id, run.request_id)[-1].outcome == "failed"
    status = forge.status()
    assert status.version == FORGE_VERSION and status.database.backend == "sqlite"
    # The dashboard counts the sessions not deleted (the agents); analytics, all of them.
    assert status.sessions.total == forge.list_agents().total >= 1
    analytics = forge.analytics(since=datetime.now(UTC) - timedelta(hours=1), bucket="hour")
    assert analytics.bucket == "hour" and analytics.series
    assert analytics.totals.failed >= 1 and analytics.totals.errors >= 1
    assert analytics.totals.sessions == forge.list_sessions().total


# ---- each client as its users hold it ----------------------------------------------------------


def test_the_sync_client_from_the_environment(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGE_BASE_URL", setup.server.base_url + "/")
    monkeypatch.setenv("FORGE_API_KEY", ADMIN_KEY)
    with ForgeClient() as forge:
        assert forge.base_url == setup.server.base_url
        agent = forge.create_agent(profile="writer", owner_id="erin-sync", wait=True)
        run = forge.send_message(agent.id, "echo from the environment")
        with forge.stream(agent.id, request_id=run.request_id) as events:
            seqs = [e.seq for e in events]
        assert (events.last_seq, events.connections) == (seqs[-1], 1)


async def test_the_async_client_from_the_environment_with_concurrent_calls(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGE_BASE_URL", setup.server.base_url)
    monkeypatch.setenv("FORGE_API_KEY", ADMIN_KEY)
    async with AsyncForgeClient() as forge:
        agents = await asyncio.gather(
            *(forge.create_agent(profile="writer", owner_id="erin-async", wait=True) for _ in "abc")
        )
        runs = await asyncio.gather(*(forge.send_message(a.id, f"echo {a.id}") for a in agents))

        async def final(agent_id: str, request_id: str) -> EventEnvelope:
            async with forge.stream(agent_id, request_id=request_id) as events:
                return [e async for e in events][-1]

        finals = await asyncio.gather(*(final(r.agent_id, r.request_id) for r in runs))
        assert [(f.agent_id, f.outcome) for f in finals] == [(a.id, "succeeded") for a in agents]
        assert (await forge.list_agents(user_id="erin-async")).total == 3


# ---- errors ------------------------------------------------------------------------------------


def test_errors(clients: Clients, setup: Setup) -> None:
    forge = clients.owner
    with pytest.raises(NotFoundError) as missing:
        forge.get_agent("ag_missing")
    assert (missing.value.code, missing.value.status_code) == ("agent_not_found", 404)
    assert "ag_missing" in missing.value.message
    with pytest.raises(NotFoundError) as no_delivery:
        forge.redeliver("dl_missing")
    assert (no_delivery.value.code, no_delivery.value.status_code) == ("delivery_not_found", 404)

    # Refused by the server...
    with pytest.raises(InvalidRequestError) as refused:
        forge.list_agents(limit=0)
    assert (refused.value.code, refused.value.status_code) == ("invalid_request", 422)
    assert "limit" in refused.value.message
    # ...and by the client, before sending anything.
    sent_before = len(clients.sent.requests)
    with pytest.raises(InvalidRequestError) as unknown:
        forge.create_agent(profile="writer", colour="red")
    assert unknown.value.status_code is None and "colour: is not a known field" in str(
        unknown.value
    )
    with pytest.raises(InvalidRequestError) as naive:
        forge.list_sessions(created_after=datetime.now())
    assert "time zone" in naive.value.message
    with pytest.raises(InvalidRequestError):
        forge.send_message("ag_any", "")
    assert len(clients.sent.requests) == sent_before

    with pytest.raises(AuthenticationError) as wrong_key:
        clients.make(WRONG_KEY).list_agents()
    assert (wrong_key.value.code, wrong_key.value.status_code) == ("invalid_api_key", 401)
    with pytest.raises(PermissionDeniedError) as not_admin:
        clients.other.cleanup_worktrees()
    assert (not_admin.value.code, not_admin.value.status_code) == ("admin_only", 403)
    with pytest.raises(PermissionDeniedError) as not_theirs:
        clients.other.list_agents(user_id=clients.owner_id)
    assert (not_theirs.value.code, not_theirs.value.status_code) == ("owner_mismatch", 403)

    closed = f"http://127.0.0.1:{free_port()}"
    nowhere = clients.make(ADMIN_KEY, base_url=closed, record=False, max_retries=0)
    with pytest.raises(APIConnectionError) as unreachable:
        nowhere.health()
    assert (unreachable.value.code, unreachable.value.status_code) == ("unreachable", None)
    with pytest.raises(StreamLostError) as lost:
        list(nowhere.stream("ag_any", reconnect_for=0.3))
    assert lost.value.code == "stream_lost"

    # Another service where Forge should be (the webhook receiver: 501 to a GET, an empty 200
    # to a POST).
    elsewhere = setup.receiver.url.removesuffix("/hook")
    stranger = clients.make(ADMIN_KEY, base_url=elsewhere, record=False, max_retries=0)
    with pytest.raises(ServerError) as failed:
        stranger.list_tasks()
    assert (failed.value.code, failed.value.status_code) == ("http_501", 501)
    with pytest.raises(InvalidResponseError) as not_forge:
        stranger.create_key("nobody")
    assert not_forge.value.code == "bad_response" and "ApiKeyCreated" in not_forge.value.message


def test_over_the_rate_limit_both_clients_raise_rate_limit_error(
    forge_server: Any, tmp_path: Path
) -> None:
    limited = "\n[auth]\nenabled = true\nrate_limit_per_minute = 60\nrate_limit_burst = 2\n"
    server: ForgeServer = forge_server(limited, env={"FORGE_API_KEY": ADMIN_KEY})
    for flavour in FLAVOURS:
        made = Clients(flavour, server.base_url, tmp_path)
        try:
            key = made.admin.create_key(f"dora-{flavour}")
            dora = made.make(key.key, max_retries=0)
            dora.list_agents()
            dora.list_agents()
            with pytest.raises(RateLimitError) as over:
                dora.list_agents()
            assert (over.value.code, over.value.status_code) == ("rate_limited", 429)
            assert 1 <= over.value.retry_after <= 60
        finally:
            made.close()


# ---- nothing left out --------------------------------------------------------------------------


def operations(cls: type) -> set[str]:
    """The client's public methods that are API operations."""
    public = {name for name in dir(cls) if not name.startswith("_")}
    return {name for name in public if callable(getattr(cls, name))} - set(NOT_OPERATIONS)


def route_patterns(doc: dict[str, Any]) -> dict[tuple[str, str], re.Pattern[str]]:
    """Each operation of an OpenAPI document, and the paths its template matches."""
    patterns = {}
    for template, operations_of_path in doc["paths"].items():
        parts = re.split(r"(\{[^/}]+\})", template)
        regex = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        for method in operations_of_path:
            patterns[(method.upper(), template)] = re.compile(regex)
    return patterns


def whole_module_ran(request: pytest.FixtureRequest, flavour: str) -> bool:
    """Whether every test of the module that takes `clients` was selected for `flavour`."""
    module = request.module
    defined = {
        name
        for name, value in vars(module).items()
        if name.startswith("test_") and "clients" in inspect.signature(value).parameters
    }
    selected = {
        item.originalname
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.module is module
        and hasattr(item, "callspec")
        and item.callspec.params.get("clients") == flavour
    }
    return selected == defined


def test_both_clients_offer_the_same_operations() -> None:
    """The same names, parameters and defaults: the async client is the sync one with `await`
    (written twice, so this keeps them together)."""
    assert operations(ForgeClient) == operations(AsyncForgeClient)
    for name in operations(ForgeClient):
        sync = inspect.signature(getattr(ForgeClient, name))
        asynchronous = inspect.signature(getattr(AsyncForgeClient, name))
        assert list(sync.parameters.values()) == list(asynchronous.parameters.values()), name


def test_every_method_and_every_route_was_called(
    clients: Clients, setup: Setup, request: pytest.FixtureRequest
) -> None:
    """Last in the module: what the tests above did with this flavour's client."""
    if not whole_module_ran(request, clients.flavour):
        pytest.skip("checks what the whole module did; run all of its tests")
    client_class = ForgeClient if clients.flavour == "sync" else AsyncForgeClient
    uncalled = operations(client_class) - clients.sent.methods
    assert not uncalled, f"{client_class.__name__} methods no test calls: {sorted(uncalled)}"

    doc = setup.server.http.get("/openapi.json").json()
    patterns = route_patterns(doc)
    assert set(NOT_CALLED_ROUTES) <= set(patterns), "NOT_CALLED_ROUTES names a route that is gone"
    answered = set()
    for method, path, status in clients.sent.requests:
        routes = {r for r, p in patterns.items() if r[0] == method and p.fullmatch(path)}
        assert len(routes) == 1, f"{method} {path} is {len(routes)} operations of the document"
        if 200 <= status < 300:
            answered |= routes
    unanswered = set(patterns) - set(NOT_CALLED_ROUTES) - answered
    assert not unanswered, f"operations no {clients.flavour} call succeeded at: {unanswered}"
