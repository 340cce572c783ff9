"""The lean HTTP/1.1 transport against raw asyncio servers that answer exactly as scripted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from forge.delivery.transport import MAX_RESPONSE_BODY, Target, WebhookTransport

# Called with the reader/writer of one connection after each request head+body has been read.
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


class RawServer:
    """Reads requests (content-length bodies) and lets `script` write the raw response."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?x=1"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                if not await self.script(reader, writer, self.requests[-1]):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Script], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def make(script: Script) -> RawServer:
        server = await RawServer(script).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=WebhookTransport(), timeout=2) as made:
        yield made


def reply(raw: bytes, *, keep_open: bool = True) -> Script:
    async def script(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: bytes) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep_open

    return script


async def test_keep_alive_connection_is_reused_and_request_is_exact(raw_server, client) -> None:
    server = await raw_server(reply(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"))
    for n in range(3):
        response = await client.post(server.url, content=b'{"n": %d}' % n, headers={"x-a": "b"})
        assert response.status_code == 201
        assert response.text == "ok"
        assert response.reason_phrase == "Created"
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /hook?x=1 HTTP/1.1\r\n")
    assert b"\r\nx-a: b\r\n" in first
    assert b"\r\nContent-Length: 8\r\n" in first
    assert first.endswith(b'\r\n\r\n{"n": 0}')


async def test_chunked_and_close_delimited_bodies(raw_server, client) -> None:
    chunked = await raw_server(
        reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n"
        )
    )
    assert (await client.post(chunked.url, content=b"a")).text == "hello world"
    assert (await client.post(chunked.url, content=b"b")).text == "hello world"
    assert chunked.connections == 1

    until_close = await raw_server(reply(b"HTTP/1.0 500 Oops\r\n\r\nbroken", keep_open=False))
    response = await client.post(until_close.url, content=b"a")
    assert (response.status_code, response.text) == (500, "broken")
    await client.post(until_close.url, content=b"b")
    assert until_close.connections == 2  # HTTP/1.0 without length: never reused


async def test_connection_close_header_and_a_server_closing_idle_connections(
    raw_server, client
) -> None:
    closing = await raw_server(
        reply(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", keep_open=False)
    )
    await client.post(closing.url, content=b"a")
    await client.post(closing.url, content=b"b")
    assert closing.connections == 2

    # Answers with keep-alive, then closes anyway: the next request must not fail for it.
    sneaky = await raw_server(
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", keep_open=False)
    )
    await client.post(sneaky.url, content=b"a")
    await asyncio.sleep(0.05)
    assert (await client.post(sneaky.url, content=b"b")).status_code == 200
    assert sneaky.connections == 2


async def test_interim_responses_are_skipped(raw_server, client) -> None:
    server = await raw_server(
        reply(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    )
    assert (await client.post(server.url, content=b"a")).status_code == 204
    assert (await client.post(server.url, content=b"a")).status_code == 204
    assert server.connections == 1


async def test_large_bodies_are_cut_off(raw_server, client) -> None:
    big = b"x" * (MAX_RESPONSE_BODY * 2)
    server = await raw_server(
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big)
    )
    response = await client.post(server.url, content=b"a")
    assert len(response.content) == MAX_RESPONSE_BODY
    await client.post(server.url, content=b"a")
    assert server.connections == 2  # the unread rest made the connection unusable


async def test_errors_are_httpx_errors(raw_server, client) -> None:
    garbage = await raw_server(reply(b"SMTP ready\r\n\r\n"))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(garbage.url, content=b"a")

    async def hang(_r, _w, _req) -> bool:
        await asyncio.sleep(10)
        return False

    slow = await raw_server(hang)
    with pytest.raises(httpx.ReadTimeout):
        await client.post(slow.url, content=b"a", timeout=0.1)

    cut = await raw_server(
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", keep_open=False)
    )
    with pytest.raises(httpx.ReadError):
        await client.post(cut.url, content=b"a")

    closed = await raw_server(reply(b""))
    await closed.close()
    with pytest.raises(httpx.ConnectError):
        await client.post(closed.url, content=b"a")


async def test_check_address_refuses_before_connecting(raw_server) -> None:
    server = await raw_server(reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))
    seen: list[tuple[str, str]] = []

    def refuse_loopback(host: str, address: object) -> str | None:
        seen.append((host, str(address)))
        return "loopback" if str(address) == "127.0.0.1" else None

    transport = WebhookTransport(check_address=refuse_loopback)
    async with httpx.AsyncClient(transport=transport) as guarded:
        with pytest.raises(httpx.ConnectError, match="refused: loopback"):
            await guarded.post(server.url, content=b"a")
        with pytest.raises(httpx.ConnectError, match="refused"):
            await guarded.post(f"http://localhost:{server.port}/", content=b"a")
    assert server.connections == 0
    assert seen[0] == ("127.0.0.1", "127.0.0.1")

    allowed = WebhookTransport(check_address=lambda _host, _address: None)
    async with httpx.AsyncClient(transport=allowed) as open_client:
        assert (await open_client.post(server.url, content=b"a")).status_code == 200


async def test_a_closed_transport_refuses(raw_server) -> None:
    server = await raw_server(reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))
    transport = WebhookTransport()
    await transport.handle_async_request(httpx.Request("POST", server.url, content=b"a"))
    await transport.aclose()
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(httpx.Request("POST", server.url, content=b"a"))


