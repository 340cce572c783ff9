"""What the synchronous and the asynchronous client share: where the server is, the key, the
headers, and how a failed connection is told to the caller."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

import httpx

from forge import __version__
from forge.client._exceptions import APIConnectionError, APITimeoutError, InvalidResponseError

DEFAULT_BASE_URL = "http://127.0.0.1:8887"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_RETRIES = 2


def resolve_base_url(base_url: str | None) -> str:
    """`base_url`, else `$FORGE_BASE_URL`, else the local default; without a trailing `/`."""
    url = (base_url or os.environ.get("FORGE_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"the base URL must be http:// or https:// with a host, e.g. {DEFAULT_BASE_URL}; "
            f"got {url!r}"
        )
    return url


def resolve_api_key(api_key: str | None) -> str | None:
    """`api_key`, else `$FORGE_API_KEY`, else None (a server with authentication off)."""
    key = (api_key if api_key is not None else os.environ.get("FORGE_API_KEY", "")).strip()
    if not key.isascii() or not key.isprintable():
        raise ValueError("the API key must be printable ASCII (as `forge keys create` makes them)")
    return key or None


def default_headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"User-Agent": f"forge-client/{__version__}", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(extra or {})
    return headers


def connection_error(exc: Exception, base_url: str, what: str) -> APIConnectionError:
    """The client's error for `what` ("GET /api/v1/agents", "the stream of ag_...") getting no
    answer from the server at `base_url`: named, since a wrong URL is the usual cause."""
    cause = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return APITimeoutError("timeout", f"no answer from Forge at {base_url} in time ({what})")
    return APIConnectionError("unreachable", f"cannot reach Forge at {base_url}: {cause} ({what})")


def bad_body(exc: Exception, base_url: str) -> InvalidResponseError:
    """The client's error for an answer whose body cannot be decoded (a broken compression)."""
    return InvalidResponseError(
        "bad_response", f"Forge at {base_url} sent a body that cannot be decoded: {exc}"
    )


def websocket_url(base_url: str, path: str, params: Mapping[str, object | None]) -> str:
    """`ws://` or `wss://` URL of `path` on the server, with the parameters that are set."""
    scheme, rest = base_url.split("://", 1)
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{path}" + (f"?{query}" if query else "")
