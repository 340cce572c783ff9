"""What the MCP tools act on: one small async protocol, two implementations.

`InProcessBackend` calls the platform's services directly, as one caller (the key of the HTTP
request that carried the MCP message), with the same owner rules as the REST routes.
`HttpBackend` calls a running Forge server's REST API (for `forge mcp` over stdio), with the key
in `FORGE_API_KEY`; the server applies its own rules.

Both answer JSON-shaped dicts (what the REST API would answer) and raise `ForgeError` with
Forge's error code and message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import httpx

from forge.core.auth import Caller
from forge.core.errors import ForgeError
from forge.core.neurons import neuron_owner
from forge.core.schemas import InterruptRequest, MessageCreate
from forge.core.sessions import SessionStatus, transcript_markdown
from forge.core.tasks import TaskCreate

if TYPE_CHECKING:
    from forge.core.platform import Platform

JSON = dict[str, Any]


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
    """A running Forge server's REST API at `base_url`, with `headers` (the API key) on every
    request. `default_owner` stands for the owner a tool call leaves out (a new task's, the
    neuron's): needed when the server's auth is off; with an owner's key the server decides."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        *,
        default_owner: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.default_owner = default_owner
        self.client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers or {}, timeout=timeout
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: JSON | None = None,
    ) -> httpx.Response:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self.client.request(method, path, params=query, json=body)
        except httpx.HTTPError as exc:
            raise RemoteError(
                503, "unavailable", f"cannot reach Forge at {self.base_url}: {exc}"
            ) from exc
        if response.status_code >= 400:
            try:
                error = response.json()
                code, message = str(error["error"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", f"HTTP {response.status_code}: {response.text[:500]}"
            raise RemoteError(response.status_code, code, message)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> JSON:
        response = await self._call(method, path, **kwargs)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            # Something answers at the base URL, but not Forge (a wrong port, a proxy's page).
            kind = response.headers.get("content-type") or "no content type"
            raise RemoteError(
                502,
                "bad_response",
                f"{self.base_url} answered {method} {path} with HTTP {response.status_code} "
                f"and {kind}, not Forge's JSON: is it a Forge server (--base-url, "
                "FORGE_BASE_URL)?",
            )
        return data

    async def create_task(self, body: TaskCreate) -> JSON:
        if body.owner_id is None and self.default_owner is not None:
            body = body.model_copy(update={"owner_id": self.default_owner})
        return await self._json(
            "POST", "/api/v1/tasks", body=body.model_dump(mode="json", exclude_none=True)
        )

    async def list_sessions(
        self,
        *,
        owner_id: str | None,
        status: SessionStatus | None,
        profile: str | None,
        limit: int,
        cursor: str | None,
    ) -> JSON:
        params = {
            "user_id": owner_id,
            "status": status,
            "profile": profile,
            "limit": limit,
            "cursor": cursor,
        }
        return await self._json("GET", "/api/v1/sessions", params=params)

    async def get_session(self, session_id: str) -> JSON:
        return await self._json("GET", f"/api/v1/sessions/{_segment(session_id)}")

    async def send_message(self, session_id: str, body: MessageCreate) -> JSON:
        return await self._json(
            "POST",
            f"/api/v1/agents/{_segment(session_id)}/messages",
            body=body.model_dump(mode="json", exclude_none=True),
        )

    async def interrupt(self, session_id: str, body: InterruptRequest) -> JSON:
        return await self._json(
            "POST",
            f"/api/v1/agents/{_segment(session_id)}/interrupt",
            body=body.model_dump(mode="json", exclude_none=True),
        )

    async def transcript(self, session_id: str) -> JSON:
        return await self._json("GET", f"/api/v1/sessions/{_segment(session_id)}/transcript")

    async def transcript_markdown(self, session_id: str) -> str:
        response = await self._call(
            "GET",
            f"/api/v1/sessions/{_segment(session_id)}/transcript",
            params={"format": "markdown"},
        )
        return response.text

    async def list_neurons(self, owner_id: str | None, project: str | None) -> JSON:
        params = {"user_id": owner_id or self.default_owner, "project": project}
        return await self._json("GET", "/api/v1/neurons", params=params)

    async def get_neuron(self, name: str, owner_id: str | None, project: str | None) -> JSON:
        params = {"user_id": owner_id or self.default_owner, "project": project}
        return await self._json("GET", f"/api/v1/neurons/{_segment(name)}", params=params)

    async def talk_to_neuron(
        self, name: str, body: MessageCreate, owner_id: str | None, project: str | None
    ) -> JSON:
        payload = body.model_dump(mode="json", exclude_none=True)
        if project is not None:
            payload["project"] = project
        return await self._json(
            "POST",
            f"/api/v1/neurons/{_segment(name)}/messages",
            params={"user_id": owner_id or self.default_owner},
            body=payload,
        )


def _segment(value: str) -> str:
    """`value` as one path segment: an id or name from a tool call cannot reach another route."""
    return quote(value, safe="")
