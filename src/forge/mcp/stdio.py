"""`forge mcp`: Forge's MCP server over stdio for a local client, acting on a running Forge
server through its REST API."""

from __future__ import annotations

from forge.mcp.backend import HttpBackend
from forge.mcp.tools import build_server


async def serve_stdio(
    base_url: str, headers: dict[str, str] | None = None, *, default_owner: str | None = None
) -> None:
    """Serve MCP on stdin/stdout until the client closes them. Each tool call is one request to
    the server at `base_url` with `headers` (the API key); `default_owner` owns new tasks that
    name no owner."""
    backend = HttpBackend(base_url, headers, default_owner=default_owner)
    server = build_server(lambda _ctx: backend)
    try:
        await server.run_stdio_async()
    finally:
        await backend.aclose()
