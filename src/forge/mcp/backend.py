"""What the MCP tools act on: one small async protocol, two implementations.

`InProcessBackend` calls the platform's services directly, as one caller (the key of the HTTP
request that carried the MCP message), with the same owner rules as the REST routes.
`HttpBackend` calls a running Forge server's REST API through `forge.client` (for `forge mcp`
over stdio), with the key in `FORGE_API_KEY`; the server applies its own rules.

Both answer JSON-shaped dicts (what the REST API would answer) and raise `ForgeError` with
Forge's error code and message.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from forge.client import (
    APIConnectionError,
    AsyncForgeClient,
    ForgeClientError,
    InvalidResponseError,
)
from forge.core.auth import Caller
from forge.core.errors import ForgeError
from forge.core.neurons import NeuronMessage, neuron_owner
from forge.core.schemas import InterruptRequest, MessageCreate
from forge.core.sessions import SessionStatus, transcript_markdown
from forge.core.tasks import TaskCreate

if TYPE_CHECKING:
    from forge.core.platform import Platform

JSON = dict[str, Any]
T = TypeVar("T")


class ForgeBackend(Protocol):
    """The operations the MCP tools and resources need; each answers what the REST API would."""

    async def create_task(self, body: TaskCreate) -> JSON: ...

    async def list_sessions(
        self,
        *,
        owner_id: str | None,
        status: SessionStatus | None,
        profile: str | None,
        limit: int,
        cursor: str | None,
    ) -> JSON: ...

    async def get_session(self, session_id: str) -> JSON: ...

    async def send_message(self, session_id: str, body: MessageCreate) -> JSON: ...

    async def interrupt(self, session_id: str, body: InterruptRequest) -> JSON: ...

    async def transcript(self, session_id: str) -> JSON: ...

    async def transcript_markdown(self, session_id: str) -> str: ...

    async def list_neurons(self, owner_id: str | None, project: str | None) -> JSON: ...

    async def get_neuron(self, name: str, owner_id: str | None, project: str | None) -> JSON: ...

    async def talk_to_neuron(
        self, name: str, body: MessageCreate, owner_id: str | None, project: str | None
    ) -> JSON: ...


class RemoteError(ForgeError):
    """Raised by `HttpBackend` when the server answers an error (its `error` code, `message`
    and HTTP status), cannot be reached (`unavailable`), or answers what is not Forge's JSON
    (`bad_response`)."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code


class InProcessBackend:
    """The platform's services, acting for `caller` (an owner's key reaches that owner's
    objects only; the admin key, or auth turned off, every owner's)."""

    def __init__(self, platform: Platform, caller: Caller) -> None:
        self.platform = platform
        self.caller = caller

    @property
    def _scope(self) -> str | None:
        return self.caller.scope(None)

    async def create_task(self, body: TaskCreate) -> JSON:
        owner = self.caller.owner_for_new(body.owner_id)
        task = await self.platform.tasks.create(body, owner_id=owner)
        return task.model_dump(mode="json")

    async def list_sessions(
        self,
        *,
        owner_id: str | None,
        status: SessionStatus | None,
        profile: str | None,
        limit: int,
        cursor: str | None,
    ) -> JSON:
        page = await self.platform.sessions.list_sessions(
            self.caller.scope(owner_id), status=status, profile=profile, limit=limit, cursor=cursor
        )
        return page.model_dump(mode="json")

    async def get_session(self, session_id: str) -> JSON:
        session = await self.platform.sessions.get(session_id, self._scope)
        return session.model_dump(mode="json")

    async def send_message(self, session_id: str, body: MessageCreate) -> JSON:
        accepted = await self.platform.agents.send_message(session_id, self._scope, body)
        return accepted.model_dump(mode="json")

    async def interrupt(self, session_id: str, body: InterruptRequest) -> JSON:
        accepted = await self.platform.agents.interrupt(session_id, self._scope, body)
        return accepted.model_dump(mode="json")

    async def transcript(self, session_id: str) -> JSON:
        transcript = await self.platform.sessions.transcript(session_id, self._scope)
        return transcript.model_dump(mode="json")

    async def transcript_markdown(self, session_id: str) -> str:
        return transcript_markdown(await self.platform.sessions.transcript(session_id, self._scope))

    # A neuron has an agent per owner (and project): these act for one owner, as the REST
    # routes do.
    async def list_neurons(self, owner_id: str | None, project: str | None) -> JSON:
        owner = neuron_owner(self.caller, owner_id)
        neurons = await self.platform.neurons.list_neurons(owner, project)
        return neurons.model_dump(mode="json")

    async def get_neuron(self, name: str, owner_id: str | None, project: str | None) -> JSON:
        neuron = await self.platform.neurons.get(name, neuron_owner(self.caller, owner_id), project)
        return neuron.model_dump(mode="json")

    async def talk_to_neuron(
        self, name: str, body: MessageCreate, owner_id: str | None, project: str | None
    ) -> JSON:
        owner = neuron_owner(self.caller, owner_id)
        accepted = await self.platform.neurons.send(
            name, owner_id=owner, project=project, body=body
        )
        return accepted.model_dump(mode="json")


