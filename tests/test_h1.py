"""The h1 data listener's own guarantees, beyond the raw corpus (tests/test_hostile_input.py):
limits, the header-read / body / keep-alive timeouts, in-order pipelining, back-pressure, the
drain's ``Connection: close``, early answers on a body, and ``read_body``'s bounds.

Timeouts are configured small and every wait is bounded; no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.errors import PayloadTooLarge
from proxy.h1.downstream import BodyIncomplete, H1Request
from proxy.h1.limits import H1Limits
from proxy.h1.protocol import SINGLETON_HEADERS, H1Protocol
from proxy.h1.response import UnsafeHeader, encode_reply
from proxy.reply import Reply
from tests.helpers import H1TestServer, sandbox_app, shipped_config
from tests.hostile import base, raw_exchange
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.app import build_state

GET = b"GET /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Client-Id: a\r\n"

SHORT = H1Limits(header_timeout=0.5, body_timeout=0.5, keepalive_timeout=0.5, linger_timeout=0.5)


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


async def h1(aiohttp_client: Any, sandbox: TestServer, limits: H1Limits = SHORT) -> H1TestServer:
    import io

    server = H1TestServer(build_state(shipped_config(base(sandbox)), log_stream=io.StringIO()), limits)
    await aiohttp_client(server)
    return server


def port_of(server: H1TestServer) -> int:
    assert server.port is not None, "bound by aiohttp_client"
    return server.port


async def read_until_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``timeout`` passes (False)."""
    data = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
        except TimeoutError:
            return data, False
        except ConnectionError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


@pytest.mark.timeout(30)
async def test_a_head_that_never_ends_gets_408_and_the_connection_closes(aiohttp_client: Any, sandbox: TestServer) -> None:
    server = await h1(aiohttp_client, sandbox)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /v1/products HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    data, closed = await read_until_eof(reader)
    writer.close()
    assert closed and data.startswith(b"HTTP/1.1 408 "), data


@pytest.mark.timeout(30)
async def test_a_connection_that_sends_nothing_is_closed(aiohttp_client: Any, sandbox: TestServer) -> None:
    server = await h1(aiohttp_client, sandbox)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    data, closed = await read_until_eof(reader)
    writer.close()
    assert closed and data == b""


@pytest.mark.timeout(30)
async def test_an_idle_keep_alive_connection_is_closed(aiohttp_client: Any, sandbox: TestServer) -> None:
    server = await h1(aiohttp_client, sandbox)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(GET + b"\r\n")
    data, closed = await read_until_eof(reader)
    writer.close()
    assert closed and data.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" not in data


@pytest.mark.timeout(30)
async def test_a_body_that_never_ends_is_a_400_envelope_and_close(aiohttp_client: Any, sandbox: TestServer) -> None:
    server = await h1(aiohttp_client, sandbox)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    # a 405 answers before the body; the rest of the body never comes: the linger ends the connection
    writer.write(b"POST /v1/products HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    data, closed = await read_until_eof(reader)
    writer.close()
    assert closed and data.startswith(b"HTTP/1.1 405 ") and b"Connection: close\r\n" in data


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (GET + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
        (GET + b"X-A: " + b"a" * 8200 + b"\r\n\r\n", 431),
        (GET + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 4000) for i in range(20)) + b"\r\n", 431),
        (GET + b"Host: y\r\n\r\n", 400),
        (GET + b"User-Agent: a\r\nUser-Agent: b\r\n\r\n", 400),
    ],
    ids=["long-target", "101-headers", "long-field", "head-over-64k", "host-twice", "user-agent-twice"],
)
async def test_limits(aiohttp_client: Any, sandbox: TestServer, data: bytes, status: int) -> None:
    server = await h1(aiohttp_client, sandbox)
    resp = await raw_exchange("127.0.0.1", port_of(server), data)
    assert resp.status == status
    assert resp.headers.get("connection") == "close"


@pytest.mark.timeout(30)
async def test_a_dripped_endless_header_is_cut_off(aiohttp_client: Any, sandbox: TestServer) -> None:
    server = await h1(aiohttp_client, sandbox, H1Limits())
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(GET + b"X-Endless: ")
    sent = 0
    try:
        for _ in range(40):  # 160 KiB in 4 KiB pieces, never a CRLF
            writer.write(b"a" * 4096)
            await writer.drain()
            sent += 4096
            await asyncio.sleep(0.01)
    except ConnectionError:
        pass
    data, closed = await read_until_eof(reader)
    writer.close()
    assert data.startswith(b"HTTP/1.1 431 "), data[:100]


