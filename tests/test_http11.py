"""The lean HTTP/1.1 upstream pool against a scripted raw server on loopback (exact bytes on the wire)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from proxy.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnreachable
from proxy.upstream.http11 import Http11Pool, StrictAnswer, Violation
from proxy.upstream.transport import UpstreamAnswer, UpstreamRequest
from tests.redis_server import free_port

Script = Callable[[bytes], list[bytes] | None]  # request bytes -> chunks to send (None: close)


class RawServer:
    """Answers each request on a connection with the scripted chunks; records requests and connections."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.script: Script = lambda req: [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
        self.close_after = False
        self.delay = 0.0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                chunks = self.script(head + body)
                if chunks is None:
                    break
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                    if self.delay:
                        await asyncio.sleep(self.delay)
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def drop_connections(self) -> None:
        for writer in self.writers:
            writer.close()

    async def close(self) -> None:
        self.drop_connections()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    s = RawServer()
    await s.start()
    yield s
    await s.close()


def make_pool(server: RawServer, max_body: int = 1024) -> Http11Pool:
    return Http11Pool(f"http://127.0.0.1:{server.port}/api", connect_timeout=1.0, max_body=max_body, max_idle=4)


class Answer:
    def __init__(self, a: UpstreamAnswer) -> None:
        self.status, self.body, self.content_type, self.headers = a.status, a.body, a.header("Content-Type"), a.headers


async def get(pool: Http11Pool, path: str = "/api/x", headers: list[tuple[str, str]] | None = None, timeout: float = 2.0, method: str = "GET", body: bytes = b"") -> Any:
    return Answer(await pool.send(UpstreamRequest(method, path, headers or [], body), timeout=timeout))


async def test_request_bytes_and_keep_alive_reuse(server: RawServer) -> None:
    pool = make_pool(server)
    server.script = lambda req: [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"data\":[]}"]
    for _ in range(3):
        r = await get(pool, "/api/v2/product-list?product_code=a%2Cb", [("Authorization", "Bearer t"), ("X-Request-Id", "r1")])
        assert (r.status, r.content_type, r.body) == (200, "application/json", b'{"data":[]}')
    assert server.connections == 1  # one keep-alive connection for all three
    assert server.requests[0] == (
        f"GET /api/v2/product-list?product_code=a%2Cb HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Authorization: Bearer t\r\nX-Request-Id: r1\r\n\r\n"
    ).encode()
    await pool.close()


async def test_post_carries_its_body_with_a_length(server: RawServer) -> None:
    pool = make_pool(server)
    await get(pool, method="POST", body=b'{"a":1}', headers=[("Content-Type", "application/json")])
    assert server.requests[0].endswith(b"Content-Length: 7\r\n\r\n{\"a\":1}")
    await pool.close()


