"""Both upstream transports against exact bytes on the wire: one corpus, the same verdicts.

The partner is ``RawServer`` (tests/test_http11.py): a loopback TCP server this test owns, sending
scripted bytes. Every case runs on ``http11`` and on ``aiohttp``. Also here: the bundled llhttp is
strict, every exception each transport can raise is in its table, and the failure kinds by what
happened on the wire (DESIGN "Failure kinds").
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httptools
import pytest
from aiohttp import http_exceptions

from proxy.errors import OutcomeUnknown, UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnreachable
from proxy.upstream import aiohttp_client, http11
from proxy.upstream.aiohttp_client import AiohttpTransport
from proxy.upstream.http11 import Http11Pool
from proxy.upstream.transport import Event, Phase, Transport, UpstreamRequest, map_exception, wire_error
from tests.redis_server import free_port
from tests.test_http11 import RawServer

S = b"HTTP/1.1 200 OK\r\n"
CH = S + b"Transfer-Encoding: chunked\r\n\r\n"
OK = "ok"
BAD = "protocol"

# (id, answer bytes, verdict): OK means 200 with body b"ok", BAD means 502 UPSTREAM_PROTOCOL_ERROR.
CORPUS: list[tuple[str, bytes, str]] = [
    ("plain", S + b"Content-Length: 2\r\n\r\nok", OK),
    ("chunked", CH + b"2\r\nok\r\n0\r\n\r\n", OK),
    ("chunk-extension", CH + b"2;a=b\r\nok\r\n0\r\n\r\n", OK),
    ("trailers", CH + b"2\r\nok\r\n0\r\nX-T: 1\r\n\r\n", OK),
    ("htab-in-value", S + b"X: a\tb\r\nContent-Length: 2\r\n\r\nok", OK),
    ("no-reason-phrase", b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", OK),
    ("http-1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", OK),
    ("http-1.0-keep-alive", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", OK),
    ("eof-delimited", S + b"\r\nok", OK),  # RawServer closes after it (close_after)
    ("100-then-200", b"HTTP/1.1 100 Continue\r\n\r\n" + S + b"Content-Length: 2\r\n\r\nok", OK),
    ("103-then-200", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + S + b"Content-Length: 2\r\n\r\nok", OK),
    # bare CR and bare LF, in each position
    ("bare-lf-status-line", b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok", BAD),
    ("bare-cr-status-line", b"HTTP/1.1 200 OK\rContent-Length: 2\r\n\r\nok", BAD),
    ("bare-lf-header-line", S + b"Content-Length: 2\nX: y\r\n\r\nok", BAD),
    ("bare-cr-header-line", S + b"Content-Length: 2\rX: y\r\n\r\nok", BAD),
    ("bare-cr-in-value", S + b"X: a\rb\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("bare-lf-between-headers", S + b"X: y\r\n\nContent-Length: 2\r\n\r\nok", BAD),
    ("bare-lf-end-of-head", S + b"Content-Length: 2\r\n\nok", BAD),
    ("bare-cr-end-of-head", S + b"Content-Length: 2\r\n\rok", BAD),
    ("bare-lf-chunk-size", CH + b"2\nok\r\n0\r\n\r\n", BAD),
    ("bare-cr-chunk-size", CH + b"2\rok\r\n0\r\n\r\n", BAD),
    ("bare-lf-after-chunk", CH + b"2\r\nok\n0\r\n\r\n", BAD),
    ("bare-cr-after-chunk", CH + b"2\r\nok\r0\r\n\r\n", BAD),
    ("no-crlf-after-chunk", CH + b"2\r\nokXX0\r\n\r\n", BAD),
    ("bare-lf-last-chunk", CH + b"2\r\nok\r\n0\n\r\n", BAD),
    ("bare-lf-end-of-trailers", CH + b"2\r\nok\r\n0\r\n\n", BAD),
    # obs-fold and control characters
    ("obs-fold", S + b"X: a\r\n b\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("obs-fold-tab", S + b"X: a\r\n\tb\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("nul-in-reason", b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("ctl-01-in-reason", b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("del-in-reason", b"HTTP/1.1 200 O\x7fK\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("nul-in-name", S + b"X\x00a: b\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("ctl-01-in-name", S + b"X\x01a: b\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("nul-in-value", S + b"X: a\x00b\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("ctl-01-in-value", S + b"X: a\x01b\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("esc-in-value", S + b"X: a\x1bb\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("del-in-value", S + b"X: a\x7fb\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("nul-in-content-type", S + b"Content-Type: application/json\x00\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("cr-in-content-type", S + b"Content-Type: text/plain\rX\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("space-in-name", S + b"X a: b\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("space-before-colon", S + b"Content-Length : 2\r\n\r\nok", BAD),
    ("empty-name", S + b": b\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("no-colon", S + b"Xy\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("space-before-first-header", S + b" X: y\r\nContent-Length: 2\r\n\r\nok", BAD),
    # status line
    ("not-http", b"SMTP 220 hello\r\n\r\n", BAD),
    ("lowercase-http", b"http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("http-1.2", b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("http-2.0-text", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", BAD),
    # llhttp keeps a 2.0 answer alive when it says keep-alive: the version must still be checked
    ("http-2.0-keep-alive", b"HTTP/2.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("http-0.9-keep-alive", b"HTTP/0.9 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("status-4-digits", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("status-2-digits", b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("double-space-status", b"HTTP/1.1  200 OK\r\nContent-Length: 2\r\n\r\nok", BAD),
    # chunk size and extension syntax
    ("chunk-empty-extension", CH + b"2;\r\nok\r\n0\r\n\r\n", BAD),
    ("chunk-size-trailing-space", CH + b"2 \r\nok\r\n0\r\n\r\n", BAD),
    ("chunk-size-hex-overflow", CH + b"fffffffffffffffff\r\nok\r\n0\r\n\r\n", BAD),
    ("chunk-size-negative", CH + b"-2\r\nok\r\n0\r\n\r\n", BAD),
    ("chunk-size-0x", CH + b"0x2\r\nok\r\n0\r\n\r\n", BAD),
    ("chunk-size-not-hex", CH + b"zz\r\nok\r\n0\r\n\r\n", BAD),
    # Content-Length
    ("duplicate-content-length-same", S + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok", BAD),
    ("duplicate-content-length-conflicting", S + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nok", BAD),
    ("content-length-list", S + b"Content-Length: 2, 2\r\n\r\nok", BAD),
    ("content-length-negative", S + b"Content-Length: -1\r\n\r\nok", BAD),
    ("content-length-plus", S + b"Content-Length: +2\r\n\r\nok", BAD),
    ("content-length-overflow", S + b"Content-Length: 99999999999999999999999\r\n\r\nok", BAD),
    # Transfer-Encoding lists
    ("te-gzip-chunked", S + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", BAD),
    ("te-chunked-gzip", S + b"Transfer-Encoding: chunked, gzip\r\n\r\nok", BAD),
    ("te-chunked-twice-lines", S + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", BAD),
    ("te-chunked-twice-list", S + b"Transfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", BAD),
    ("te-gzip-only", S + b"Transfer-Encoding: gzip\r\n\r\nok", BAD),
    ("te-and-cl", S + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n", BAD),
    ("cl-and-te", S + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", BAD),
    # interim and upgrade
    ("101-switching", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nok", BAD),
    # size caps (max_body 1024, MAX_HEAD 64 KiB)
    ("body-over-limit-cl", S + b"Content-Length: 5000\r\n\r\n" + b"x" * 5000, BAD),
    ("body-over-limit-chunked", CH + b"800\r\n" + b"x" * 2048 + b"\r\n0\r\n\r\n", BAD),
    ("body-over-limit-eof", S + b"\r\n" + b"x" * 5000, BAD),
    ("head-over-limit", S + b"X-Big: " + b"x" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok", BAD),
    # cut short: part of an answer, then the end
    ("head-cut-short", S + b"Content-Length: 2\r\nX-", BAD),
    ("body-cut-short", S + b"Content-Length: 10\r\n\r\nok", BAD),
    ("chunked-cut-short", CH + b"2\r\nok\r\n", BAD),
]


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    s = RawServer()
    await s.start()
    yield s
    await s.close()


def make(kind: str, port: int, max_body: int = 1024, **kw: Any) -> Transport:
    url = f"http://127.0.0.1:{port}/api"
    if kind == "http11":
        return Http11Pool(url, connect_timeout=1.0, max_body=max_body, max_idle=4, **kw)
    return AiohttpTransport(url, connect_timeout=1.0, max_body=max_body, max_connections=4, **kw)


KINDS = ["http11", "aiohttp"]


def get(path: str = "/api/x", method: str = "GET", body: bytes = b"") -> UpstreamRequest:
    return UpstreamRequest(method, path, [("Accept", "application/json")], body)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case_id,answer,verdict", CORPUS, ids=[c[0] for c in CORPUS])
async def test_corpus(kind: str, case_id: str, answer: bytes, verdict: str, server: RawServer) -> None:
    transport = make(kind, server.port)
    server.script = lambda req: [answer]
    server.close_after = True  # EOF after the bytes: delimits "until close" bodies and cut-short ones
    try:
        if verdict == OK:
            result = await transport.send(get(), timeout=2.0)
            assert (result.status, result.body) == (200, b"ok")
        else:
            with pytest.raises(UpstreamProtocolError):
                await transport.send(get(), timeout=2.0)
        # and the next request on this transport is served normally, on a new connection
        server.script = lambda req: [S + b"Content-Length: 4\r\n\r\nnext"]
        server.close_after = False
        await asyncio.sleep(0.05)  # let the partner's close arrive (else: a stale pooled connection, the forwarder's retry case)
        result = await transport.send(get(), timeout=2.0)
        assert (result.status, result.body) == (200, b"next")
    finally:
        await transport.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_pipelined_leftovers_after_a_complete_answer_close_the_connection(kind: str, server: RawServer) -> None:
    transport = make(kind, server.port)
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
    server.script = lambda req: [S + b"Content-Length: 1\r\n\r\na" + forged]
    try:
        assert (await transport.send(get(), timeout=2.0)).body == b"a"
        server.script = lambda req: [S + b"Content-Length: 4\r\n\r\nnext"]
        assert (await transport.send(get(), timeout=2.0)).body == b"next"  # not the smuggled answer
        assert server.connections == 2
    finally:
        await transport.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_leftovers_arriving_later_close_the_idle_connection(kind: str, server: RawServer) -> None:
    transport = make(kind, server.port)
    server.script = lambda req: [S + b"Content-Length: 1\r\n\r\na", b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"]
    server.delay = 0.05
    try:
        assert (await transport.send(get(), timeout=2.0)).body == b"a"
        await asyncio.sleep(0.2)
        server.script = lambda req: [S + b"Content-Length: 4\r\n\r\nnext"]
        assert (await transport.send(get(), timeout=2.0)).body == b"next"
        assert server.connections == 2
    finally:
        await transport.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_keep_alive_reuse_and_head(kind: str, server: RawServer) -> None:
    transport = make(kind, server.port)
    server.script = lambda req: [S + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\nok"]
    try:
        for _ in range(3):
            result = await transport.send(get(), timeout=2.0)
            assert result.body == b"ok" and result.header("content-type") == "application/json"
        assert server.connections == 1
        server.script = lambda req: [S + b"Content-Length: 500\r\n\r\n"]
        assert (await transport.send(get(method="HEAD"), timeout=2.0)).body == b""
        server.script = lambda req: [b"HTTP/1.1 204 No Content\r\n\r\n"]
        assert (await transport.send(get(), timeout=2.0)).status == 204
    finally:
        await transport.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_idle_timeout_and_max_connection_duration_stop_reuse(kind: str, server: RawServer) -> None:
    server.script = lambda req: [S + b"Content-Length: 2\r\n\r\nok"]
    transport = make(kind, server.port, idle_timeout=0.2)
    try:
        await transport.send(get(), timeout=2.0)
        await transport.send(get(), timeout=2.0)
        assert server.connections == 1
        await asyncio.sleep(1.2 if kind == "aiohttp" else 0.3)  # aiohttp rounds keepalive expiry to its cleanup tick
        await transport.send(get(), timeout=2.0)
        assert server.connections == 2  # idle longer than idle_timeout: a new connection
    finally:
        await transport.close()
    transport = make(kind, server.port, max_connection_duration=0.2)
    before = server.connections
    try:
        await transport.send(get(), timeout=2.0)
        await asyncio.sleep(0.3)
        await transport.send(get(), timeout=2.0)  # reused once more is allowed to fail the age check only after
        await transport.send(get(), timeout=2.0)
        assert server.connections - before >= 2  # older than max_connection_duration: not reused
    finally:
        await transport.close()


# --- failure kinds, by what happened on the wire ----------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_closed_port_is_unreachable_for_every_method(kind: str, method: str) -> None:
    transport = make(kind, free_port())
    with pytest.raises(UpstreamUnreachable):
        await transport.send(get(method=method, body=b"{}" if method == "POST" else b""), timeout=2.0)
    await transport.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "method,script,expected",
    [
        ("GET", None, UpstreamUnreachable),                       # written, no byte back, closed
        ("GET", [S + b"Content-Length: 10\r\n\r\nok"], UpstreamProtocolError),  # part of an answer, closed
        ("GET", [S + b"X-A: 1\r\n"], UpstreamProtocolError),    # a head that never ends, then closed
        ("POST", None, OutcomeUnknown),
        ("POST", [S + b"Content-Length: 10\r\n\r\nok"], OutcomeUnknown),
        ("POST", [b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok"], OutcomeUnknown),  # broken answer
    ],
    ids=["get-closed", "get-cut", "get-head-cut", "post-closed", "post-cut", "post-broken"],
)
async def test_written_and_then(kind: str, method: str, script: list[bytes] | None, expected: type[UpstreamError], server: RawServer) -> None:
    transport = make(kind, server.port)
    server.script = lambda req: script
    server.close_after = True
    with pytest.raises(expected) as info:
        await transport.send(get(method=method, body=b"{}" if method == "POST" else b""), timeout=2.0)
    assert info.value.status == (504 if expected is OutcomeUnknown else 502)
    await transport.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method,expected", [("GET", UpstreamTimeout), ("POST", OutcomeUnknown)])
@pytest.mark.parametrize("script", [[], [S + b"X-A: 1\r\n"], [S + b"Content-Length: 10\r\n\r\nok"]], ids=["silent", "head-never-ends", "body-short"])
async def test_no_complete_answer_in_time(kind: str, method: str, expected: type[UpstreamError], script: list[bytes], server: RawServer) -> None:
    transport = make(kind, server.port)
    hold = asyncio.Event()

    def answer(req: bytes) -> list[bytes]:
        return script
    server.script = answer
    with pytest.raises(expected) as info:
        await transport.send(get(method=method, body=b"{}" if method == "POST" else b""), timeout=0.3)
    assert info.value.status == 504 and not isinstance(info.value, UpstreamUnreachable)
    hold.set()
    await transport.close()


def test_the_verdict_table() -> None:
    for event in Event:
        assert isinstance(wire_error(Phase.NOT_SENT, event, "POST", ""), UpstreamUnreachable)
    assert isinstance(wire_error(Phase.SENT, Event.CLOSED, "GET", ""), UpstreamUnreachable)
    assert isinstance(wire_error(Phase.SENT, Event.TIMEOUT, "GET", ""), UpstreamTimeout)
    assert isinstance(wire_error(Phase.ANSWERING, Event.CLOSED, "GET", ""), UpstreamProtocolError)
    assert isinstance(wire_error(Phase.ANSWERING, Event.VIOLATION, "PUT", ""), UpstreamProtocolError)
    for phase in (Phase.SENT, Phase.ANSWERING):
        for event in Event:
            for method in ("POST", "PATCH"):
                err = wire_error(phase, event, method, "")
                assert isinstance(err, OutcomeUnknown) and not err.retryable and err.status == 504
                assert err.code == "UPSTREAM_OUTCOME_UNKNOWN" and "data.id" in err.message("en")


# --- llhttp is strict, and every exception is mapped -----------------------------------------------

def test_bundled_llhttp_is_built_strict() -> None:
    """httptools sets no leniency: the bytes aiohttp's lax parser lets through are refused."""
    class Sink:
        pass
    for data in (b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", S + b"X: a\x01\r\n\r\n", S + b"Transfer-Encoding: chunked\r\n\r\n2 \r\n", S + b"X: a\r\n b\r\n\r\n"):
        with pytest.raises(httptools.HttpParserError):
            httptools.HttpResponseParser(Sink()).feed_data(data)


def _all_subclasses(base: type[BaseException]) -> set[type[BaseException]]:
    found = {base}
    for sub in base.__subclasses__():
        found |= _all_subclasses(sub)
    return found


def test_every_http11_exception_is_mapped() -> None:
    raised = {http11.Violation, http11.Closed, TimeoutError, ssl.SSLError, ssl.SSLCertVerificationError, ConnectionRefusedError,
              ConnectionResetError, BrokenPipeError, OSError}
    raised |= {v for _, v in inspect.getmembers(httptools) if inspect.isclass(v) and issubclass(v, Exception)}
    for exc in raised:
        assert map_exception(http11.EXCEPTIONS, exc.__new__(exc)) is not None, exc  # type: ignore[call-overload]


def test_every_aiohttp_exception_is_mapped() -> None:
    """Like httpx's test of map_httpcore_exceptions: every exception aiohttp exports is in the table."""
    exported: set[type[BaseException]] = {v for _, v in inspect.getmembers(aiohttp) if inspect.isclass(v) and issubclass(v, Exception)}
    exported |= {v for _, v in inspect.getmembers(http_exceptions) if inspect.isclass(v) and issubclass(v, Exception)}
    exported |= _all_subclasses(aiohttp.ClientError)
    exported |= {http11.Violation, TimeoutError, asyncio.TimeoutError, OSError, ssl.SSLError}
    exported = {e for e in exported if not issubclass(e, Warning)}  # BadContentDisposition*: warnings, never raised
    exported -= {aiohttp.WSMessageTypeError, aiohttp.EofStream, aiohttp.WebSocketError}  # websocket only: we open none
    table = tuple((cls, event) for cls, event, _ in aiohttp_client.EXCEPTIONS)
    unmapped = {exc.__name__ for exc in exported if map_exception(table, exc.__new__(exc)) is None}  # type: ignore[call-overload]
    assert not unmapped
