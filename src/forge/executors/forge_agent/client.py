"""Talking to an OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp, OpenAI).

`ChatClient.complete` sends one request with `stream: true` and assembles the server-sent
chunks into one `ModelTurn`: the text, the reasoning (`reasoning_content` or `reasoning`
deltas), the tool calls (argument pieces joined by their `index`) and the usage of the final
chunk. The assembly (`TurnAssembler`) is pure, so recorded streams can be replayed in tests.
A chunk that is not valid JSON is kept as a `problem` (raw text and why) instead of failing the
turn; a stream that ends before the model finished, an error object in the stream and HTTP
errors raise `ModelServerError`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx

from forge.core.events import Usage

# Longest error body kept in a message.
_ERROR_BODY_CHARS = 2000


class ModelServerError(Exception):
    """The model server did not give a usable answer (HTTP error, no connection, broken stream).

    `retryable` is set for rate limits and server-side errors (429, 5xx), with the server's
    `Retry-After` in `retry_after` when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass
class StreamProblem:
    """A piece of the stream that could not be understood, with its raw text."""

    reason: str
    raw: str


@dataclass
class ToolCallRequest:
    """One tool call the model asked for; `arguments` is the JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class ModelTurn:
    """One answer of the model, assembled from its stream."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    finish_reason: str | None = None
    # The server's usage object as sent (None when it sent none).
    usage: dict[str, Any] | None = None
    model: str = ""
    # The stream's terminating `data: [DONE]` was seen.
    done: bool = False
    # An error object the server put into the stream instead of a chunk.
    error: Any = None
    problems: list[StreamProblem] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether the model finished its answer (a finish reason or the end marker came)."""
        return self.done or self.finish_reason is not None

    def message(self) -> dict[str, Any]:
        """The assistant message for the conversation history (reasoning is not sent back)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [call.to_wire() for call in self.tool_calls]
        elif message["content"] is None:
            message["content"] = ""
        return message

    def raw(self) -> dict[str, Any]:
        """The assembled turn as one JSON object (the raw event of a model turn)."""
        raw: dict[str, Any] = {**self.message(), "finish_reason": self.finish_reason}
        if self.reasoning:
            raw["reasoning_content"] = self.reasoning
        if self.model:
            raw["model"] = self.model
        if self.usage is not None:
            raw["usage"] = self.usage
        return raw


