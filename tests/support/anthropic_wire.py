"""The Anthropic Messages API for the scripted model server (what Claude Code speaks).

Import this module in a test to register its routes on every `ScriptedModelServer`:

- `POST /v1/messages`: the scripted reply, streamed as server-sent events when the request asks
  (`message_start`, `content_block_start`/`_delta`/`_stop` for thinking, text and tool_use with
  `input_json_delta`, `message_delta` with the stop reason and usage, `message_stop`), else one
  JSON message.
- `POST /v1/messages/count_tokens`: a rough count from the request's size.

Claude Code 2.1.330 in `-p` mode, with nonessential traffic off, calls nothing else (no probe,
no token count); it sends `?beta=true`, which routing ignores.

`AnthropicReply` adds prompt-cache token counts to a `Reply`, so tests can check that cache
usage is carried through.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.support.model_server import (
    RecordedRequest,
    Reply,
    Response,
    ScriptedModelServer,
    json_response,
    route,
    sse,
)


@dataclass
class AnthropicReply(Reply):
    """A `Reply` that also reports prompt-cache tokens (`cache_read_input_tokens`, ...)."""

    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # Answer with this HTTP status and an Anthropic error body instead. Claude Code retries 401,
    # 429 and 5xx with backoff, a plain 400 once; a scripted `fallback` keeps failing.
    error_status: int = 0
    error_message: str = "scripted error"


@route("POST", "/v1/messages")
def anthropic_messages(server: ScriptedModelServer, request: RecordedRequest) -> Response:
    body = request.body if isinstance(request.body, dict) else {}
    reply = server.reply_for(request)
    if isinstance(reply, AnthropicReply) and reply.error_status:
        return json_response(
            reply.error_status,
            {
                "type": "error",
                "error": {
                    "type": _ERROR_TYPES.get(reply.error_status, "api_error"),
                    "message": reply.error_message,
                },
            },
        )
    model = str(body.get("model") or "claude-scripted")
    message_id = "msg_" + uuid.uuid4().hex[:24]
    if body.get("stream"):
        return 200, {"Content-Type": "text/event-stream"}, _events(reply, model, message_id)
    return json_response(
        200,
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": _content(reply),
            "stop_reason": _stop_reason(reply),
            "stop_sequence": None,
            "usage": _usage(reply),
        },
    )


@route("POST", "/v1/messages/count_tokens")
def anthropic_count_tokens(server: ScriptedModelServer, request: RecordedRequest) -> Response:
    # About four characters a token, as the real API roughly counts.
    return json_response(200, {"input_tokens": max(1, len(request.text()) // 4)})


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _stop_reason(reply: Reply) -> str:
    return "tool_use" if reply.tool_calls else "end_turn"


def _usage(reply: Reply, *, output_tokens: int | None = None) -> dict[str, Any]:
    return {
        "input_tokens": reply.input_tokens,
        "cache_creation_input_tokens": getattr(reply, "cache_write_tokens", 0),
        "cache_read_input_tokens": getattr(reply, "cache_read_tokens", 0),
        "output_tokens": reply.output_tokens if output_tokens is None else output_tokens,
    }


def _signature(text: str) -> str:
    # The real API signs thinking blocks; clients pass the signature back untouched.
    return "sig_" + uuid.uuid5(uuid.NAMESPACE_OID, text).hex


def _content(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.thinking:
        blocks.append(
            {
                "type": "thinking",
                "thinking": reply.thinking,
                "signature": _signature(reply.thinking),
            }
        )
    if reply.text:
        blocks.append({"type": "text", "text": reply.text})
    for call in reply.tool_calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_use_id(call.id),
                "name": call.name,
                "input": call.arguments,
            }
        )
    return blocks


def _tool_use_id(call_id: str) -> str:
    return call_id if call_id.startswith("toolu_") else "toolu_" + call_id.removeprefix("call_")


def _events(reply: Reply, model: str, message_id: str) -> Iterator[bytes]:
    def event(name: str, data: dict[str, Any]) -> bytes:
        return sse({"type": name, **data}, event=name)

    yield event(
        "message_start",
        {
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": _usage(reply, output_tokens=1),
            }
        },
    )
    yield event("ping", {})
    index = 0
    if reply.thinking:
        yield event(
            "content_block_start",
            {
                "index": index,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
        )
        for piece in _pieces(reply.thinking):
            yield event(
                "content_block_delta",
                {"index": index, "delta": {"type": "thinking_delta", "thinking": piece}},
            )
        yield event(
            "content_block_delta",
            {
                "index": index,
                "delta": {"type": "signature_delta", "signature": _signature(reply.thinking)},
            },
        )
        yield event("content_block_stop", {"index": index})
        index += 1
    if reply.text:
        yield event(
            "content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}
        )
        for piece in _pieces(reply.text):
            yield event(
                "content_block_delta",
                {"index": index, "delta": {"type": "text_delta", "text": piece}},
            )
        yield event("content_block_stop", {"index": index})
        index += 1
    for call in reply.tool_calls:
        yield event(
            "content_block_start",
            {
                "index": index,
                "content_block": {
                    "type": "tool_use",
                    "id": _tool_use_id(call.id),
                    "name": call.name,
                    "input": {},
                },
            },
        )
        arguments = json.dumps(call.arguments)
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            yield event(
                "content_block_delta",
                {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}},
            )
        yield event("content_block_stop", {"index": index})
        index += 1
    yield event(
        "message_delta",
        {
            "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
            "usage": {"output_tokens": reply.output_tokens},
        },
    )
    yield event("message_stop", {})


def _pieces(text: str, size: int = 12) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]
