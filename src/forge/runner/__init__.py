"""The runner protocol: the in-sandbox server (`forge.runner.server`) and the platform's client.

The public surface here is the client; the server is started as `python -m forge.runner`.
"""

from forge.runner.client import (
    RunnerClient,
    RunnerDisconnected,
    RunnerError,
    RunnerStream,
    RunnerUnauthenticated,
    RunnerUnavailable,
    grpc_target,
)

__all__ = [
    "RunnerClient",
    "RunnerDisconnected",
    "RunnerError",
    "RunnerStream",
    "RunnerUnauthenticated",
    "RunnerUnavailable",
    "grpc_target",
]
