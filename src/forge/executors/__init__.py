"""Executors: what runs inside a sandbox for each run (agent CLIs, the built-in agent, a command).

`get_executor` picks the implementation by `ExecutorSpec.kind`; nothing else in Forge needs to
know which one is in use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from forge.executors.base import (
    Attachment,
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

# Every executor kind and where its class lives (imported on first use, so the platform and a
# runner load only the adapters they run).
EXECUTOR_CLASSES: Mapping[str, str] = {
    "command": "forge.executors.command:CommandExecutor",
    "claude_code": "forge.executors.claude_code:ClaudeCodeExecutor",
    "opencode": "forge.executors.opencode:OpenCodeExecutor",
    "codex": "forge.executors.codex:CodexExecutor",
    "gemini": "forge.executors.gemini:GeminiExecutor",
    "forge": "forge.executors.forge_agent:ForgeAgentExecutor",
}


def executor_class(kind: str) -> type[Executor]:
    """The class of an executor kind. Raises `UnknownExecutor`."""
    where = EXECUTOR_CLASSES.get(kind)
    if where is None:
        known = ", ".join(sorted(EXECUTOR_CLASSES))
        raise UnknownExecutor(f"unknown executor kind {kind!r} (known: {known})")
    module_name, _, class_name = where.partition(":")
    cls: type[Executor] = getattr(importlib.import_module(module_name), class_name)
    return cls


def get_executor(spec: runner_pb2.ExecutorSpec) -> Executor:
    """A new executor for one run, of the kind `spec` names.

    Raises `UnknownExecutor` for a kind not in `EXECUTOR_CLASSES` and `InvalidExecutorSpec` when the
    spec lacks what that executor needs.
    """
    return executor_class(spec.kind).from_spec(spec)


__all__ = [
    "EXECUTOR_CLASSES",
    "Attachment",
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
    "executor_class",
    "executor_environment",
    "get_executor",
]
