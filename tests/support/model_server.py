"""A scripted model server on 127.0.0.1 that speaks the real wire formats of model APIs.

No model API is reachable from the test machines, so the agent CLIs are pointed at this server.
A test gives it a `Script`: the replies the "model" gives, in order, each plain text, thinking
and tool calls. The server records every request (path, headers, JSON body) so a test can check
what the agent sent (earlier turns, tool results, denials).

The wire formats live in their own modules and register the paths they serve with `route`:
`openai_chat` (OpenAI chat completions, streaming and not) is here; the others beside it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ToolCall:
    """The model asks to call a tool with these arguments."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:12])


@dataclass
class Reply:
    """One answer of the model (to one request)."""

    text: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    input_tokens: int = 100
    output_tokens: int = 20
    # Seconds to wait before answering (a slow model).
    delay_seconds: float = 0.0


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    def text(self) -> str:
        """The whole body as JSON text, for "did the agent send X" checks."""
        return json.dumps(self.body)


class Script:
    """Replies in order; after the last, `fallback`. `skip(request)` marks side requests
    (title generation, summaries) that get `side_reply` without using up a scripted reply."""

    def __init__(
        self,
        replies: Iterable[Reply],
        *,
        fallback: Reply | None = None,
        skip: Callable[[RecordedRequest], bool] | None = None,
        side_reply: Reply | None = None,
    ) -> None:
        self.replies = list(replies)
        self.fallback = fallback or Reply(text="Done.")
        self.skip = skip or (lambda _request: False)
        self.side_reply = side_reply or Reply(text="Scripted title")
        self.used = 0
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        if self.skip(request):
            return self.side_reply
        with self._lock:
            if self.used < len(self.replies):
                reply = self.replies[self.used]
                self.used += 1
                return reply
        return self.fallback


# A wire format answers one request: status, headers and body chunks (streamed as they come).
Response = tuple[int, dict[str, str], Iterable[bytes]]
Handler = Callable[["ScriptedModelServer", RecordedRequest], Response]


class ScriptedModelServer:
    """Serves the registered wire formats on 127.0.0.1 (a free port) from a thread."""

    def __init__(self, script: Script | Callable[[RecordedRequest], Reply]) -> None:
        self.script = script
        self.requests: list[RecordedRequest] = []
        self.routes: dict[tuple[str, str], Handler] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for (method, path), handler in _ROUTES.items():
            self.routes[(method, path)] = handler

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reply_for(self, request: RecordedRequest) -> Reply:
        reply = self.script(request)
        if reply.delay_seconds:
            time.sleep(reply.delay_seconds)
        return reply

    def model_requests(self) -> list[RecordedRequest]:
        """The requests that asked the model for an answer (not model lists or probes)."""
        return [r for r in self.requests if r.method == "POST"]

    def start(self) -> ScriptedModelServer:
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                path = self.path.split("?", 1)[0]
                request = RecordedRequest(method, self.path, dict(self.headers.items()), body)
                server.requests.append(request)
                handler = server._find(method, path)
                if handler is None:
                    status, headers, chunks = json_response(
                        404, {"error": {"message": f"no scripted route {method} {path}"}}
                    )
                else:
                    status, headers, chunks = handler(server, request)
                self.send_response(status)
                streaming = headers.get("Content-Type", "").startswith("text/event-stream")
                for name, value in headers.items():
                    self.send_header(name, value)
                if streaming:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    for chunk in chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    data = b"".join(chunks)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                self.wfile.flush()

            def log_message(self, *_args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _find(self, method: str, path: str) -> Handler | None:
        handler = self.routes.get((method, path))
        if handler is not None:
            return handler
        # Prefix routes end with "*" (e.g. "/v1beta/models/*").
        for (route_method, route_path), candidate in self.routes.items():
            if (
                route_method == method
                and route_path.endswith("*")
                and path.startswith(route_path[:-1])
            ):
                return candidate
        return None


_ROUTES: dict[tuple[str, str], Handler] = {}


def route(method: str, *paths: str) -> Callable[[Handler], Handler]:
    """Register a wire-format handler for these paths on every server."""

    def register(handler: Handler) -> Handler:
        for path in paths:
            _ROUTES[(method, path)] = handler
        return handler

    return register


def json_response(status: int, body: Any) -> Response:
    return status, {"Content-Type": "application/json"}, [json.dumps(body).encode()]


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event (`data` as JSON unless it is already a string)."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


# ---- OpenAI chat completions ---------------------------------------------------------------------


@route("POST", "/v1/chat/completions", "/chat/completions")
def openai_chat(server: ScriptedModelServer, request: RecordedRequest) -> Response:
    body = request.body if isinstance(request.body, dict) else {}
    reply = server.reply_for(request)
    model = str(body.get("model") or "scripted-model")
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return 200, {"Content-Type": "text/event-stream"}, _chat_chunks(reply, model, include_usage)
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call in reply.tool_calls
        ]
    return json_response(
        200,
        {
            "id": "chatcmpl-" + uuid.uuid4().hex[:16],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                }
            ],
            "usage": _chat_usage(reply),
        },
    )


@route("GET", "/v1/models", "/models")
def openai_models(server: ScriptedModelServer, request: RecordedRequest) -> Response:
    return json_response(
        200,
        {"object": "list", "data": [{"id": "scripted-model", "object": "model", "owned_by": "x"}]},
    )


def _chat_usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


def _chat_chunks(reply: Reply, model: str, include_usage: bool) -> Iterator[bytes]:
    chunk_id = "chatcmpl-" + uuid.uuid4().hex[:16]
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse(
            {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    yield chunk({"role": "assistant", "content": ""})
    if reply.thinking:
        yield chunk({"reasoning_content": reply.thinking})
    for piece in _pieces(reply.text):
        yield chunk({"content": piece})
    for index, call in enumerate(reply.tool_calls):
        arguments = json.dumps(call.arguments)
        half = len(arguments) // 2
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": arguments[:half]},
                    }
                ]
            }
        )
        yield chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]})
    yield chunk({}, "tool_calls" if reply.tool_calls else "stop")
    if include_usage:
        yield sse(
            {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _chat_usage(reply),
            }
        )
    yield sse("[DONE]")


def _pieces(text: str, size: int = 12) -> Iterator[str]:
    """Text in small pieces, as a model streams it."""
    for start in range(0, len(text), size):
        yield text[start : start + size]
