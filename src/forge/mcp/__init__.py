"""Forge as an MCP server: the tools and resources (`tools.py`), written against one backend
protocol with two implementations (`backend.py`: the platform in-process, or a running server
over HTTP), served over Streamable HTTP at `/mcp` (`http.py`) and over stdio (`stdio.py`,
`forge mcp`). See docs/mcp.md."""

from forge.mcp.backend import ForgeBackend, HttpBackend, InProcessBackend, RemoteError
from forge.mcp.tools import build_server

__all__ = ["ForgeBackend", "HttpBackend", "InProcessBackend", "RemoteError", "build_server"]
