"""Forge's Python client, for applications: every route of the API, typed with the server's own
models, and event streams that reconnect and resume by themselves.

    from forge.client import ForgeClient

    with ForgeClient() as forge:  # $FORGE_BASE_URL (default http://127.0.0.1:8887), $FORGE_API_KEY
        agent = forge.create_agent(profile="claude", repo="/srv/repo", wait=True)
        run = forge.send_message(agent.id, "Add a README")
        for event in forge.stream(agent.id, request_id=run.request_id):
            print(event.seq, event.event_type)

`neuron_stream(name)` follows a neuron's state document the same way (`NeuronStream`).
`AsyncForgeClient` is the same with `await` and `async for`. The models are in
`forge.client.models`; webhooks are checked with `forge.webhooks.verify`. See docs/client.md.
"""

from forge.client._async_client import AsyncEventStream, AsyncForgeClient, AsyncNeuronStream
from forge.client._base import DEFAULT_BASE_URL, resolve_base_url
from forge.client._client import EventStream, ForgeClient, NeuronStream
from forge.client._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    ForgeClientError,
    InvalidRequestError,
    InvalidResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StreamLostError,
)
from forge.client._neurons import NeuronFrame
from forge.client._stream import Transport

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncEventStream",
    "AsyncForgeClient",
    "AsyncNeuronStream",
    "AuthenticationError",
    "ConflictError",
    "EventStream",
    "ForgeClient",
    "ForgeClientError",
    "InvalidRequestError",
    "InvalidResponseError",
    "NeuronFrame",
    "NeuronStream",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "StreamLostError",
    "Transport",
    "resolve_base_url",
]
