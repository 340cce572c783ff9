"""A lean HTTP/1.1 client transport, made for many small webhook POSTs.

httpx's default transport (httpcore over anyio) is general: HTTP/2, proxies, a connection pool
that examines every connection on each request. For webhooks that costs more CPU than everything
else the dispatcher does (measured here: ~1.3 ms per request, and far worse with dozens of
keep-alive connections). This transport does only what deliveries need: HTTP/1.1 over asyncio
streams (TLS included), keep-alive connections kept per origin, the whole request in one write,
and a response body read up to a cap. Errors are raised as the httpx exceptions callers expect.

The dispatcher calls `WebhookTransport.post` with a `Target` parsed once per URL: no
`httpx.AsyncClient` (request building, cookies, auth and redirect handling cost as much CPU as
the rest of a delivery), one deadline for the whole attempt, redirects never followed and no
proxy from the environment. It is also an `httpx.AsyncBaseTransport`, for use under a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Mapping
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
    # Some of the answer to the current request has arrived.
    answering: bool = False

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


Origin = tuple[str, str, int]  # (scheme, host, port)


@dataclass(slots=True, frozen=True)
class Target:
    """A URL parsed for sending: where to connect and what the request line and `Host` say."""

    scheme: str
    host: str  # IDNA-encoded; an IPv6 address without brackets
    port: int
    host_header: bytes
    path: bytes  # path and query, as sent in the request line

    @classmethod
    def parse(cls, url: str) -> Target:
        """Raises `httpx.InvalidURL`, or `httpx.UnsupportedProtocol` unless http or https."""
        parsed = httpx.URL(url)
        if parsed.scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {parsed.scheme!r}")
        if not parsed.host:
            raise httpx.InvalidURL(f"no host in {url!r}")
        return cls(
            scheme=parsed.scheme,
            host=parsed.raw_host.decode("ascii"),
            port=parsed.port or _DEFAULT_PORTS[parsed.scheme],
            host_header=parsed.netloc,
            path=parsed.raw_path or b"/",
        )

    @property
    def origin(self) -> Origin:
        return (self.scheme, self.host, self.port)


@dataclass(slots=True)
class WebhookResponse:
    """An answer as `WebhookTransport.post` returns it; `content` is cut at MAX_RESPONSE_BODY."""

    status_code: int
    reason_phrase: str
    headers: list[tuple[str, str]]
    content: bytes
    http_version: str

    def header(self, name: str) -> str | None:
        """The first value of header `name` (in lower case), or None."""
        return _header(self.headers, name)


class WebhookTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive per origin: `post()` for deliveries, or give it to
    `httpx.AsyncClient(transport=...)`.

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
        self._idle: dict[Origin, list[_Connection]] = {}
        self._last_sweep = time.monotonic()
        self._closed = False

    async def post(
        self,
        target: Target,
        headers: Mapping[str, str],
        body: bytes,
        *,
        timeout: float | None,
    ) -> WebhookResponse:
        """POST `body` to `target` with `headers` (`Host` and `Content-Length` are added).

        `timeout` bounds the whole exchange: resolving, connecting, sending and reading the
        answer. Raises `httpx.TimeoutException` when it runs out, other `httpx.TransportError`s
        when the exchange fails.
        """
        block = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        # One line per header: a CR, LF or NUL inside a name or value would inject others.
        if "\0" in block or block.count("\n") != len(headers) or block.count("\r") != len(headers):
            raise httpx.LocalProtocolError("invalid header: CR, LF or NUL in a name or value")
        payload = b"".join(
            (
                b"POST " + target.path + b" HTTP/1.1\r\nHost: " + target.host_header + b"\r\n",
                block.encode("latin-1"),
                b"Content-Length: %d\r\n\r\n" % len(body),
                body,
            )
        )
        try:
            async with asyncio.timeout(timeout):
                return await self._round_trip(target.origin, payload, "POST", None, None)
        except TimeoutError as exc:
            raise httpx.TimeoutException(f"timed out after {timeout:g}s") from exc

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scheme = request.url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        host = request.url.raw_host.decode("ascii")  # IDNA-encoded; IPv6 without brackets
        origin = (scheme, host, request.url.port or _DEFAULT_PORTS[scheme])
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        payload = _encode_request(request, await request.aread())
        answer = await self._round_trip(origin, payload, request.method, request, timeouts)
        return httpx.Response(
            answer.status_code,
            headers=answer.headers,
            stream=httpx.ByteStream(answer.content),
            request=request,
            extensions={
                "http_version": answer.http_version.encode(),
                "reason_phrase": answer.reason_phrase.encode(),
            },
        )

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    async def _round_trip(
        self,
        origin: Origin,
        payload: bytes,
        method: str,
        request: httpx.Request | None,
        timeouts: dict[str, Any] | None,
    ) -> WebhookResponse:
        """Send `payload` on an idle connection to `origin`, or a new one, and read the answer.

        `timeouts` (httpx's per-phase `connect`, `read`) apply when given; `post` bounds the
        whole exchange instead.
        """
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        conn = self._take_idle(origin)
        if conn is not None:
            try:
                return await self._exchange(origin, conn, payload, method, request, timeouts, True)
            except _ConnectionLost:
                pass  # the server closed it while idle; not a failure of this request
        connect_timeout = timeouts.get("connect") if timeouts is not None else None
        conn = await self._connect(origin, connect_timeout, request)
        return await self._exchange(origin, conn, payload, method, request, timeouts, False)

    # ---- connections -----------------------------------------------------------------------------

    def _take_idle(self, origin: Origin) -> _Connection | None:
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

    def _put_idle(self, origin: Origin, conn: _Connection) -> None:
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
        self, origin: Origin, timeout: float | None, request: httpx.Request | None
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
            if timeout is None:
                raise  # the caller's deadline, not ours
            raise httpx.ConnectTimeout("timed out connecting", request=request) from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(_os_error(exc), request=request) from exc
        return _Connection(reader, writer)

    async def _vetted_address(self, request: httpx.Request | None, host: str, port: int) -> str:
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
        origin: Origin,
        conn: _Connection,
        payload: bytes,
        method: str,
        request: httpx.Request | None,
        timeouts: dict[str, Any] | None,
        reused: bool,
    ) -> WebhookResponse:
        conn.answering = False
        try:
            conn.writer.write(payload)
            if timeouts is None:  # bounded by the caller's deadline
                await conn.writer.drain()
                answer, reusable = await _receive(conn, request, method)
            else:
                async with asyncio.timeout(timeouts.get("write")):
                    await conn.writer.drain()
                async with asyncio.timeout(timeouts.get("read")):
                    answer, reusable = await _receive(conn, request, method)
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout("timed out waiting for the response", request=request) from exc
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            conn.close()
            if reused and not conn.answering:
                raise _ConnectionLost() from exc
            raise httpx.ReadError(_os_error(exc), request=request) from exc
        except asyncio.LimitOverrunError as exc:
            conn.close()
            raise httpx.RemoteProtocolError("response head too large", request=request) from exc
        except BaseException:
            conn.close()  # cancelled or a protocol error: the connection state is unknown
            raise
        keep_alive = (
            reusable
            and answer.http_version == "HTTP/1.1"
            and not _has_token(answer.headers, "connection", "close")
        )
        if keep_alive:
            self._put_idle(origin, conn)
        else:
            conn.close()
        return answer


async def _receive(
    conn: _Connection, request: httpx.Request | None, method: str
) -> tuple[WebhookResponse, bool]:
    """Read one answer (skipping 1xx interim ones but 101); True if the connection is reusable."""
    while True:
        head = await conn.reader.readuntil(b"\r\n\r\n")
        conn.answering = True  # a failure from here on is not a stale idle connection
        status, reason, headers, version = _parse_head(head, request)
        if not (100 <= status < 200) or status == 101:
            break
    body, reusable = await _read_body(conn.reader, request, method, status, headers)
    return WebhookResponse(status, reason, headers, body, version), reusable


def _header_line(name: bytes, value: bytes, request: httpx.Request | None) -> bytes:
    if any(ch in name + value for ch in b"\r\n\0"):
        raise httpx.LocalProtocolError(f"invalid header {name!r}", request=request)
    return name + b": " + value


def _encode_request(request: httpx.Request, body: bytes) -> bytes:
    target = request.url.raw_path or b"/"
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    for name, value in request.headers.raw:
        lines.append(_header_line(name, value, request))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _parse_head(
    head: bytes, request: httpx.Request | None
) -> tuple[int, str, list[tuple[str, str]], str]:
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
    request: httpx.Request | None,
    method: str,
    status: int,
    headers: list[tuple[str, str]],
) -> tuple[bytes, bool]:
    """The response body (up to MAX_RESPONSE_BODY) and whether the connection can be reused."""
    if method == "HEAD" or status in (204, 304):
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


async def _read_chunked(
    reader: asyncio.StreamReader, request: httpx.Request | None
) -> tuple[bytes, bool]:
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
