"""The Gemini API (`/v1beta/models/{model}:streamGenerateContent?alt=sse` and friends).

Importing this module registers the routes on every `ScriptedModelServer`. A scripted reply
becomes the server-sent events the real API sends: `GenerateContentResponse` chunks with
`candidates[0].content.parts` (thought parts, text, `functionCall`s), the last with
`finishReason` and `usageMetadata`. `:generateContent` answers the same reply in one piece,
`:countTokens` a rough count.

Gemini CLI also asks the model side questions whose answers must be JSON (is the model or the
user to speak next, which model to route to, is the agent looping). Those requests carry
`generationConfig.responseMimeType = "application/json"`; they get `SIDE_ANSWER` and do not use
up a scripted reply.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
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

# One object that satisfies every JSON side question Gemini CLI asks.
SIDE_ANSWER = {
    "reasoning": "scripted",
    "next_speaker": "user",
    "model_choice": "flash",
    "complexity_reasoning": "scripted",
    "complexity_score": 10,
    "confidence": 0.0,
    "unproductive_state_confidence": 0.0,
    "unproductive_state_analysis": "",
}


def is_side_request(request: RecordedRequest) -> bool:
    """A request for a JSON answer (routing, next speaker, loop check), not an agent turn."""
    body = request.body if isinstance(request.body, dict) else {}
    config = body.get("generationConfig") or {}
    return isinstance(config, dict) and config.get("responseMimeType") == "application/json"


@route("POST", "/v1beta/models/*", "/v1/models/*")
def gemini_models(server: ScriptedModelServer, request: RecordedRequest) -> Response:
    path = request.path.split("?", 1)[0]
    model, _, method = path.rsplit("/", 1)[-1].partition(":")
    if method == "countTokens":
        return json_response(200, {"totalTokens": max(1, len(request.text()) // 4)})
    if method not in ("streamGenerateContent", "generateContent"):
        return json_response(404, {"error": {"code": 404, "message": f"no method {method}"}})
    if is_side_request(request):
        reply = Reply(text=json.dumps(SIDE_ANSWER), input_tokens=10, output_tokens=5)
    else:
        reply = server.reply_for(request)
    chunks = list(_chunks(reply, model))
    if method == "generateContent":
        return json_response(200, _merged(chunks))
    return 200, {"Content-Type": "text/event-stream"}, (sse(chunk) for chunk in chunks)


def usage_metadata(reply: Reply) -> dict[str, Any]:
    return {
        "promptTokenCount": reply.input_tokens,
        "candidatesTokenCount": reply.output_tokens,
        "totalTokenCount": reply.input_tokens + reply.output_tokens,
    }


def _chunks(reply: Reply, model: str) -> Iterator[dict[str, Any]]:
    response_id = uuid.uuid4().hex[:20]

    def chunk(parts: list[dict[str, Any]], last: bool = False) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        value: dict[str, Any] = {
            "candidates": [candidate],
            "modelVersion": model,
            "responseId": response_id,
        }
        if last:
            candidate["finishReason"] = "STOP"
            value["usageMetadata"] = usage_metadata(reply)
        return value

    if reply.thinking:
        yield chunk([{"text": reply.thinking, "thought": True}])
    for piece in _pieces(reply.text):
        yield chunk([{"text": piece}])
    calls = [
        {"functionCall": {"id": call.id, "name": call.name, "args": call.arguments}}
        for call in reply.tool_calls
    ]
    # The last chunk carries the function calls (as the real API sends them: whole, at once).
    yield chunk(calls or [{"text": ""}], last=True)


def _merged(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streaming answer: the chunks' parts in one candidate."""
    parts = [part for chunk in chunks for part in chunk["candidates"][0]["content"]["parts"]]
    last = chunks[-1]
    candidate = {**last["candidates"][0], "content": {"role": "model", "parts": parts}}
    return {**last, "candidates": [candidate]}


def _pieces(text: str, size: int = 12) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]
