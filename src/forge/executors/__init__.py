"""Executors: what runs inside a sandbox for each run (agent CLIs, the built-in agent, a command).

`get_executor` picks the implementation by `ExecutorSpec.kind`; nothing else in Forge needs to
know which one is in use.
"""

from __future__ import annotations

from collections.abc import Mapping

from forge.executors.base import (
    Executor,
    ExecutorError,
    ExecutorEvent,
    ExecutorOutput,
    ExecutorResult,
    ExecutorStartFailed,
    InvalidExecutorSpec,
    RunContext,
    UnknownExecutor,
    executor_environment,
)
from forge.executors.command import CommandExecutor
from forge.runner.proto import runner_pb2

EXECUTORS: Mapping[str, type[Executor]] = {
    CommandExecutor.kind: CommandExecutor,
}


def get_executor(spec: runner_pb2.ExecutorSpec) -> Executor:
    """A new executor for one run, of the kind `spec` names.

    Raises `UnknownExecutor` for a kind not in `EXECUTORS` and `InvalidExecutorSpec` when the
    spec lacks what that executor needs.
    """
    executor_class = EXECUTORS.get(spec.kind)
    if executor_class is None:
        known = ", ".join(sorted(EXECUTORS))
        raise UnknownExecutor(f"unknown executor kind {spec.kind!r} (known: {known})")
    return executor_class.from_spec(spec)


__all__ = [
    "EXECUTORS",
    "CommandExecutor",
    "Executor",
    "ExecutorError",
    "ExecutorEvent",
    "ExecutorOutput",
    "ExecutorResult",
    "ExecutorStartFailed",
    "InvalidExecutorSpec",
    "RunContext",
    "UnknownExecutor",
    "executor_environment",
    "get_executor",
]
