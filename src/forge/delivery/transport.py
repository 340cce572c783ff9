"""A lean HTTP/1.1 transport for httpx, made for many small webhook POSTs.

httpx's default transport (httpcore over anyio) is general: HTTP/2, proxies, a connection pool
that examines every connection on each request. For webhooks that costs more CPU than everything
else the dispatcher does (measured here: ~1.3 ms per request, and far worse with dozens of
keep-alive connections). This transport does only what deliveries need: HTTP/1.1 over asyncio
streams (TLS included), keep-alive connections kept per origin, the whole request in one write,
and a response body read up to a cap. Errors are raised as the httpx exceptions callers expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

# Decides whether a host resolved to an address may be connected to: None, or why not.
AddressCheck = Callable[[str, ipaddress.IPv4Address | ipaddress.IPv6Address], str | None]

# Response bodies are read up to this many bytes; the rest is dropped with the connection.
MAX_RESPONSE_BODY = 64 * 1024
# Longest response head (status line and headers) accepted.
MAX_RESPONSE_HEAD = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        return (
            now - self.idle_since < expiry
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _ConnectionLost(Exception):
    """A reused connection failed before any of the response arrived: try a fresh one."""


class WebhookTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive per origin; give it to `httpx.AsyncClient(transport=...)`.

    `ssl_context` verifies HTTPS servers (default: httpx's, with certifi's CA bundle). At most
    `max_idle_per_origin` idle connections are kept per origin, each for `keepalive_seconds`.
    Response bodies beyond `MAX_RESPONSE_BODY` bytes are cut off. With `check_address`, the host
    is resolved here and every address is checked before connecting to it (`httpx.ConnectError`
    if one is refused), so the address used is the address checked.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_origin: int = 16,
        keepalive_seconds: float = 5.0,
        check_address: AddressCheck | None = None,
    ) -> None:
        self._ssl_context = ssl_context
        self._check_address = check_address
        self._max_idle = max_idle_per_origin
        self._keepalive = keepalive_seconds
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._last_sweep = time.monotonic()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        scheme = request.url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        host = request.url.raw_host.decode("ascii")  # IDNA-encoded; IPv6 without brackets
        origin = (scheme, host, request.url.port or _DEFAULT_PORTS[scheme])
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        payload = _encode_request(request, await request.aread())

        conn = self._take_idle(origin)
        if conn is not None:
            try:
                return await self._exchange(request, origin, conn, payload, timeouts, True)
            except _ConnectionLost:
                pass  # the server closed it while idle; not a failure of this request
        conn = await self._connect(request, origin, timeouts.get("connect"))
        return await self._exchange(request, origin, conn, payload, timeouts, False)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # ---- connections -----------------------------------------------------------------------------

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        now = time.monotonic()
        if now - self._last_sweep > self._keepalive:
            self._sweep(now)
        conns = self._idle.get(origin)
        while conns:
            conn = conns.pop()
            if conn.usable(now, self._keepalive):
                return conn
            conn.close()
        return None

    def _sweep(self, now: float) -> None:
        """Close expired idle connections of every origin."""
        self._last_sweep = now
        for origin, conns in list(self._idle.items()):
            keep = [c for c in conns if c.usable(now, self._keepalive)]
            for conn in conns:
                if conn not in keep:
                    conn.close()
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]

    def _put_idle(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        conns = self._idle.setdefault(origin, [])
        if len(conns) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)

    async def _connect(
        self, request: httpx.Request, origin: tuple[str, str, int], timeout: float | None
    ) -> _Connection:
        scheme, host, port = origin
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()
            tls = self._ssl_context
        try:
            async with asyncio.timeout(timeout):
                target = host
                if self._check_address is not None:
                    target = await self._vetted_address(request, host, port)
                reader, writer = await asyncio.open_connection(
                    target,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                    limit=MAX_RESPONSE_HEAD,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(_os_error(exc), request=request) from exc
        return _Connection(reader, writer)

    async def _vetted_address(self, request: httpx.Request, host: str, port: int) -> str:
        """Resolve `host` and return its first address, if `check_address` allows them all."""
        assert self._check_address is not None
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addresses:
            raise httpx.ConnectError(f"{host} resolves to no address", request=request)
        for address in addresses:
            refusal = self._check_address(host, address)
            if refusal is not None:
                raise httpx.ConnectError(f"refused: {refusal}", request=request)
        return str(addresses[0])

    # ---- one request and response ----------------------------------------------------------------

    async def _exchange(
        self,
        request: httpx.Request,
        origin: tuple[str, str, int],
        conn: _Connection,
        payload: bytes,
        timeouts: dict[str, Any],
        reused: bool,
    ) -> httpx.Response:
        got_bytes = False
        try:
            conn.writer.write(payload)
            async with asyncio.timeout(timeouts.get("write")):
                await conn.writer.drain()
            async with asyncio.timeout(timeouts.get("read")):
                while True:  # skip 1xx interim responses
                    head = await conn.reader.readuntil(b"\r\n\r\n")
                    got_bytes = True
                    status, reason, headers, version = _parse_head(head, request)
                    if not (100 <= status < 200) or status == 101:
                        break
                body, reusable = await _read_body(conn.reader, request, status, headers)
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout("timed out waiting for the response", request=request) from exc
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            conn.close()
            if reused and not got_bytes:
                raise _ConnectionLost() from exc
            raise httpx.ReadError(_os_error(exc), request=request) from exc
        except asyncio.LimitOverrunError as exc:
            conn.close()
            raise httpx.RemoteProtocolError("response head too large", request=request) from exc
        except BaseException:
            conn.close()  # cancelled or a protocol error: the connection state is unknown
            raise
        keep_alive = (
            reusable and version == "HTTP/1.1" and not _has_token(headers, "connection", "close")
        )
        if keep_alive:
            self._put_idle(origin, conn)
        else:
            conn.close()
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(body),
            request=request,
            extensions={"http_version": version.encode(), "reason_phrase": reason.encode()},
        )


def _encode_request(request: httpx.Request, body: bytes) -> bytes:
    target = request.url.raw_path or b"/"
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    for name, value in request.headers.raw:
        if any(ch in name + value for ch in b"\r\n\0"):
            raise httpx.LocalProtocolError(f"invalid header {name!r}", request=request)
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _parse_head(head: bytes, request: httpx.Request) -> tuple[int, str, list[tuple[str, str]], str]:
    try:
        text = head.decode("latin-1")
        status_line, *header_lines = text[:-4].split("\r\n")
        version, code, *rest = status_line.split(" ", 2)
        status = int(code)
        if not version.startswith("HTTP/1.") or not 100 <= status <= 999:
            raise ValueError(status_line)
        headers: list[tuple[str, str]] = []
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError(line)
            headers.append((name, value.strip()))
    except ValueError as exc:
        raise httpx.RemoteProtocolError(
            f"malformed response: {exc}"[:200], request=request
        ) from None
    return status, rest[0] if rest else "", headers, version


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _has_token(headers: list[tuple[str, str]], name: str, token: str) -> bool:
    return any(
        key.lower() == name and token in (t.strip().lower() for t in value.split(","))
        for key, value in headers
    )


async def _read_body(
    reader: asyncio.StreamReader,
    request: httpx.Request,
    status: int,
    headers: list[tuple[str, str]],
) -> tuple[bytes, bool]:
    """The response body (up to MAX_RESPONSE_BODY) and whether the connection can be reused."""
    if request.method == "HEAD" or status in (204, 304):
        return b"", True
    if _has_token(headers, "transfer-encoding", "chunked"):
        return await _read_chunked(reader, request)
    length = _header(headers, "content-length")
    if length is not None:
        try:
            size = int(length)
            if size < 0:
                raise ValueError(length)
        except ValueError:
            raise httpx.RemoteProtocolError("bad Content-Length", request=request) from None
        if size > MAX_RESPONSE_BODY:
            return await reader.readexactly(MAX_RESPONSE_BODY), False
        return await reader.readexactly(size), True
    # Neither: the body ends when the server closes the connection.
    return await reader.read(MAX_RESPONSE_BODY), False


async def _read_chunked(reader: asyncio.StreamReader, request: httpx.Request) -> tuple[bytes, bool]:
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise httpx.RemoteProtocolError("bad chunk size", request=request) from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return bytes(body), True
        if len(body) + size > MAX_RESPONSE_BODY:
            body += await reader.readexactly(MAX_RESPONSE_BODY - len(body))
            return bytes(body), False
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise httpx.RemoteProtocolError("bad chunk ending", request=request)


def _os_error(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed before the response was complete"
    return str(exc) or type(exc).__name__