@pytest.mark.timeout(30)
async def test_pipelined_requests_are_answered_in_order(aiohttp_client: Any, sandbox: TestServer) -> None:
    server = await h1(aiohttp_client, sandbox, H1Limits())
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    ids = [f"req-{i}" for i in range(6)]
    paths = [b"/v1/products", b"/nope"] * 3  # a slow (proxied) answer before each fast (local) one
    writer.write(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Client-Id: a\r\nX-Request-Id: %s\r\n\r\n" % (p, i.encode()) for p, i in zip(paths, ids, strict=True)))
    seen: list[str] = []
    buf = b""
    while len(seen) < len(ids):
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk
        buf += chunk
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head = buf[:end].decode()
            length = int(next(line.split(":")[1] for line in head.split("\r\n") if line.lower().startswith("content-length")))
            if len(buf) < end + 4 + length:
                break
            seen.append(next(line.split(": ")[1] for line in head.split("\r\n") if line.lower().startswith("x-request-id")))
            buf = buf[end + 4 + length:]
    writer.close()
    assert seen == ids


@pytest.mark.timeout(30)
async def test_expect_100_continue_then_the_answer(aiohttp_client: Any, sandbox: TestServer) -> None:
    server = await h1(aiohttp_client, sandbox, H1Limits())
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Client-Id: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"{}")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")


@pytest.mark.timeout(30)
async def test_draining_answers_say_connection_close(aiohttp_client: Any, sandbox: TestServer) -> None:
    server = await h1(aiohttp_client, sandbox, H1Limits())
    assert server.h1 is not None
    server.h1.closing = True
    resp = await raw_exchange("127.0.0.1", port_of(server), GET + b"\r\n")
    assert resp.status == 200 and resp.headers.get("connection") == "close"


class FakeTransport:
    def __init__(self) -> None:
        self.paused = False
        self.written = b""
        self.closed = False

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


@pytest.mark.timeout(30)
async def test_reading_pauses_while_the_client_does_not_read(aiohttp_client: Any, sandbox: TestServer) -> None:
    server = await h1(aiohttp_client, sandbox, H1Limits())
    assert server.h1 is not None
    conn = H1Protocol(server.h1)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.pause_writing()   # the transport's buffer passed write_buffer_high
    assert transport.paused
    conn.resume_writing()  # ...and drained below write_buffer_low
    assert not transport.paused
    conn.connection_lost(None)


def _request(body_len: int | None, max_buffer: int = 1000) -> H1Request:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Length": str(body_len)} if body_len is not None else {"Transfer-Encoding": "chunked"}))
    return H1Request("POST", "/x?a=1&a=2", headers, "1.1", True, True, body_len, max_buffer)


async def test_read_body_bounds() -> None:
    r = _request(None)
    r.feed(b"x" * 10)
    r.finish()
    assert await r.read_body(10) == b"x" * 10
    assert r.query["a"] == "1"
    with pytest.raises(PayloadTooLarge):
        await _request(11).read_body(10)  # announced over the limit: refused before reading
    r = _request(None)
    task = asyncio.ensure_future(r.read_body(5))
    await asyncio.sleep(0)
    r.feed(b"x" * 6)  # passes the limit while waiting: refused at once
    with pytest.raises(PayloadTooLarge):
        await task
    r = _request(None, max_buffer=8)
    r.feed(b"x" * 9)  # nobody read it and it passed the listener's buffer: dropped, refused later
    r.finish()
    with pytest.raises(PayloadTooLarge):
        await r.read_body(100)
    r = _request(None)
    task = asyncio.ensure_future(r.read_body(100))
    await asyncio.sleep(0)
    r.abandon()
    with pytest.raises(BodyIncomplete):
        await task


def test_singletons_match_aiohttps_list() -> None:
    from aiohttp.http_parser import SINGLETON_HEADERS as AIOHTTP

    assert {h.lower() for h in SINGLETON_HEADERS} == {str(h).lower() for h in AIOHTTP}


def test_a_reply_header_with_crlf_is_never_written() -> None:
    with pytest.raises(UnsafeHeader):
        encode_reply(Reply(200, CIMultiDict({"X-A": "a\r\nSet-Cookie: x"}), b""), b"", False, False)
