"""`forge mcp`: Forge's MCP server over stdio for a local client, acting on a running Forge
server through its REST API."""

from __future__ import annotations

from forge.mcp.backend import HttpBackend
from forge.mcp.tools import build_server


async def serve_stdio(
    base_url: str, api_key: str | None = None, *, default_owner: str | None = None
) -> None:
    """Serve MCP on stdin/stdout until the client closes them. Each tool call is one request to
    the server at `base_url` with `api_key` (else `$FORGE_API_KEY`); `default_owner` owns new
    tasks that name no owner."""
    backend = HttpBackend(base_url, api_key, default_owner=default_owner)
    server = build_server(lambda _ctx: backend)
    try:
        await server.run_stdio_async()
    finally:
        await backend.aclose()