async def test_chunked_body_with_extensions_and_trailers(server: RawServer) -> None:
    pool = make_pool(server)
    server.script = lambda req: [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n", b"0\r\nX-Trailer: t\r\n\r\n"]
    r = await get(pool)
    assert r.body == b"Wikipedia"
    r = await get(pool)  # and the connection is reusable afterwards
    assert r.body == b"Wikipedia" and server.connections == 1
    await pool.close()


async def test_interim_1xx_is_skipped(server: RawServer) -> None:
    pool = make_pool(server)
    server.script = lambda req: [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"]
    assert (await get(pool)).status == 201
    await pool.close()


async def test_no_length_reads_until_close_and_is_not_reused(server: RawServer) -> None:
    pool = make_pool(server)
    server.script = lambda req: [b"HTTP/1.1 200 OK\r\n\r\nuntil", b" close"]
    server.close_after = True
    assert (await get(pool)).body == b"until close"
    assert (await get(pool)).body == b"until close"
    assert server.connections == 2
    await pool.close()


async def test_connection_close_and_http10_are_not_reused(server: RawServer) -> None:
    pool = make_pool(server)
    for answer in (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na", b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\na"):
        def script(req: object, a: bytes = answer) -> list[bytes]:
            return [a]

        server.script = script
        await get(pool)
        await get(pool)
    assert server.connections == 4
    await pool.close()


async def test_head_and_204_have_no_body(server: RawServer) -> None:
    pool = make_pool(server)
    server.script = lambda req: [b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"]
    assert (await get(pool, method="HEAD")).body == b""
    server.script = lambda req: [b"HTTP/1.1 204 No Content\r\n\r\n"]
    assert (await get(pool)).status == 204
    await pool.close()


async def test_extra_bytes_after_a_response_make_the_connection_unusable(server: RawServer) -> None:
    pool = make_pool(server)
    server.script = lambda req: [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforged"]
    assert (await get(pool)).body == b"a"
    assert (await get(pool)).body == b"a"  # a fresh connection, not the smuggled second answer
    assert server.connections == 2
    await pool.close()


async def test_close_before_answer_is_unreachable_and_slow_drip_is_a_timeout(server: RawServer) -> None:
    pool = make_pool(server)
    server.script = lambda req: None
    with pytest.raises(UpstreamUnreachable):
        await get(pool)
    server.script = lambda req: [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"a", b"b", b"c"]
    server.delay = 0.3
    with pytest.raises(UpstreamTimeout):
        await get(pool, timeout=0.5)
    await pool.close()


async def test_closed_port_is_unreachable() -> None:
    pool = Http11Pool(f"http://127.0.0.1:{free_port()}", connect_timeout=1.0, max_body=1024, max_idle=4)
    with pytest.raises(UpstreamUnreachable):
        await get(pool)


async def test_idle_connection_closed_by_the_partner_is_not_reused(server: RawServer) -> None:
    pool = make_pool(server)
    server.script = lambda req: [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"]
    await get(pool)
    server.drop_connections()  # the partner closes our idle keep-alive connection
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert (await get(pool)).body == b"a"  # a new connection, no error, no write to the dead one
    assert server.connections == 2 and len(server.requests) == 2
    await pool.close()


def test_host_header_and_tls_settings() -> None:
    assert Http11Pool("https://b2b.tokopedia.com/api", connect_timeout=1, max_body=1, max_idle=1).host_header == "b2b.tokopedia.com"
    pool = Http11Pool("https://b2b.tokopedia.com:8443/api", connect_timeout=1, max_body=1, max_idle=1)
    assert pool.host_header == "b2b.tokopedia.com:8443" and pool.ssl is not None and pool.port == 8443
    assert Http11Pool("http://127.0.0.1:9090", connect_timeout=1, max_body=1, max_idle=1).ssl is None


# -- StrictAnswer on its own: the framing headers are picked out while parsing, the body is kept
# without a copy when it came in one piece and must still be whole (and unshared) when it did not.


def _fed(max_body: int, *chunks: bytes, head_only: bool = False) -> StrictAnswer:
    answer = StrictAnswer(max_body)
    answer.reset(head_only)
    for chunk in chunks:
        answer.feed(chunk)
    return answer


def test_strict_body_in_one_piece_and_in_many() -> None:
    one = _fed(100, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert one.done and one.framed and one.keep_alive and one.body_bytes() == b"hello" and type(one.body_bytes()) is bytes
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"
    many = _fed(100, head + b"ab", b"cd", b"ef")
    body = many.body_bytes()
    assert many.done and body == b"abcdef" and type(body) is bytes
    chunked = _fed(100, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")
    assert chunked.done and chunked.framed and chunked.body_bytes() == b"abc"
    # the next answer on the connection starts empty: nothing of the previous body is kept
    many.reset(False)
    many.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")
    assert many.body_bytes() == b"z" and body == b"abcdef"


def test_strict_framing_headers_any_case_and_their_limits() -> None:
    assert _fed(100, b"HTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh: 2\r\n\r\nok").body_bytes() == b"ok"
    with pytest.raises(Violation, match="over the 10 byte limit"):
        _fed(10, b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 11\r\n\r\n")
    assert _fed(10, b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", head_only=True).done  # HEAD: no body follows
    with pytest.raises(Violation, match="over the 3 byte limit"):
        _fed(3, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n")
    for te in (b"TRANSFER-ENCODING: gzip, chunked", b"Transfer-Encoding: chunked\r\ntransfer-encoding: chunked"):
        with pytest.raises(Violation, match="only one 'chunked'"):
            _fed(100, b"HTTP/1.1 200 OK\r\n" + te + b"\r\n\r\n")
    # no length, no chunking: read until close, never reused
    until_close = _fed(100, b"HTTP/1.1 200 OK\r\nX-Content-Lengths: 2\r\n\r\nab")
    assert not until_close.framed and not until_close.done and until_close.eof() and until_close.body_bytes() == b"ab"
    # a 1xx before the answer: its headers are not the answer's
    interim = _fed(100, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert interim.done and interim.status == 200 and interim.headers == [(b"Content-Length", b"1")] and interim.body_bytes() == b"x"


async def test_callback_path_tells_once_and_keeps_no_reference(server: RawServer) -> None:
    """``Http11Pool.start`` keeps the request's callback on the connection, not in a partial: it must
    be called once, then dropped (it holds the exchange), and the connection goes back to the pool."""
    pool = make_pool(server)
    await get(pool)  # one pooled connection
    outcomes: list[tuple[UpstreamAnswer | None, BaseException | None]] = []
    finished = asyncio.get_running_loop().create_future()

    def on_done(answer: UpstreamAnswer | None, exc: BaseException | None) -> None:
        outcomes.append((answer, exc))
        finished.set_result(None)

    assert pool.has_idle()
    conn = pool._idle[-1]
    assert pool.start(UpstreamRequest("GET", "/api/x", []), 2.0, on_done)
    await asyncio.wait_for(finished, 2.0)
    await asyncio.sleep(0.05)
    assert len(outcomes) == 1 and outcomes[0][0] is not None and outcomes[0][0].body == b"ok"
    assert conn.on_done is None and not pool._busy and pool._idle[-1] is conn and server.connections == 1
    # a failure is told once too, with the method and timeout the request was started with
    server.script = lambda req: None  # the partner hangs up without answering
    outcomes.clear()
    finished = asyncio.get_running_loop().create_future()
    assert pool.start(UpstreamRequest("GET", "/api/x", []), 2.0, on_done)
    await asyncio.wait_for(finished, 2.0)
    await asyncio.sleep(0.05)
    assert len(outcomes) == 1 and outcomes[0][0] is None and isinstance(outcomes[0][1], UpstreamUnreachable)
    assert conn.on_done is None and not pool._busy and not pool._idle
    await pool.close()