async def test_header_injection_is_refused(raw_server, client) -> None:
    server = await raw_server(reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))
    with pytest.raises(httpx.LocalProtocolError):
        await client.post(server.url, content=b"a", headers={"x-a": "b\r\nx-evil: 1"})
    assert server.requests == []


async def test_post_sends_to_a_parsed_target_on_kept_alive_connections(raw_server) -> None:
    server = await raw_server(
        reply(b"HTTP/1.1 202 Accepted\r\nretry-after: 5\r\ncontent-length: 2\r\n\r\nok")
    )
    transport = WebhookTransport()
    target = Target.parse(server.url)
    try:
        for n in range(3):
            response = await transport.post(target, {"x-a": "b"}, b'{"n": %d}' % n, timeout=2)
            assert (response.status_code, response.reason_phrase) == (202, "Accepted")
            assert (response.content, response.header("retry-after")) == (b"ok", "5")
    finally:
        await transport.aclose()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % server.port)
    assert b"\r\nx-a: b\r\n" in first and b"\r\nContent-Length: 8\r\n" in first
    assert first.endswith(b'\r\n\r\n{"n": 0}')


async def test_post_bounds_the_whole_exchange_with_one_deadline(raw_server) -> None:
    async def trickle(_r, writer: asyncio.StreamWriter, _req: bytes) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for n in range(50):  # a header line every 0.05 s: no single read waits long
            await asyncio.sleep(0.05)
            writer.write(b"x-%d: 1\r\n" % n)
            await writer.drain()
        return False

    server = await raw_server(trickle)
    transport = WebhookTransport()
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(httpx.TimeoutException):
            await transport.post(Target.parse(server.url), {}, b"a", timeout=0.3)
    finally:
        await transport.aclose()
    assert asyncio.get_running_loop().time() - started < 1.5


async def test_post_cuts_large_answers_refuses_header_injection_and_checks_addresses(
    raw_server,
) -> None:
    big = b"x" * (MAX_RESPONSE_BODY * 2)
    server = await raw_server(
        reply(b"HTTP/1.1 500 Oops\r\ncontent-length: %d\r\n\r\n" % len(big) + big)
    )
    target = Target.parse(server.url)
    transport = WebhookTransport()
    guarded = WebhookTransport(check_address=lambda _host, _address: "loopback")
    try:
        response = await transport.post(target, {}, b"a", timeout=2)
        assert (response.status_code, len(response.content)) == (500, MAX_RESPONSE_BODY)
        with pytest.raises(httpx.LocalProtocolError):
            await transport.post(target, {"x-a": "b\r\nx-evil: 1"}, b"a", timeout=2)
        with pytest.raises(httpx.ConnectError, match="refused: loopback"):
            await guarded.post(target, {}, b"a", timeout=2)
    finally:
        await transport.aclose()
        await guarded.aclose()
    assert server.connections == 1 and len(server.requests) == 1


def test_targets_are_parsed_once_per_url() -> None:
    target = Target.parse("https://Example.COM/hooks/a?token=1")
    assert (target.scheme, target.host, target.port) == ("https", "example.com", 443)
    assert (target.host_header, target.path) == (b"example.com", b"/hooks/a?token=1")
    assert Target.parse("http://[::1]:8080").host_header == b"[::1]:8080"
    assert Target.parse("http://[::1]:8080").host == "::1"
    with pytest.raises(httpx.UnsupportedProtocol):
        Target.parse("ftp://example.com/")
