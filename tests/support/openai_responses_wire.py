"""The OpenAI Responses API (`POST /v1/responses`, streaming), as Codex speaks it.

Importing this module registers the route on every `ScriptedModelServer`. A scripted reply
becomes the event stream the real API sends: `response.created`, then per output item
`response.output_item.added`, its deltas (reasoning summary text, output text, function call
arguments) and `response.output_item.done`, then `response.completed` with the usage.

A `ToolCall` becomes a `function_call` item, or a `custom_tool_call` item when the request
declares that tool as a freeform (`"type": "custom"`) tool, as Codex does for `apply_patch`;
its `input` is then `arguments["input"]`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from tests.support.model_server import (
    RecordedRequest,
    Reply,
    Response,
    ScriptedModelServer,
    ToolCall,
    route,
    sse,
)


@route("POST", "/v1/responses", "/responses")
def openai_responses(server: ScriptedModelServer, request: RecordedRequest) -> Response:
    body = request.body if isinstance(request.body, dict) else {}
    reply = server.reply_for(request)
    model = str(body.get("model") or "scripted-model")
    return (
        200,
        {"Content-Type": "text/event-stream"},
        _response_events(reply, model, _custom_tools(body)),
    )


def _custom_tools(body: dict[str, Any]) -> set[str]:
    """Names of the freeform tools the request declares."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return set()
    return {
        str(tool.get("name"))
        for tool in tools
        if isinstance(tool, dict) and tool.get("type") == "custom"
    }


def responses_usage(reply: Reply) -> dict[str, Any]:
    return {
        "input_tokens": reply.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": reply.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


def _response_events(reply: Reply, model: str, custom_tools: set[str]) -> Iterator[bytes]:
    response_id = "resp_" + uuid.uuid4().hex[:16]
    created = int(time.time())
    sequence = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, "sequence_number": next(sequence), **fields}, event=kind)

    def response(status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        value: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "model": model,
            "output": output,
        }
        if status == "completed":
            value["usage"] = responses_usage(reply)
        return value

    yield event("response.created", response=response("in_progress", []))
    yield event("response.in_progress", response=response("in_progress", []))
    done: list[dict[str, Any]] = []
    if reply.thinking:
        yield from _reasoning(event, len(done), reply.thinking, done)
    if reply.text:
        yield from _message(event, len(done), reply.text, done)
    for call in reply.tool_calls:
        yield from _tool_call(event, len(done), call, call.name in custom_tools, done)
    yield event("response.completed", response=response("completed", done))


def _reasoning(event: Any, index: int, text: str, done: list[dict[str, Any]]) -> Iterator[bytes]:
    item_id = "rs_" + uuid.uuid4().hex[:16]
    item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
    yield event("response.output_item.added", output_index=index, item=item)
    part = {"type": "summary_text", "text": ""}
    where = {"item_id": item_id, "output_index": index, "summary_index": 0}
    yield event("response.reasoning_summary_part.added", **where, part=part)
    for piece in _pieces(text):
        yield event("response.reasoning_summary_text.delta", **where, delta=piece)
    yield event("response.reasoning_summary_text.done", **where, text=text)
    yield event("response.reasoning_summary_part.done", **where, part={**part, "text": text})
    item = {**item, "summary": [{"type": "summary_text", "text": text}]}
    done.append(item)
    yield event("response.output_item.done", output_index=index, item=item)


def _message(event: Any, index: int, text: str, done: list[dict[str, Any]]) -> Iterator[bytes]:
    item_id = "msg_" + uuid.uuid4().hex[:16]
    item: dict[str, Any] = {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    yield event("response.output_item.added", output_index=index, item=item)
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    yield event("response.content_part.added", **where, part=part)
    for piece in _pieces(text):
        yield event("response.output_text.delta", **where, delta=piece)
    yield event("response.output_text.done", **where, text=text)
    yield event("response.content_part.done", **where, part={**part, "text": text})
    item = {**item, "status": "completed", "content": [{**part, "text": text}]}
    done.append(item)
    yield event("response.output_item.done", output_index=index, item=item)


def _tool_call(
    event: Any, index: int, call: ToolCall, custom: bool, done: list[dict[str, Any]]
) -> Iterator[bytes]:
    item_id = "fc_" + uuid.uuid4().hex[:16]
    if custom:
        payload = str(call.arguments.get("input", ""))
        item: dict[str, Any] = {
            "id": item_id,
            "type": "custom_tool_call",
            "status": "in_progress",
            "call_id": call.id,
            "name": call.name,
            "input": "",
        }
        delta_kind, field = "response.custom_tool_call_input", "input"
    else:
        payload = json.dumps(call.arguments)
        item = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "call_id": call.id,
            "name": call.name,
            "arguments": "",
        }
        delta_kind, field = "response.function_call_arguments", "arguments"
    yield event("response.output_item.added", output_index=index, item=item)
    half = len(payload) // 2
    for piece in (payload[:half], payload[half:]):
        yield event(f"{delta_kind}.delta", item_id=item_id, output_index=index, delta=piece)
    yield event(f"{delta_kind}.done", item_id=item_id, output_index=index, **{field: payload})
    item = {**item, "status": "completed", field: payload}
    done.append(item)
    yield event("response.output_item.done", output_index=index, item=item)


def _pieces(text: str, size: int = 12) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]