def usage_from_wire(usage: dict[str, Any] | None) -> Usage:
    """Forge's usage from an OpenAI usage object; cached prompt tokens count as cache reads."""
    if not isinstance(usage, dict):
        return Usage()
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    cached = min(cached, prompt)
    return Usage(input_tokens=prompt - cached, output_tokens=completion, cache_read_tokens=cached)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class TurnAssembler:
    """Builds a `ModelTurn` from the lines of a chat-completions SSE stream."""

    def __init__(self) -> None:
        self.turn = ModelTurn()
        self._data: list[str] = []
        # Tool calls by their stream index, in the order they appeared.
        self._calls: dict[int, ToolCallRequest] = {}

    def feed_line(self, line: str) -> None:
        """One line of the stream, without its line end."""
        if line == "":
            self._dispatch()
        elif line.startswith(":"):
            return  # an SSE comment (keep-alive)
        elif line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        elif line.startswith(("event:", "id:", "retry:")):
            return
        else:
            self.turn.problems.append(StreamProblem("not a server-sent event line", line))

    def feed_chunk(self, chunk: Any) -> None:
        """One decoded chunk (a `chat.completion.chunk` object)."""
        if not isinstance(chunk, dict):
            self.turn.problems.append(
                StreamProblem("chunk is not a JSON object", json.dumps(chunk))
            )
            return
        if "error" in chunk and "choices" not in chunk:
            self.turn.error = chunk["error"]
            return
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.turn.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.turn.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._choice(choice)

    def finish(self) -> ModelTurn:
        """The assembled turn, once the stream has ended."""
        self._dispatch()
        self.turn.tool_calls = [self._calls[index] for index in sorted(self._calls)]
        return self.turn

    def _dispatch(self) -> None:
        if not self._data:
            return
        data = "\n".join(self._data)
        self._data = []
        if data.strip() == "[DONE]":
            self.turn.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            self.turn.problems.append(StreamProblem("chunk is not valid JSON", data))
            return
        self.feed_chunk(chunk)

    def _choice(self, choice: dict[str, Any]) -> None:
        if isinstance(choice.get("finish_reason"), str):
            self.turn.finish_reason = choice["finish_reason"]
        # A non-streaming answer has `message` where a chunk has `delta`.
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice.get("message")
        if not isinstance(delta, dict):
            return
        if isinstance(delta.get("content"), str):
            self.turn.text += delta["content"]
        for key in ("reasoning_content", "reasoning"):
            if isinstance(delta.get(key), str):
                self.turn.reasoning += delta[key]
                break
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._tool_call_delta(call)

    def _tool_call_delta(self, delta: dict[str, Any]) -> None:
        index = delta.get("index")
        if not isinstance(index, int):
            # Servers that send calls without an index: a new id is a new call, no id
            # continues the last one.
            call_id = delta.get("id")
            known = [i for i, c in self._calls.items() if call_id and c.id == call_id]
            if known:
                index = known[0]
            elif call_id or not self._calls:
                index = len(self._calls)
            else:
                index = max(self._calls)
        call = self._calls.get(index)
        if call is None:
            call = ToolCallRequest(id="", name="", arguments="")
            self._calls[index] = call
        if isinstance(delta.get("id"), str) and delta["id"]:
            call.id = delta["id"]
        function = delta.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                call.name += function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call.arguments += arguments
            elif isinstance(arguments, dict):  # some servers send the object itself
                call.arguments += json.dumps(arguments)
        if not call.id:
            call.id = "call_" + secrets.token_hex(8)


def assemble(lines: list[str]) -> ModelTurn:
    """A turn from the complete lines of a recorded stream."""
    assembler = TurnAssembler()
    for line in lines:
        assembler.feed_line(line)
    return assembler.finish()


class ChatClient:
    """One model endpoint: `complete` streams one answer. Close with `aclose`."""

    def __init__(self, base_url: str, api_key: str = "", *, timeout_seconds: float = 300) -> None:
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 30)),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def complete(self, body: dict[str, Any]) -> ModelTurn:
        """Stream one answer to `body` (a chat-completions request). Raises `ModelServerError`."""
        try:
            async with self._http.stream("POST", self.url, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _http_error(response)
                assembler = TurnAssembler()
                if response.headers.get("content-type", "").startswith("application/json"):
                    # A server that ignored `stream`: one whole completion.
                    await response.aread()
                    try:
                        assembler.feed_chunk(response.json())
                    except ValueError as exc:
                        raise ModelServerError(
                            f"the model server answered with invalid JSON: {exc}"
                        ) from exc
                else:
                    async for line in response.aiter_lines():
                        assembler.feed_line(line)
                turn = assembler.finish()
        except httpx.TimeoutException as exc:
            raise ModelServerError(f"the model server at {self.url} timed out ({exc!r})") from exc
        except httpx.HTTPError as exc:
            raise ModelServerError(f"cannot reach the model server at {self.url}: {exc}") from exc
        if turn.error is not None:
            raise ModelServerError(f"the model server sent an error: {json.dumps(turn.error)}")
        if not turn.complete:
            raise ModelServerError(
                "the model server's stream ended before the answer was complete"
                " (no finish_reason and no [DONE])"
            )
        return turn


def _http_error(response: httpx.Response) -> ModelServerError:
    status = response.status_code
    text = response.text[:_ERROR_BODY_CHARS]
    retry_after: float | None = None
    header = response.headers.get("retry-after")
    if header:
        try:
            retry_after = max(0.0, float(header))
        except ValueError:
            retry_after = None
    return ModelServerError(
        f"the model server answered {status} {response.reason_phrase}: {text}",
        status=status,
        retryable=status == 429 or status >= 500,
        retry_after=retry_after,
    )