class HttpBackend:
    """A running Forge server's REST API at `base_url`, through `forge.client`, with `api_key`
    (else `$FORGE_API_KEY`). `default_owner` stands for the owner a tool call leaves out (a new
    task's, the neuron's): needed when the server's auth is off; with an owner's key the server
    decides."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        default_owner: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.client = AsyncForgeClient(base_url, api_key, timeout=timeout)
        self.base_url = self.client.base_url
        self.default_owner = default_owner

    async def aclose(self) -> None:
        await self.client.close()

    async def _ask(self, request: Awaitable[T]) -> T:
        """`request`'s answer; the client's errors as `RemoteError`, the server's code and
        message kept, and what is not the server's answer said with the URL it came from."""
        try:
            return await request
        except APIConnectionError as exc:
            raise RemoteError(503, "unavailable", exc.message) from exc
        except InvalidResponseError as exc:
            # Something answers at the base URL, but not Forge (a wrong port, a proxy's page).
            raise RemoteError(
                502,
                "bad_response",
                f"{exc.message}; is it a Forge server (--base-url, FORGE_BASE_URL)?",
            ) from exc
        except ForgeClientError as exc:
            # No status: a request the client's own check of the model refused.
            raise RemoteError(exc.status_code or 422, exc.code, exc.message) from exc

    async def create_task(self, body: TaskCreate) -> JSON:
        if body.owner_id is None and self.default_owner is not None:
            body = body.model_copy(update={"owner_id": self.default_owner})
        task = await self._ask(self.client.create_task(body))
        return task.model_dump(mode="json")

    async def list_sessions(
        self,
        *,
        owner_id: str | None,
        status: SessionStatus | None,
        profile: str | None,
        limit: int,
        cursor: str | None,
    ) -> JSON:
        page = await self._ask(
            self.client.list_sessions(
                user_id=owner_id, status=status, profile=profile, limit=limit, cursor=cursor
            )
        )
        return page.model_dump(mode="json")

    async def get_session(self, session_id: str) -> JSON:
        session = await self._ask(self.client.get_session(session_id))
        return session.model_dump(mode="json")

    async def send_message(self, session_id: str, body: MessageCreate) -> JSON:
        accepted = await self._ask(self.client.send_message(session_id, body))
        return accepted.model_dump(mode="json")

    async def interrupt(self, session_id: str, body: InterruptRequest) -> JSON:
        accepted = await self._ask(
            self.client.interrupt(
                session_id, request_id=body.request_id, webhook_url=body.webhook_url
            )
        )
        return accepted.model_dump(mode="json")

    async def transcript(self, session_id: str) -> JSON:
        transcript = await self._ask(self.client.transcript(session_id))
        return transcript.model_dump(mode="json")

    async def transcript_markdown(self, session_id: str) -> str:
        return await self._ask(self.client.transcript_markdown(session_id))

    async def list_neurons(self, owner_id: str | None, project: str | None) -> JSON:
        neurons = await self._ask(
            self.client.list_neurons(project=project, user_id=owner_id or self.default_owner)
        )
        return neurons.model_dump(mode="json")

    async def get_neuron(self, name: str, owner_id: str | None, project: str | None) -> JSON:
        neuron = await self._ask(
            self.client.get_neuron(name, project=project, user_id=owner_id or self.default_owner)
        )
        return neuron.model_dump(mode="json")

    async def talk_to_neuron(
        self, name: str, body: MessageCreate, owner_id: str | None, project: str | None
    ) -> JSON:
        fields = body.model_dump(exclude_unset=True)
        if project is not None:
            fields["project"] = project
        accepted = await self._ask(
            self.client.message_neuron(
                name,
                NeuronMessage.model_validate(fields),
                user_id=owner_id or self.default_owner,
            )
        )
        return accepted.model_dump(mode="json")
