"""The built-in agent's settings, read from the run context (profile settings and environment)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from forge.executors.base import InvalidExecutorSpec, RunContext
from forge.executors.forge_agent.tools import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_MAX_OUTPUT_CHARS,
    MAX_COMMAND_TIMEOUT,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"

SYSTEM_PROMPT = """\
You are Forge's coding agent. You work in the directory {workspace} (a git repository or a \
plain folder) and can only read and change files inside it.

Use the tools: read_file, glob, grep and list_dir to look around; write_file and edit_file to \
change files; run_command to run programs and tests with bash in that directory. Paths are \
relative to it. Look before you change anything, keep changes small and focused, and check \
your work by running it when you can. A tool call that fails or is denied tells you why; \
adapt instead of repeating it. When you are done, answer with a short summary of what you did.\
"""


@dataclass(frozen=True)
class AgentSettings:
    """Everything a run of the built-in agent is configured by."""

    base_url: str
    api_key: str
    model: str
    system_prompt: str
    max_turns: int = 50
    max_tool_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    # Seconds to connect and between two pieces of a model's answer.
    request_timeout: float = 300.0
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    # Sent as `max_tokens` when set.
    max_tokens: int | None = None
    # Retries of a model request answered 429 or 5xx, with exponential backoff from this base.
    max_retries: int = 3
    retry_backoff_seconds: float = 1.0

    @classmethod
    def from_context(cls, ctx: RunContext, env: Mapping[str, str]) -> AgentSettings:
        """The settings of a run; `env` is the executor's environment. Raises
        `InvalidExecutorSpec` for a missing model or a setting of the wrong type."""
        settings = ctx.settings
        model = ctx.model or _text(settings, "model")
        if not model:
            raise InvalidExecutorSpec(
                "the forge executor needs a model: set `model` in the profile (the name the "
                "OpenAI-compatible server knows it by)"
            )
        system_prompt = SYSTEM_PROMPT.format(workspace=ctx.workspace)
        extra = _text(settings, "system_prompt")
        if extra.strip():
            system_prompt += "\n\n" + extra
        max_tokens = _number(settings, "max_tokens", 0, integer=True)
        return cls(
            base_url=_text(settings, "base_url") or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
            api_key=env.get("OPENAI_API_KEY", ""),
            model=model,
            system_prompt=system_prompt,
            max_turns=int(_number(settings, "max_turns", 50, integer=True, minimum=1)),
            max_tool_output_chars=int(
                _number(
                    settings,
                    "max_tool_output_chars",
                    DEFAULT_MAX_OUTPUT_CHARS,
                    integer=True,
                    minimum=1000,
                )
            ),
            request_timeout=_number(settings, "request_timeout", 300.0, minimum=1),
            command_timeout=min(
                _number(settings, "command_timeout", DEFAULT_COMMAND_TIMEOUT, minimum=1),
                MAX_COMMAND_TIMEOUT,
            ),
            max_tokens=int(max_tokens) if max_tokens else None,
            max_retries=int(_number(settings, "max_retries", 3, integer=True)),
            retry_backoff_seconds=_number(settings, "retry_backoff_seconds", 1.0),
        )


def _text(settings: Mapping[str, Any], name: str) -> str:
    value = settings.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidExecutorSpec(f"the forge executor's setting {name!r} must be a string")
    return value


def _number(
    settings: Mapping[str, Any],
    name: str,
    default: float,
    *,
    integer: bool = False,
    minimum: float = 0,
) -> float:
    value = settings.get(name)
    if value is None:
        return default
    valid = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not valid or value < minimum:
        kind = "an integer" if integer else "a number"
        raise InvalidExecutorSpec(
            f"the forge executor's setting {name!r} must be {kind} of at least {minimum:g}"
        )
    return float(value)
