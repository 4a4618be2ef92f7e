"""The lane (``proxy.lane``): a warm ``GET /v1/products`` done on the parser's bytes must behave
exactly as the ordinary callback path (``proxy.fastpath``) it short-cuts.

The lane re-implements, on bytes, pieces of code that exist elsewhere on ``str`` and multidicts:
the header policy both ways, the route's checks, the ``Authorization`` line, the ``partner_call``
record and the reply encoding. Every such copy can drift from its original without any other test
noticing, because the ordinary path's own tests never run the copy. So this module proves
*agreement*, not features, at three levels:

1. Byte parity, in process (``bench/hotpath.py``'s rig: the shipped runtime, one ``H1Protocol``
   and one pooled partner connection on transports that keep what is written). Two twin sides are
   built from the same config: one as compiled (lanes on), one whose runtime has ``lanes={}``.
   The same app request and the same partner answers go through both; the partner request bytes,
   the app's answer bytes (one fixed ``Date``), the ``partner_call`` record and the counters
   must be identical, up to what is random by design (the new span id; request ids and trace ids
   the proxy minted; a freshly fetched token). The lane counter tells which path really ran.
2. End to end, on the real h1 server against the aiohttp sandbox partner on loopback: the lane is
   taken when it should be (``Listener.lane_requests``), left alone when it should not be, and
   every hand-on outcome (partner errors, retried 5xx, a reset, a timeout, a rejected token)
   ends as on a warm rig whose listener has no lane.
3. Unit agreement of each copy with its original, over many random inputs (hypothesis):
   ``answer_lines``/``answer_headers``, ``accepts_raw``/``check``, ``SuccessLine``/``on_finish``,
   ``encode_passed``/``encode_reply``; and which routes and policies get a lane at all.

A difference found here is a bug in ``proxy/``: such tests fail, they are not marked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import httptools
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

import proxy.accesslog
import proxy.metrics
from proxy.accesslog import AccessLog
from proxy.app import build_state, data_server
from proxy.commlog import LogPolicy
from proxy.config import LoadedConfig
from proxy.config.models import RequireConfig
from proxy.exchange import Exchange
from proxy.filters.validate import ValidateRequest
from proxy.h1.protocol import H1Protocol
from proxy.h1.response import encode_passed, encode_reply
from proxy.h1.server import H1Server
from proxy.headers import BadHeaderValue, answer_headers, answer_lines, downstream_headers
from proxy.lane import LaneRoute
from proxy.listener import Listener
from proxy.metrics import Metrics
from proxy.oauth.token import Grant
from proxy.reply import Reply
from proxy.resources import Resources, Staged
from proxy.runtime import Runtime, compile_runtime
from proxy.state import ProxyState
from proxy.upstream.http11 import _Connection
from tests.transports import KeepTransport
from tests.factories import frozen_log
from tests.keys import keys_for_tests
from tests.test_partner_api import order
from tests.helpers import JSON_HEADERS, TEST_CLIENT, Rig, make_rig, partner_calls, patched_routes, sandbox_app, sandbox_env, shipped_config

# The lane exists only on the http11 transport (it is a lane of the callback path) ...
on_http11 = pytest.mark.skipif(TEST_CLIENT == "aiohttp", reason="the lane needs the http11 transport")
# ... and only in the h1 server's protocol: the aiohttp data server never asks for one.
on_h1 = pytest.mark.skipif(data_server() == "aiohttp", reason="the lane lives in the h1 server (proxy.h1.protocol)")

PRODUCTS = b"/v1/products"
TOKEN = "c:lane-token"  # the token both in-process sides hold in memory
DATE = b"Date: Tue, 01 Dec 2026 09:00:00 GMT\r\n"  # one ticker value for both sides
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UPSTREAM_LINE = "upstream: {cluster: tokopedia, path: /v2/product-list, query: [product_code]}"
TIMEOUT_LINE = "    timeout: 10s                         # whole partner call"


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


def base(sandbox: TestServer) -> str:
    return str(sandbox.make_url("")).rstrip("/")


NOWHERE = "http://127.0.0.1:9"  # the in-process sides' partner: only a connection the pool opens itself would go there
_LOADED: dict[tuple[str, str | None], LoadedConfig] = {}


def loaded_config(url: str, routes: Path | None = None) -> LoadedConfig:
    """``shipped_config``, loaded once per partner URL and routes text (loading costs ~80 ms; a
    ``LoadedConfig`` is immutable, and each state compiles its own runtime from it)."""
    key = (url, routes.read_text() if routes is not None else None)
    if key not in _LOADED:
        _LOADED[key] = shipped_config(url, routes=routes) if routes is not None else shipped_config(url)
    return _LOADED[key]


def routes_with(tmp_path: Path, upstream: str = "", timeout: str = "") -> Path:
    """The shipped routes.yaml with more keys in get_products' ``upstream`` block, or another
    cluster timeout."""
    replacements = {}
    if upstream:
        replacements[UPSTREAM_LINE] = UPSTREAM_LINE[:-1] + ", " + upstream + "}"
    if timeout:
        replacements[TIMEOUT_LINE] = f"    timeout: {timeout}"
    return patched_routes(tmp_path, replacements)


# =================================================================================================
# 1. Byte parity in process: twin sides, one with lanes and one without
# =================================================================================================


@dataclass
class Trip:
    """One app request through one side: what the partner received (one entry per attempt),
    what the app got back, and how the listener counted it."""

    sent: list[bytes]
    answer: bytes
    lane: int
    callback: int
    task: int


@dataclass
class Side:
    """The shipped runtime as ``serve`` compiles it, the token in memory, one pooled partner
    connection on a ``KeepTransport``; requests are fed to a fresh ``H1Protocol`` each."""

    state: ProxyState
    listener: Listener
    server: H1Server
    conn: _Connection
    partner: KeepTransport
    log: io.StringIO
    reached: int = 0  # app requests that reached the partner: each leaves one partner_call record

    @classmethod
    async def open(cls, url: str, routes: Path | None, lanes: bool) -> Side:
        log = io.StringIO()
        state = build_state(loaded_config(url, routes), log_stream=log)
        await state.open()
        runtime = state.current()
        for provider in runtime.providers.values():
            now = time.time()
            provider._adopt(Grant(TOKEN, now, now + 86400), "fetch")  # what a first fetch leaves in memory
        cluster = runtime.clusters["tokopedia"]
        pool = cluster.pool
        assert pool is not None
        _, cork = pool._loop_and_cork()
        conn = _Connection(cluster.config.max_response_bytes, cork)
        partner = KeepTransport(keep_all=True)
        conn.connection_made(partner)
        pool._idle.append(conn)
        if lanes:
            listener = Listener(state.current)
        else:
            plain = dataclasses.replace(runtime, lanes={}, template_lanes={})  # the same objects, no lane
            listener = Listener(lambda: plain)
        server = H1Server(listener)
        server.ticker.date = DATE
        return cls(state, listener, server, conn, partner, log)

    def runtime(self) -> Runtime:
        return self.state.current()

    async def trip(self, request: bytes, answers: Sequence[bytes] = ()) -> Trip:
        """``request`` into a new connection's ``data_received``; each partner request written on the
        pooled connection is answered with the next of ``answers`` (none left: it hangs)."""
        counts = (self.listener.lane_requests, self.listener.callback_requests, self.listener.task_requests)
        proto = H1Protocol(self.server)
        app = KeepTransport(keep_all=True)
        proto.connection_made(app)
        pool = self.runtime().clusters["tokopedia"].pool
        assert pool is not None
        _, partner_cork = pool._loop_and_cork()
        proto.data_received(request)
        pending = list(answers)
        sent: list[bytes] = []
        for _ in range(2500):
            partner_cork.flush()
            if self.conn.busy and self.partner.data:
                sent.append(self.partner.take())
                if pending:
                    self.conn.data_received(pending.pop(0))
            self.server.cork.flush()
            if app.data and not self.listener.inflight:
                break
            await asyncio.sleep(0.002)
        else:
            raise AssertionError(f"no answer; partner got {sent!r}")
        proto.connection_lost(None)
        self.reached += bool(sent)
        return Trip(
            sent, app.take(),
            self.listener.lane_requests - counts[0], self.listener.callback_requests - counts[1], self.listener.task_requests - counts[2],
        )

    async def records(self, at_least: int) -> list[dict[str, Any]]:
        return await partner_calls(self.log, at_least)

    def counters(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every counter and histogram count (never durations): what the request was counted as."""
        out = {}
        for metric in self.state.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name.endswith(("_total", "_count")):
                    out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    async def close(self) -> None:
        await self.state.close()


Twins = Callable[..., Awaitable[tuple[Side, Side]]]


@pytest.fixture
async def twins() -> AsyncIterator[Twins]:
    """``await twins(routes=None, url=NOWHERE)``: a side with lanes and one without, from the same
    config. ``url`` is the partner's and the token endpoint's: a sandbox where a token renewal must
    fetch a real token."""
    made: list[Side] = []

    async def make(routes: Path | None = None, url: str = NOWHERE) -> tuple[Side, Side]:
        pair = (await Side.open(url, routes, True), await Side.open(url, routes, False))
        made.extend(pair)
        return pair

    yield make
    for side in made:
        await side.close()


_SPAN = re.compile(rb"(traceparent: 00-[0-9a-f]{32}-)[0-9a-f]{16}")
_TRACE = re.compile(rb"traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}")
_MINTED_ID = re.compile(rb"(X-Request-Id: |\"request_id\":\")[0-9a-f]{32}\b")
_PARTNER_DATE = re.compile(rb"Date: [^\r]*")  # a route with upstream.date: the partner request's own clock
_FRESH_TOKEN = re.compile(rb"Authorization: Bearer (?!" + re.escape(TOKEN.encode()) + rb"\r)[^\r]*")


def masked(data: bytes, *, new_trace: bool, new_id: bool) -> bytes:
    """``data`` with what is random by design replaced: the span id (always new), the trace id and
    the request id when the proxy minted them, a token the sandbox issued on a renewal."""
    data = _TRACE.sub(b"traceparent: <trace>", data) if new_trace else _SPAN.sub(rb"\1<span>", data)
    if new_id:
        data = _MINTED_ID.sub(rb"\1<minted>", data)
    return _FRESH_TOKEN.sub(b"Authorization: Bearer <fresh>", data)


def masked_record(record: dict[str, Any], *, new_trace: bool, new_id: bool) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in ("time", "latency_ms")}
    traceparent = out["traceparent"]
    out["traceparent"] = "<trace>" if new_trace else traceparent[:36] + "<span>" + traceparent[52:]
    if new_id and re.fullmatch("[0-9a-f]{32}", out["request_id"]):
        out["request_id"] = "<minted>"
    return out


def request(*lines: str | bytes, target: bytes = PRODUCTS, method: bytes = b"GET", version: bytes = b"1.1", body: bytes = b"") -> bytes:
    head = b"%s %s HTTP/%s\r\n" % (method, target, version)
    return head + b"".join((line.encode() if isinstance(line, str) else line) + b"\r\n" for line in lines) + b"\r\n" + body


BASE = ("Host: 127.0.0.1:8080", "Content-Type: application/json", "X-Client-Id: app-1")
FULL = (
    "Host: 127.0.0.1:8080",
    "Content-Type: application/json",
    "X-Client-Id: app-1",
    "User-Agent: shop/7.1",
    "Accept: application/json",
    "Accept-Language: id-ID,id;q=0.9",
    "X-App-Build: 7.1\tbeta",  # HTAB inside a value
    "X-Empty:",
    "X-Request-Id: req-lane.1:a",
    "traceparent: " + TRACEPARENT,
    "tracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    "Cookie: session=app-secret",
    "Authorization: Bearer the-apps-own",
    "X-Trailer-Space: kept ",
)


def answer(status: int = 200, *lines: str | bytes, body: bytes = b'{"data":[{"type":"product","id":"25k-xl"}]}', chunked: bool = False) -> bytes:
    reason = {200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content"}.get(status, b"Whatever")
    head = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    head += b"".join((line.encode() if isinstance(line, str) else line) + b"\r\n" for line in lines)
    if chunked:
        half = len(body) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]) if part)
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


OK = answer(200, "Server: nginx", "Date: Tue, 01 Dec 2026 08:59:59 GMT", "Content-Type: application/json", "Set-Cookie: p=1", "X-Partner-Trace: t-1")


def jsonapi(status: int, code: str) -> bytes:
    return answer(status, "Content-Type: application/vnd.api+json", body=json.dumps({"errors": [{"code": code, "title": "t", "detail": "d"}]}).encode())


def html(status: int) -> bytes:
    return answer(status, "Content-Type: text/html", body=b"<html><body>nope</body></html>")


async def assert_same(lane: Side, plain: Side, req: bytes, answers: Sequence[bytes], *, taken: bool, new_trace: bool = False, new_id: bool = False) -> tuple[Trip, Trip]:
    """``req`` through both sides: the same bytes everywhere, the same record, the same counts."""
    got = await lane.trip(req, answers)
    want = await plain.trip(req, answers)
    assert want.lane == 0
    assert got.lane == (1 if taken else 0), f"lane taken: expected {taken}"
    assert (got.callback, got.task) == (want.callback, want.task), "the same path otherwise (callback or task)"
    assert len(got.sent) == len(want.sent), "as many partner attempts"
    for mine, theirs in zip(got.sent, want.sent):
        mine, theirs = (_PARTNER_DATE.sub(b"Date: <now>", masked(x, new_trace=new_trace, new_id=new_id)) for x in (mine, theirs))
        assert mine == theirs
    assert masked(got.answer, new_trace=new_trace, new_id=new_id) == masked(want.answer, new_trace=new_trace, new_id=new_id)
    if got.sent:
        mine_rec = (await lane.records(lane.reached))[-1]
        their_rec = (await plain.records(plain.reached))[-1]
        assert masked_record(mine_rec, new_trace=new_trace, new_id=new_id) == masked_record(their_rec, new_trace=new_trace, new_id=new_id)
    assert lane.counters() == plain.counters(), "the same metrics (counters and histogram counts)"
    assert lane.listener.inflight == plain.listener.inflight == 0
    return got, want


# -- the app's request --------------------------------------------------------------------------------

REQUESTS = {
    # name: (request bytes, lane taken, trace minted, request id minted)
    "full": (request(*FULL), True, False, False),
    "bare": (request(*BASE), True, True, True),
    "http/1.0": (request(*BASE, "X-Request-Id: old-1", version=b"1.0"), True, True, False),
    "http/2.0 text": (request(*BASE, version=b"2.0"), True, True, True),
    "http/1.0 keep-alive": (request(*BASE, "Connection: keep-alive", version=b"1.0"), True, True, True),
    "http/2.0 keep-alive": (request(*BASE, "Connection: Keep-Alive", version=b"2.0"), True, True, True),
    "Connection: keep-alive": (request(*BASE, "Connection: keep-alive"), True, True, True),
    "Connection: close": (request(*BASE, "connection:  Close "), True, True, True),
    "names in odd case": (
        request(
            "host: h", "content-type: application/json", "x-client-id: a", "COOKIE: c=1", "authorization: x",
            "X-REQUEST-ID: Abc:1.2", "TraceParent: " + TRACEPARENT, "TRACESTATE: k=v", "x-lower: v",
        ),
        True, False, False,
    ),
    "traceparent version ff, its tracestate dropped": (
        request(*BASE, "traceparent: ff" + TRACEPARENT[2:], "tracestate: k=v"), True, True, True,
    ),
    "traceparent in upper case": (request(*BASE, "traceparent: " + TRACEPARENT.upper(), "tracestate: k=v"), True, False, True),
    "tracestate without traceparent": (request(*BASE, "tracestate: k=v"), True, True, True),
    "a request id that is refused": (request(*BASE, "X-Request-Id: has space"), True, True, True),
    "charset in the content type": (request("Content-Type: Application/JSON; charset=utf-8", "X-Client-Id: app-1"), True, True, True),
    "a long client id": (request("Content-Type: application/json", "X-Client-Id: " + "c" * 300), True, True, True),
    # not on the lane: the ordinary path decides, and must give the same bytes
    "a query with a fragment": (request(*BASE, target=b"/v1/products?product_code=25k-xl#top"), False, True, True),
    "a query with non-ASCII bytes": (request(*BASE, target=b"/v1/products?product_code=caf\xc3\xa9"), False, True, True),
    "Connection naming a header": (request(*BASE, "Connection: X-Hop", "X-Hop: 1"), False, True, True),
    "Connection with two tokens": (request(*BASE, "Connection: keep-alive, X-Hop", "X-Hop: 1"), False, True, True),
    "Connection: close and a header named close": (request(*BASE, "Connection: close", "Close: 1"), False, True, True),
    "two Connection headers": (request(*BASE, "Connection: keep-alive", "Connection: close"), False, True, True),
    "a repeated header": (request(*BASE, "X-Extra: 1", "x-extra: 2"), False, True, True),
    # given back by LaneCall.start at the message's end (not ASCII): nothing may have been counted yet
    "a UTF-8 value": (request(*BASE, "X-Name: caf\u00e9"), False, True, True),
    "an invalid UTF-8 value": (request(*BASE, b"X-Name: caf\xe9"), False, True, True),
    "Expect on a GET": (request(*BASE, "Expect: 100-continue"), False, True, True),
    "missing X-Client-Id": (request("Content-Type: application/json"), False, True, True),
    "blank X-Client-Id": (request("Content-Type: application/json", "X-Client-Id: \t"), False, True, True),
    "wrong content type": (request("Content-Type: text/plain", "X-Client-Id: app-1"), False, True, True),
    "no content type": (request("X-Client-Id: app-1"), False, True, True),
    "HEAD": (request(*BASE, method=b"HEAD"), False, True, True),
    "POST": (request(*BASE, "Content-Length: 2", method=b"POST", body=b"{}"), False, True, True),
    # get_balance: another exact path, with upstream.headers and a fresh Date (upstream.date)
    "the balance (its own Date)": (request(*BASE, target=b"/v1/balance"), True, True, True),
    "the balance with the app's Date": (request(*BASE, "Date: Mon, 30 Nov 2026 00:00:00 GMT", target=b"/v1/balance"), False, True, True),
    "a dot segment": (request(*BASE, target=b"/v1/./products"), False, True, True),
}


@on_http11
@pytest.mark.parametrize("name", list(REQUESTS))
async def test_the_partner_and_the_app_get_the_same_bytes_on_both_paths(twins: Twins, name: str) -> None:
    req, taken, new_trace, new_id = REQUESTS[name]
    lane, plain = await twins()
    got, _ = await assert_same(lane, plain, req, [OK, OK], taken=taken, new_trace=new_trace, new_id=new_id)
    if name == "full":  # what parity alone would not show: the policy itself holds on the lane
        (sent,) = got.sent
        assert b"Cookie" not in sent and b"the-apps-own" not in sent and b"Host: 127.0.0.1:8080" not in sent
        assert f"Authorization: Bearer {TOKEN}\r\n".encode() in sent
        assert b"X-Request-Id: req-lane.1:a\r\n" in sent and b"tracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7\r\n" in sent
        assert b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-" in sent and TRACEPARENT.encode() not in sent
        assert b"X-App-Build: 7.1\tbeta\r\n" in sent and b"X-Trailer-Space: kept \r\n" in sent
        assert got.answer.startswith(b"HTTP/1.1 200 OK\r\nX-Request-Id: req-lane.1:a\r\nContent-Type: application/json\r\n")
        assert b"Set-Cookie" not in got.answer and b"X-Partner-Trace" not in got.answer and DATE in got.answer
    if name in ("http/1.0", "Connection: close", "http/2.0 text"):
        assert b"Connection: close\r\n" in got.answer
    if name in ("http/1.0 keep-alive", "Connection: keep-alive"):
        assert b"Connection: close\r\n" not in got.answer
    if name.startswith("Connection") or "keep-alive" in name:
        (sent,) = got.sent
        assert b"\r\nconnection:" not in sent.lower(), "hop-by-hop: never forwarded"


# Query strings on the product list (allow-list: product_code): all on the lane, the partner
# target built as the ordinary path builds it (yarl's parsing and quoting, the first of a
# repeated name, what is not allowed dropped).
QUERIES = [
    b"product_code=25k-xl", b"product_code=25k-xl&x=1", b"x=1", b"", b"&", b"product_code=",
    b"product_code", b"product_code=a&product_code=b", b"product_code=a+b%20c", b"product_code=%2F%3F%26%3D",
    b"product_code=%zz", b"PRODUCT_CODE=a", b"x=1;product_code=2", b"product_code=a%26x%3D1", b"product_code=%C3%A9",
    b"product_code=" + b"9" * 300,
]


@on_http11
@pytest.mark.parametrize("query", QUERIES, ids=[repr(q) for q in QUERIES])
async def test_query_strings_on_both_paths(twins: Twins, query: bytes) -> None:
    lane, plain = await twins()
    req = request(*BASE, target=b"/v1/products?" + query)
    for _ in range(2):  # twice: the second from the lane's query cache
        got, want = await assert_same(lane, plain, req, [OK], taken=True, new_trace=True, new_id=True)
    if query == b"product_code=25k-xl&x=1":
        assert got.sent[0].startswith(b"GET /v2/product-list?product_code=25k-xl HTTP/1.1\r\n")


@on_http11
async def test_a_query_on_a_route_without_an_allow_list_is_dropped_on_both_paths(twins: Twins, tmp_path: Path) -> None:
    routes = patched_routes(tmp_path, {UPSTREAM_LINE: UPSTREAM_LINE.replace(", query: [product_code]", "")})
    lane, plain = await twins(routes)
    got, _ = await assert_same(lane, plain, request(*BASE, target=b"/v1/products?product_code=1"), [OK], taken=True, new_trace=True, new_id=True)
    assert got.sent[0].startswith(b"GET /v2/product-list HTTP/1.1\r\n")


@on_http11
async def test_a_retried_query_request_is_sent_again_with_its_query(twins: Twins) -> None:
    """Handed on after a 5xx: the ordinary path's retry must send the same target."""
    lane, plain = await twins()
    got, _ = await assert_same(
        lane, plain, request(*BASE, target=b"/v1/products?product_code=25k-xl"), [answer(503), OK], taken=True, new_trace=True, new_id=True,
    )
    assert len(got.sent) == 2 and all(b"GET /v2/product-list?product_code=25k-xl HTTP/1.1\r\n" in sent for sent in got.sent)


BALANCE_LINES = re.compile(rb"Accept: application/json\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\nAccept-Encoding: identity\r\n")


@on_http11
async def test_a_route_that_sends_a_date_sends_it_on_the_lane_and_again_on_a_retry(twins: Twins) -> None:
    """get_balance sends a fresh Date (upstream.date) between its own headers and Accept-Encoding,
    as upstream_headers puts it; handed on after a 5xx, the retry carries the Date the lane sent."""
    lane, plain = await twins()
    assert b"/v1/balance" in lane.runtime().lanes
    got, _ = await assert_same(lane, plain, request(*BASE, target=b"/v1/balance"), [jsonapi(500, "S00"), OK], taken=True, new_trace=True, new_id=True)
    assert len(got.sent) == 2 and all(BALANCE_LINES.search(sent) for sent in got.sent), got.sent
    first, retry = (_PARTNER_DATE.findall(sent) for sent in got.sent)
    assert len(first) == 1 and first == retry, "the retry re-sends the Date of the request as the lane sent it"
    got, _ = await assert_same(lane, plain, request(*BASE, "date: x", target=b"/v1/balance"), [OK], taken=False, new_trace=True, new_id=True)
    (sent,) = got.sent
    assert b"date: x" not in sent.lower() and b"X-Client-Id: app-1\r\nDate: " in sent, "the app's Date is replaced, in place"


ORDER = b"/v1/orders/ord-1.a_b~c"
ORDER_BODY = b'{"data":{"type":"order","id":"ord-1.a_b~c","attributes":{"status":"Success","serial_number":"1234"}}}'


def signed(status: int = 200, *lines: str | bytes, body: bytes = ORDER_BODY, signature: str | None = None) -> bytes:
    """An order-status answer signed by the sandbox's key, as the partner signs it."""
    sig = keys_for_tests().sandbox.signer.sign(body) if signature is None else signature
    return answer(status, "Content-Type: application/json", *lines, f"Signature: {sig}", body=body)


# order_status: a template path, upstream.date, and a verified 200 (pass_back: [Signature])
ORDERS = {
    # name: (partner answers, lane taken)
    "a signed 200": ([signed()], True),
    "a signed 200, the header in lower case": ([signed(200, "X-Other: 1").replace(b"Signature:", b"signature:")], True),
    "a 200 with a bad signature": ([signed(signature="AAAA" * 86 + "AA==")], True),
    "a 200 signed over another body": ([signed(signature=keys_for_tests().sandbox.signer.sign(b"{}"))], True),
    "a 200 without a signature": ([answer(200, "Content-Type: application/json", body=ORDER_BODY)], True),
    "a 200 with a non-ASCII signature": ([answer(200, "Content-Type: application/json", b"Signature: \xff\xfe", body=ORDER_BODY)], True),
    "a 404 (not signed)": ([jsonapi(404, "S02")], True),
    "a 500, retried, then a signed 200": ([jsonapi(500, "S00"), signed()], True),
}


@on_http11
@pytest.mark.parametrize("name", list(ORDERS))
async def test_order_status_on_both_paths(twins: Twins, name: str) -> None:
    """The lane verifies a 200 with the route's VerifyAnswer verifier and passes it, Signature
    header included; any 200 it cannot pass goes to the ordinary path, which refuses it with 502
    SignatureInvalid, counted and notified once."""
    answers, taken = ORDERS[name]
    lane, plain = await twins()
    got, _ = await assert_same(lane, plain, request(*BASE, target=ORDER), answers, taken=taken, new_trace=True, new_id=True)
    assert all(sent.startswith(b"GET /v2/order/ord-1.a_b~c HTTP/1.1\r\n") and _PARTNER_DATE.search(sent) for sent in got.sent)
    status = int(got.answer.split(b" ", 2)[1])
    body = got.answer.split(b"\r\n\r\n", 1)[1]
    if name.startswith(("a signed 200", "a 500")):
        assert status == 200 and b"\r\nsignature: " in got.answer.lower() and body == ORDER_BODY, got.answer
    elif name.startswith("a 200"):
        assert status == 502 and json.loads(body)["error"]["type"] == "SignatureInvalid", got.answer


@on_http11
async def test_order_status_requests_the_lane_leaves_to_the_ordinary_path(twins: Twins) -> None:
    """A query string, another path under the template, an escape, a parameter that is not one
    clean segment: each decided by the ordinary path, with the same bytes."""
    lane, plain = await twins()
    for target, status in ((ORDER + b"?x=1", 200), (b"/v1/orders/%61bc", 200), (b"/v1/orders/a/b", 400), (b"/v1/orders/..", 400)):
        got, _ = await assert_same(lane, plain, request(*BASE, target=target), [signed()], taken=False, new_trace=True, new_id=True)
        assert int(got.answer.split(b" ", 2)[1]) == status, (target, got.answer)


# Connection values: (value, lane taken). The lane takes the two that name no forwarded header.
CONNECTION_VALUES = [
    (b"keep-alive", True), (b"KEEP-ALIVE", True), (b"\tclose", True), (b"close \t", True),
    (b"keep-alive,", False), (b",close", False), (b"close, keep-alive", False), (b"upgrade", False),
    (b"te", False), (b"keep-alive\x0b", False), (b"Keep-Alive\xa0", False), (b"", False), (b"keep alive", False),
]


@on_http11
@pytest.mark.parametrize(("value", "taken"), CONNECTION_VALUES, ids=[repr(v) for v, _ in CONNECTION_VALUES])
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_connection_values_on_both_paths(twins: Twins, value: bytes, taken: bool, version: bytes) -> None:
    lane, plain = await twins()
    await assert_same(lane, plain, request(*BASE, b"Connection: " + value, version=version), [OK], taken=taken, new_trace=True, new_id=True)


@on_http11
async def test_a_header_the_route_sets_leaves_the_lane_and_is_replaced_in_place(twins: Twins, tmp_path: Path) -> None:
    lane, plain = await twins(routes_with(tmp_path, "headers: {Accept: application/json}"))
    assert PRODUCTS in lane.runtime().lanes, "a route setting an ordinary header keeps its lane"
    got, _ = await assert_same(lane, plain, request(*BASE), [OK], taken=True, new_trace=True, new_id=True)
    assert b"Accept: application/json\r\nAccept-Encoding: identity\r\n" in got.sent[0]
    got, _ = await assert_same(lane, plain, request("Accept: text/html", *BASE), [OK], taken=False, new_trace=True, new_id=True)
    assert b"text/html" not in got.sent[0] and b"Accept: application/json\r\n" in got.sent[0]


@on_http11
@pytest.mark.parametrize(
    "headers",
    [
        "{Accept-Encoding: gzip}",           # upstream_headers replaces it with identity
        "{Authorization: Basic c3RhdGlj}",   # attach replaces it with the token
        "{X-Request-Id: fixed}",             # upstream_headers replaces it with the request's id
        "{traceparent: 00-f-f-01}",          # ... and with the request's traceparent
        "{Accept: a, accept: b}",            # the second replaces the first (one name, any case)
    ],
)
async def test_route_headers_that_the_proxy_also_sets_are_sent_once_as_on_the_ordinary_path(twins: Twins, tmp_path: Path, headers: str) -> None:
    """upstream.headers may name a header the proxy itself sets afterwards, or one name twice in
    another case; ``upstream_headers`` and ``attach`` *replace* (one line, the last value), so the
    partner never sees two. The route keeps a lane (``LaneRoute.of`` does not look at such names),
    so the lane's one-join request must give the same bytes."""
    lane, plain = await twins(routes_with(tmp_path, f"headers: {headers}"))
    await assert_same(lane, plain, request(*BASE), [OK], taken=PRODUCTS in lane.runtime().lanes, new_trace=True, new_id=True)


# -- the partner's answer -------------------------------------------------------------------------------

ANSWERS = {
    # name: (partner answers in order, extra upstream keys for the route, cluster timeout)
    "200": ([OK], "", ""),
    "201": ([answer(201, "Content-Type: application/json")], "", ""),
    "202, no body": ([answer(202, "Content-Type: application/json", body=b"")], "", ""),
    "200 without a content type": ([answer(200, "Server: x")], "", ""),
    "200 with an empty content type first": ([answer(200, "Content-Type:", "Content-Type: text/plain")], "", ""),
    "200 with two content types": ([answer(200, "Content-Type: a/b", "content-type: c/d")], "", ""),
    "200 with HTAB in the content type": ([answer(200, "Content-Type: application/json;\tcharset=utf-8")], "", ""),
    "200 with a non-ASCII content type": ([answer(200, b"Content-Type: text/caf\xe9")], "", ""),
    "200 chunked": ([answer(200, "Content-Type: application/json", chunked=True)], "", ""),
    "200 passing headers back": (
        [answer(200, "x-partner-trace: t-1", "Content-Type: application/json", "X-PARTNER-TRACE: t-2", "Cache-Control: no-store", "Set-Cookie: s=1")],
        "pass_back: [X-Partner-Trace, cache-control]", "",
    ),
    "200 passing back an empty value": ([answer(200, "X-Partner-Trace:", "Content-Type: a/b")], "pass_back: [X-Partner-Trace]", ""),
    "200 passing back a non-ASCII value": ([answer(200, b"X-Partner-Trace: \xff\xfe", "Content-Type: a/b")], "pass_back: [X-Partner-Trace]", ""),
    "200 passing back HTAB": ([answer(200, "X-Partner-Trace: a\tb", "Content-Type: a/b")], "pass_back: [X-Partner-Trace]", ""),
    "204": ([answer(204, body=b"")], "", ""),
    "400 S03 (mapped)": ([jsonapi(400, "S03")], "", ""),
    "400 X42 (the table's default)": ([jsonapi(400, "X42")], "", ""),
    "404 html": ([html(404)], "", ""),
    "429 html": ([html(429)], "", ""),
    "500 S00, retried, then 200": ([jsonapi(500, "S00"), OK], "", ""),
    "503 S01, retried, 503 again": ([jsonapi(503, "S01"), jsonapi(503, "S01")], "", ""),
    "500 garbage twice": ([answer(500, "Content-Type: application/json", body=b"{not json"), answer(500, "Content-Type: application/json", body=b"<")], "", ""),
    "403 P08: token renewed, then 200": ([jsonapi(403, "P08"), OK], "", ""),
    "401: token renewed, 401 again": ([html(401), html(401)], "", ""),
    "no answer: timeout": ([], "", "150ms"),
}


@on_http11
@pytest.mark.parametrize("name", list(ANSWERS))
async def test_every_partner_answer_ends_the_same_through_the_lane(twins: Twins, aiohttp_server: Any, tmp_path: Path, name: str) -> None:
    """The request is sent by the lane each time (``lane_requests``); a 200-202 with clean headers is
    answered by the lane itself, anything else is handed on to the forwarder's, ``FastCall``'s and
    the listener's code: retries, token renewal, errors.yaml, the envelope, the record."""
    answers, upstream, timeout = ANSWERS[name]
    routes = routes_with(tmp_path, upstream, timeout) if upstream or timeout else None
    url = base(await aiohttp_server(sandbox_app())) if "renewed" in name else NOWHERE  # a real token endpoint
    lane, plain = await twins(routes, url)
    got, _ = await assert_same(lane, plain, request(*FULL), answers, taken=True)
    if timeout:
        assert got.answer.startswith(b"HTTP/1.1 504 ") and b'"code":"UPSTREAM_TIMEOUT"' in got.answer
    if "renewed" in name:
        assert len(got.sent) == 2 and b"Bearer <fresh>" in masked(got.sent[1], new_trace=False, new_id=False)
        record = (await lane.records(1))[-1]
        assert record["token_retried"] is True and record["attempts"] == 2
    if "retried" in name:
        assert len(got.sent) == 2 and (await lane.records(1))[-1]["attempts"] == 2


@on_http11
async def test_a_request_that_finds_no_idle_connection_is_counted_as_on_the_ordinary_path(twins: Twins) -> None:
    """The lane gives a request back at its end when it cannot send it now (here: the pool has no
    idle connection, the common case under load; likewise a breaker that is not closed, a value
    that is not ASCII). Given back, it must not have been counted already: the ordinary path then
    counts the same things once more (its token lookup, its start)."""
    lane, plain = await twins()
    for side in (lane, plain):
        pool = side.runtime().clusters["tokopedia"].pool
        assert pool is not None
        pool._idle.clear()  # the ordinary path must connect (to NOWHERE: refused, retried, refused)
    await assert_same(lane, plain, request(*FULL), [], taken=False)


@on_http11
async def test_consecutive_lane_requests_reuse_the_connection_and_stay_equal(twins: Twins) -> None:
    """The pool hands the lane the connection's ``StrictAnswer`` itself, which the next request on
    that connection resets: five in a row (and an ordinary request between) must stay equal."""
    lane, plain = await twins()
    for i in range(5):
        req = request(*BASE, f"X-Request-Id: seq-{i}", "traceparent: " + TRACEPARENT)
        await assert_same(lane, plain, req, [answer(200, "Content-Type: application/json", body=b'{"n":%d}' % i)], taken=True)
        await assert_same(lane, plain, request(*BASE, "X-Extra: 1", "x-extra: 2"), [OK], taken=False, new_trace=True, new_id=True)
    assert lane.listener.lane_requests == 5 and lane.listener.callback_requests == 10


# =================================================================================================
# 2. End to end: the real h1 server, the sandbox partner on loopback
# =================================================================================================


@dataclass
class RawAnswer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


class _Collect:
    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.done: list[RawAnswer] = []
        self._current = RawAnswer(0, [], b"")

    def on_message_begin(self) -> None:
        self._current = RawAnswer(0, [], b"")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self._current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self.done.append(self._current)


async def raw_exchange(port: int, data: bytes, count: int = 1, timeout: float = 5.0) -> list[RawAnswer]:
    """``data`` (exact bytes, pipelined if several requests) on one connection; ``count`` answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    collect = _Collect()
    collect.parser = httptools.HttpResponseParser(collect)
    try:
        writer.write(data)
        while len(collect.done) < count:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            collect.parser.feed_data(chunk)
    finally:
        writer.close()
        await writer.wait_closed()
    return collect.done


def listener_of(rig: Rig) -> Listener:
    listener = getattr(rig.client.server, "listener", None)
    assert isinstance(listener, Listener)
    return listener


def port_of(rig: Rig) -> int:
    port = rig.client.server.port
    assert port is not None
    return port


def without_lane(rig: Rig) -> Rig:
    """The rig's listener never finds a lane: every request takes the ordinary path."""
    # the same runtime with no lanes (the listener reads its runtime through this getter; a compiled
    # Listener takes no replaced methods)
    without = dataclasses.replace(rig.state.current(), lanes={}, template_lanes={})
    listener_of(rig)._runtime = lambda: without
    return rig


async def new_rig(aiohttp_client: Any, sandbox: TestServer, routes: Path | None = None) -> tuple[Rig, io.StringIO]:
    stream = io.StringIO()
    return await make_rig(aiohttp_client, sandbox, loaded_config(base(sandbox), routes), log_stream=stream), stream


async def warm(rig: Rig) -> None:
    """The token into memory and a connection into the pool (the first request takes a task)."""
    (got,) = await raw_exchange(port_of(rig), request(*BASE))
    assert got.status == 200


E2E_BASE = (*BASE, "X-Request-Id: e2e-1", "traceparent: " + TRACEPARENT)


@on_http11
@on_h1
async def test_a_warm_get_of_the_product_list_takes_the_lane(aiohttp_client: Any, sandbox: TestServer) -> None:
    rig, stream = await new_rig(aiohttp_client, sandbox)
    listener = listener_of(rig)
    assert PRODUCTS in rig.state.current().lanes
    await warm(rig)
    assert (listener.lane_requests, listener.callback_requests, listener.task_requests) == (0, 0, 1), "cold: a task"
    (got,) = await raw_exchange(port_of(rig), request(*E2E_BASE, "Cookie: c=1", "Authorization: Bearer app"))
    assert got.status == 200 and json.loads(got.body)["data"]
    assert (listener.lane_requests, listener.callback_requests, listener.task_requests) == (1, 1, 1)
    assert got.header(b"X-Request-Id") == b"e2e-1" and got.header(b"Content-Type") == b"application/json; charset=utf-8"
    call = rig.partner.product_calls[-1]
    assert "Cookie" not in call.headers and call.headers["Authorization"] == rig.partner.product_calls[0].headers["Authorization"]
    assert call.headers["X-Request-Id"] == "e2e-1" and call.headers["traceparent"].startswith(TRACEPARENT[:36])
    record = (await partner_calls(stream, 2))[-1]
    assert record["request_id"] == "e2e-1" and record["token_source"] == "memory" and record["status"] == 200
    assert listener.inflight == 0


@on_http11
@on_h1
async def test_a_warm_order_status_takes_the_lane_and_a_bad_signature_is_counted_once(aiohttp_client: Any, sandbox: TestServer) -> None:
    """Against the sandbox, which signs its status answers (or, for these product codes, leaves the
    signature out or spoils it): a good one is passed with its Signature, a bad one is the ordinary
    path's 502, counted once in signature_failures_total."""
    rig, _ = await new_rig(aiohttp_client, sandbox)
    listener = listener_of(rig)
    for request_id, product in (("ln-ok", "25k-xl"), ("ln-missing", "sign-missing"), ("ln-bad", "sign-bad")):
        resp = await rig.client.post("/v1/orders", data=order(request_id, product_code=product), headers=JSON_HEADERS)
        assert resp.status == 200, await resp.text()
    await warm(rig)
    lanes = listener.lane_requests
    (ok,) = await raw_exchange(port_of(rig), request(*E2E_BASE, target=b"/v1/orders/ln-ok"))
    assert ok.status == 200 and keys_for_tests().sandbox.verifier.verify(ok.body, (ok.header(b"Signature") or b"").decode())
    assert listener.lane_requests == lanes + 1
    for request_id, reason in (("ln-missing", "missing"), ("ln-bad", "invalid")):
        (bad,) = await raw_exchange(port_of(rig), request(*E2E_BASE, target=b"/v1/orders/" + request_id.encode()))
        assert bad.status == 502 and bad.header(b"Signature") is None
        assert json.loads(bad.body)["error"]["code"] == "PARTNER_SIGNATURE_INVALID"
        assert f'partner_proxy_signature_failures_total{{reason="{reason}",route="order_status"}} 1.0' in await rig.metrics()
    assert listener.lane_requests == lanes + 3 and listener.inflight == 0


def broken_counter(rig: Rig, monkeypatch: pytest.MonkeyPatch, then: Callable[[], None]) -> None:
    """Call ``then`` where the lane counts get_products' 200 (RequestMetrics is compiled: it takes
    no patched methods, so the one counter it bound for this route and status is watched)."""
    lane = listener_of(rig).lane(b"/v1/products")
    assert lane is not None
    target = lane.metrics._bound["get_products"][200][0]
    inc = proxy.metrics.HotCounter.inc

    def watched(self: Any, n: float = 1) -> None:
        if self is target:
            then()
        inc(self, n)

    monkeypatch.setattr(proxy.metrics.HotCounter, "inc", watched)


@on_http11
@on_h1
async def test_the_lane_writes_the_answer_before_its_metrics_and_log_line(
    aiohttp_client: Any, sandbox: TestServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The accounting runs after the answer has left the process (``Cork.after``): when the
    request counter is updated, the app's socket already holds the whole answer."""
    rig, stream = await new_rig(aiohttp_client, sandbox)
    await warm(rig)
    client = socket.create_connection(("127.0.0.1", port_of(rig)))
    client.setblocking(False)
    seen: list[bytes] = []

    def peek() -> None:
        try:
            seen.append(client.recv(65536, socket.MSG_PEEK))
        except BlockingIOError:
            seen.append(b"")

    broken_counter(rig, monkeypatch, peek)
    try:
        client.sendall(request(*E2E_BASE))
        deadline = asyncio.get_running_loop().time() + 5
        while not seen and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
    finally:
        client.close()
    assert listener_of(rig).lane_requests == 1
    assert len(seen) == 1 and seen[0].startswith(b"HTTP/1.1 200 OK\r\n"), seen
    head, _, body = seen[0].partition(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head + b"\r\n")
    assert length and len(body) == int(length.group(1)) and json.loads(body)["data"], "the whole answer, body included, was written first"
    record = (await partner_calls(stream, 2))[-1]
    assert record["request_id"] == "e2e-1" and record["status"] == 200, "and the log line still follows"


@on_http11
@on_h1
async def test_a_bug_in_the_lanes_accounting_is_logged_and_the_partners_answer_still_goes_out(
    aiohttp_client: Any, sandbox: TestServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The answer is written before the metrics and the log line, so a bug there cannot turn the
    partner's 200 into a 500: it is logged with the route and the request id, and the drain does
    not wait for the request."""
    rig, _ = await new_rig(aiohttp_client, sandbox)
    listener = listener_of(rig)
    await warm(rig)

    def bug() -> None:
        raise RuntimeError("an observer bug")

    broken_counter(rig, monkeypatch, bug)
    (got,) = await raw_exchange(port_of(rig), request(*E2E_BASE))
    assert listener.lane_requests == 1
    assert got.status == 200 and json.loads(got.body)["data"] and got.header(b"X-Request-Id") == b"e2e-1"
    assert listener.inflight == 0
    assert "unhandled error accounting route get_products (request e2e-1); the answer stands" in caplog.text
    assert "an observer bug" in caplog.text
    monkeypatch.undo()
    (again,) = await raw_exchange(port_of(rig), request(*E2E_BASE))
    assert again.status == 200 and listener.lane_requests == 2, "the connection pool and the lane still work"


# name: (request bytes, expected status, routes patch for get_products' upstream block)
NOT_ON_THE_LANE = {
    "a query with a fragment": (request(*E2E_BASE, target=b"/v1/products?product_code=25k-xl#top"), 200, ""),
    "Connection naming a header": (request(*E2E_BASE, "Connection: X-Hop", "X-Hop: 1"), 200, ""),
    "a repeated header": (request(*E2E_BASE, "X-Extra: 1", "X-Extra: 2"), 200, ""),
    "a header the route sets": (request(*E2E_BASE, "Accept: text/html"), 200, "headers: {Accept: application/json}"),
    "missing X-Client-Id": (request("Content-Type: application/json", "X-Request-Id: e2e-1"), 400, ""),
    "wrong content type": (request("Content-Type: text/plain", "X-Client-Id: a", "X-Request-Id: e2e-1"), 415, ""),
    "POST": (request(*E2E_BASE, "Content-Length: 2", method=b"POST", body=b"{}"), 405, ""),
    "a UTF-8 value": (request(*E2E_BASE, "X-Name: caf\u00e9"), 200, ""),
}


@on_http11
@on_h1
@pytest.mark.parametrize("name", list(NOT_ON_THE_LANE))
async def test_requests_the_lane_leaves_to_the_ordinary_path(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path, name: str) -> None:
    req, status, upstream = NOT_ON_THE_LANE[name]
    rig, _ = await new_rig(aiohttp_client, sandbox, routes_with(tmp_path, upstream) if upstream else None)
    listener = listener_of(rig)
    await warm(rig)
    calls = len(rig.partner.product_calls)
    (got,) = await raw_exchange(port_of(rig), req)
    assert got.status == status, got
    assert listener.lane_requests == 0 and listener.callback_requests == 1, "the ordinary callback path"
    assert got.header(b"X-Request-Id") == b"e2e-1"
    if status != 200:
        assert json.loads(got.body)["error"]["request_id"] == "e2e-1"
        assert len(rig.partner.product_calls) == calls, "a failed check never reaches the partner"
    if upstream:
        assert rig.partner.product_calls[-1].headers.getall("Accept") == ["application/json"]
    # the next plain request is on the lane again
    (again,) = await raw_exchange(port_of(rig), request(*E2E_BASE))
    assert again.status == 200 and listener.lane_requests == 1


@on_http11
@on_h1
async def test_the_cold_first_request_is_not_on_the_lane(aiohttp_client: Any, sandbox: TestServer) -> None:
    rig, _ = await new_rig(aiohttp_client, sandbox)
    listener = listener_of(rig)
    (got,) = await raw_exchange(port_of(rig), request(*E2E_BASE))
    assert got.status == 200
    assert (listener.lane_requests, listener.callback_requests, listener.task_requests) == (0, 0, 1), "no token in memory: a task"


@on_http11
@on_h1
async def test_a_request_pipelined_behind_a_lane_request_is_answered_after_it(aiohttp_client: Any, sandbox: TestServer) -> None:
    rig, _ = await new_rig(aiohttp_client, sandbox)
    listener = listener_of(rig)
    await warm(rig)
    first = request(*BASE, "X-Request-Id: first", "X-Sandbox-Fault: delay-50")  # slow: the second waits behind it
    second = request(*BASE, "X-Request-Id: second")
    third = request(*BASE, "X-Request-Id: third", "X-Sandbox-Fault: error-S03")
    got = await raw_exchange(port_of(rig), first + second + third, count=3)
    assert [a.header(b"X-Request-Id") for a in got] == [b"first", b"second", b"third"]
    assert [a.status for a in got] == [200, 200, 503], "S03 is 503 PRODUCT_CLOSED by errors.yaml"
    assert listener.lane_requests == 1, "only the first: the others were parsed while it was in flight"
    assert listener.callback_requests == 3 and listener.inflight == 0, "each started when the one before had given the connection back"
    (after,) = await raw_exchange(port_of(rig), request(*BASE, "X-Request-Id: after"))
    assert after.status == 200 and listener.lane_requests == 2


# Partner behaviours (sandbox faults, ``tests/test_fastpath.py``'s list) and how they end.
FAULTS = ["error-S03", "error-S00", "error-S01", "status-429", "status-401", "garbage", "reset", "delay-30", "error-X42"]


def comparable(answer: RawAnswer) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return answer.status, [(n, v) for n, v in answer.headers if n.lower() != b"date"], answer.body


SAME_FIELDS = (
    "request_id", "route", "client_id", "cluster", "method", "upstream_path", "attempts", "status", "partner_status",
    "partner_code", "error_type", "token_source", "token_retried", "breaker_state",
)


async def fault_outcome(rig: Rig, stream: io.StringIO, fault: str) -> tuple[tuple[int, list[tuple[bytes, bytes]], bytes], int, int, dict[str, Any]]:
    await warm(rig)
    calls, tokens = len(rig.partner.product_calls), rig.partner.token_requests
    (got,) = await raw_exchange(port_of(rig), request(*E2E_BASE, f"X-Sandbox-Fault: {fault}"))
    record = (await partner_calls(stream, 2))[-1]
    assert record["traceparent"].startswith(TRACEPARENT[:36])
    return comparable(got), len(rig.partner.product_calls) - calls, rig.partner.token_requests - tokens, {k: record[k] for k in SAME_FIELDS}


@on_http11
@on_h1
@pytest.mark.parametrize("fault", FAULTS)
async def test_a_partner_fault_ends_the_same_through_the_lane(aiohttp_client: Any, sandbox: TestServer, fault: str) -> None:
    lane_rig, lane_log = await new_rig(aiohttp_client, sandbox)
    got = await fault_outcome(lane_rig, lane_log, fault)
    assert listener_of(lane_rig).lane_requests == 1, "the faulty request was sent by the lane"
    plain_rig, plain_log = await new_rig(aiohttp_client, sandbox)
    want = await fault_outcome(without_lane(plain_rig), plain_log, fault)
    assert listener_of(plain_rig).lane_requests == 0 and listener_of(plain_rig).callback_requests == 1
    assert got[0] == want[0], "the same status, headers (but Date) and body"
    assert got[1:3] == want[1:3], "as many partner calls and token fetches"
    assert got[3] == want[3], "the same partner_call record"
    assert listener_of(lane_rig).inflight == 0


@on_http11
@on_h1
async def test_a_hanging_partner_times_out_through_the_lane_as_on_the_ordinary_path(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    routes = routes_with(tmp_path, timeout="300ms")
    outcomes = []
    for lanes in (True, False):
        rig, stream = await new_rig(aiohttp_client, sandbox, routes)
        outcomes.append(await fault_outcome(rig if lanes else without_lane(rig), stream, "hang"))
        assert listener_of(rig).lane_requests == (1 if lanes else 0)
        (after,) = await raw_exchange(port_of(rig), request(*BASE))  # the hung connection is not reused
        assert after.status == 200
    got, want = outcomes
    assert got[0][0] == 504 and b'"code":"UPSTREAM_TIMEOUT"' in got[0][2]
    assert got == want


@on_http11
@on_h1
async def test_a_revoked_token_is_renewed_through_the_lane_as_on_the_ordinary_path(aiohttp_client: Any, sandbox: TestServer) -> None:
    outcomes = []
    for lanes in (True, False):
        rig, stream = await new_rig(aiohttp_client, sandbox)
        if not lanes:
            without_lane(rig)
        await warm(rig)
        before, tokens = len(rig.partner.product_calls), rig.partner.token_requests
        async with aiohttp.ClientSession() as session:  # every issued token becomes unknown: 403 P08
            async with session.post(str(rig.sandbox.make_url("/_sandbox/revoke"))) as r:
                assert r.status == 200
        (got,) = await raw_exchange(port_of(rig), request(*E2E_BASE))
        assert got.status == 200
        record = (await partner_calls(stream, 2))[-1]
        assert record["token_retried"] is True and record["attempts"] == 2
        seen = [c.headers["Authorization"] for c in rig.partner.product_calls[before - 1:]]
        assert seen[0] == seen[1] != seen[2], "the rejected token once, then a fresh one"
        outcomes.append((comparable(got), len(rig.partner.product_calls) - before, rig.partner.token_requests - tokens, {k: record[k] for k in SAME_FIELDS}))
        assert listener_of(rig).lane_requests == (1 if lanes else 0)
    assert outcomes[0] == outcomes[1]


@on_http11
@on_h1
async def test_a_reload_that_redacts_a_record_field_takes_the_route_off_the_lane(
    aiohttp_client: Any, sandbox: TestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in sandbox_env(base(sandbox)).items():  # a reload reads the process env
        monkeypatch.setenv(name, value)
    rig, stream = await new_rig(aiohttp_client, sandbox)
    listener = listener_of(rig)
    await warm(rig)
    assert (await raw_exchange(port_of(rig), request(*E2E_BASE)))[0].status == 200
    assert listener.lane_requests == 1
    errors = str(rig.state.loaded.errors_path)
    redacting = patched_routes(tmp_path, {"drain_timeout: 5s": "drain_timeout: 5s\nlog: {redact_fields: [client_id]}"})
    assert await rig.state.reload(str(redacting), errors)
    assert rig.state.current().lanes == {}, "a policy that scrubs a partner_call field: no lane"
    assert (await raw_exchange(port_of(rig), request(*E2E_BASE)))[0].status == 200
    assert listener.lane_requests == 1 and listener.callback_requests == 2
    assert (await partner_calls(stream, 3))[-1]["client_id"] == "[redacted]"
    shipped = patched_routes(tmp_path, {})  # the shipped file again
    assert await rig.state.reload(str(shipped), errors)
    assert PRODUCTS in rig.state.current().lanes
    assert (await raw_exchange(port_of(rig), request(*E2E_BASE)))[0].status == 200
    assert listener.lane_requests == 2
    assert (await partner_calls(stream, 4))[-1]["client_id"] == "app-1"


# =================================================================================================
# 3. Unit agreement: each copy on bytes against its original
# =================================================================================================

UNIT = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# -- answer_lines vs answer_headers ---------------------------------------------------------------------

_ANSWER_NAMES = [
    b"Content-Type", b"content-type", b"CONTENT-TYPE", b"X-Partner-Trace", b"x-partner-trace", b"X-PARTNER-TRACE",
    b"Signature", b"signature", b"Cache-Control", b"Server", b"Set-Cookie", b"X-Request-Id", b"x-other",
]
_NICE_VALUES = [b"", b"application/json", b"text/html; charset=utf-8", b"a\tb", b" lead", b"trail ", b"\t", b"v=1,w=2"]
answer_values = st.one_of(
    st.sampled_from(_NICE_VALUES),
    st.binary(max_size=8),  # every byte: controls, DEL, obs-text
    st.lists(st.sampled_from([b"a", b" ", b"\t", b"\x00", b"\x0b", b"\x1f", b"\x7f", b"\x80", b"\xe9", b"\xff", b"\r", b"\n"]), max_size=5).map(b"".join),
)
answer_header_lists = st.lists(st.tuples(st.sampled_from(_ANSWER_NAMES), answer_values), max_size=7)
pass_backs = st.frozensets(st.sampled_from([b"x-partner-trace", b"signature", b"cache-control", b"server"]))


@UNIT
@given(headers=answer_header_lists, pass_back=pass_backs, request_id=st.from_regex(r"\A[A-Za-z0-9._:\-]{1,40}\Z"), body=st.binary(max_size=40))
@example(headers=[(b"Content-Type", b""), (b"content-type", b"\x01")], pass_back=frozenset(), request_id="r", body=b"")
@example(headers=[(b"Content-Type", b"a"), (b"content-type", b"\x01")], pass_back=frozenset(), request_id="r", body=b"")
@example(headers=[(b"X-Partner-Trace", b"\xe9")], pass_back=frozenset({b"x-partner-trace"}), request_id="r", body=b"")
@example(headers=[(b"Signature", b"a\x7fb")], pass_back=frozenset({b"signature"}), request_id="r", body=b"")
def test_answer_lines_agrees_with_answer_headers(headers: list[tuple[bytes, bytes]], pass_back: frozenset[bytes], request_id: str, body: bytes) -> None:
    decoded = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]  # StrictAnswer.decoded_headers
    text_pass_back = frozenset(n.decode("ascii") for n in pass_back)
    lines = answer_lines(headers, pass_back)
    try:
        content_type, passed = answer_headers(decoded, text_pass_back)
    except BadHeaderValue:
        assert lines is None, "answer_headers refuses a value: the lane must hand the answer on"
        return
    if lines is None:  # allowed only for a non-ASCII value answer_headers would have taken
        looked_at = [v for (n, v), (dn, _) in zip(headers, decoded) if dn.lower() in text_pass_back]
        firsts = [v for n, v in headers if n.lower() == b"content-type"]
        first_ct = next((v for v in firsts if v), firsts[-1] if firsts else b"")
        assert not all(v.isascii() for v in [*looked_at, first_ct]), f"None without a reason: {headers!r}"
        return
    raw_type, raw_lines = lines
    assert raw_type.decode("latin-1") == content_type
    assert raw_lines == "".join(f"{n}: {v}\r\n" for n, v in passed).encode("latin-1")
    for close in (False, True):  # and the app's answer built from either is the same
        reply = Reply(200, downstream_headers(request_id, content_type, passed), body)
        assert encode_passed(200, raw_lines, request_id, raw_type, body, DATE, close) == encode_reply(reply, DATE, close, False)


# -- accepts_raw vs check ------------------------------------------------------------------------------

_REQUEST_NAMES = [b"content-type", b"x-client-id", b"x-tenant", b"x-app", b"x-other"]
_CONTENT_TYPES = [
    b"application/json", b"Application/JSON", b"application/json; charset=utf-8", b"application/json ;x", b"application/jsonx",
    b"text/plain", b" application/json", b"application/json\t", b"", b"application/json\x1c", b";application/json",
]
validators = st.builds(
    lambda methods, ct, headers: ValidateRequest(tuple(methods), RequireConfig(content_type=ct, headers=tuple(headers))),
    st.lists(st.sampled_from(["GET", "POST", "HEAD", "DELETE"]), min_size=1, max_size=3, unique=True),
    st.sampled_from([None, "application/json", "Application/JSON", "text/plain"]),
    st.lists(st.sampled_from(["X-Client-Id", "X-Tenant", "x-app", "X-Caf\u00e9"]), max_size=3, unique=True),
)
methods = st.sampled_from(["GET", "POST", "HEAD", "PUT"])


def _checks(validate: ValidateRequest, method: str, seen: dict[bytes, bytes]) -> bool:
    """``check`` on the request as H1Protocol decodes it for the ordinary path."""
    headers = CIMultiDictProxy(CIMultiDict((n.decode("ascii"), v.decode("utf-8", "surrogateescape")) for n, v in seen.items()))
    try:
        validate.check(SimpleNamespace(method=method, downstream=SimpleNamespace(headers=headers)))  # type: ignore[arg-type]
    except Exception:
        return False
    return True


def _parsed(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes] | None:
    """The headers as llhttp hands them to ``LaneRoute.prepare`` (None: llhttp refuses the head, or
    a name repeats, which prepare refuses)."""
    got: list[tuple[bytes, bytes]] = []
    parser = httptools.HttpRequestParser(SimpleNamespace(on_header=lambda n, v: got.append((n, v))))
    try:
        parser.feed_data(b"GET / HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n")
    except httptools.HttpParserError:
        return None
    seen = {n.lower(): v for n, v in got}
    return seen if len(seen) == len(got) else None


request_values = st.one_of(
    st.sampled_from(_CONTENT_TYPES),
    st.lists(st.sampled_from([b"a", b"Z", b" ", b"\t", b"\x0b", b"\x0c", b"\x1c", b"\x1f", b"\x85", b"\xa0", b"\xc2", b"\xe9", b";"]), max_size=4).map(b"".join),
    st.binary(max_size=6),
)
request_headers = st.dictionaries(st.sampled_from(_REQUEST_NAMES), request_values, max_size=5)


@UNIT
@given(validate=validators, method=methods, headers=request_headers)
def test_accepts_raw_is_sound_on_what_llhttp_delivers(validate: ValidateRequest, method: str, headers: dict[bytes, bytes]) -> None:
    """On the values ``prepare`` can get (a head llhttp parsed), True implies ``check`` passes."""
    seen = _parsed(list(headers.items()))
    if seen is None:
        return
    if validate.accepts_raw(method, seen):
        assert _checks(validate, method, seen), f"accepts_raw said True, check refuses {seen!r}"


@UNIT
@given(validate=validators, method=methods, headers=request_headers)
@example(
    validate=ValidateRequest(("GET",), RequireConfig(content_type="application/json", headers=("X-Client-Id",))),
    method="GET", headers={b"content-type": b"application/json", b"x-client-id": b"\x1c"},
)
def test_accepts_raw_is_sound_on_any_bytes(validate: ValidateRequest, method: str, headers: dict[bytes, bytes]) -> None:
    """``accepts_raw``'s own contract, whatever the parser: True only when ``check`` passes.
    ``check`` strips with ``str.strip`` (which also strips U+001C-U+001F), ``accepts_raw`` with
    ``bytes.strip`` (which does not): a value of only such characters passes one and not the other."""
    if validate.accepts_raw(method, headers):
        assert _checks(validate, method, headers), f"accepts_raw said True, check refuses {headers!r}"


# -- SuccessLine vs AccessLog.on_finish ----------------------------------------------------------------


_client_ids = st.one_of(
    st.none(),  # no X-Client-Id header at all
    st.sampled_from(["", "app-1", 'a"b', "a\\b", "\u00e9\u65e5\U0001f600", "c" * 128, "c" * 129, "d" * 300, "\x00\x1f\x7f", "</script>"]),
    st.text(max_size=200),
)
_names = st.one_of(st.sampled_from(["get_products", 'we"ird\\name', "\u00fcber", ""]), st.text(max_size=20))


@settings(UNIT, max_examples=300)
@given(
    route_name=_names, cluster=_names, upstream_path=_names,
    request_id=st.from_regex(r"\A[A-Za-z0-9._:\-]{1,128}\Z"),
    traceparent=st.from_regex(r"\A00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z"),
    client_id=_client_ids,
    status=st.integers(200, 202),
    seconds=st.one_of(st.floats(0, 1e6, allow_nan=False), st.floats(0, 0.01), st.sampled_from([0.0, 0.000004999, 0.005, 1e13, 123.456789])),
    token_source=st.sampled_from(["memory", "redis", "fetch", None]),
    breaker_state=st.sampled_from(["closed", "half_open", "open", None]),
    now=st.sampled_from(["2026-12-01T09:00:00.123Z", "1970-01-01T00:00:00.000Z"]),
)
def test_success_line_is_on_finish_byte_for_byte(
    route_name: str, cluster: str, upstream_path: str, request_id: str, traceparent: str, client_id: str | None,
    status: int, seconds: float, token_source: str | None, breaker_state: str | None, now: str,
) -> None:
    route: Any = SimpleNamespace(name=route_name, cluster=cluster, upstream_path=upstream_path)
    writer, lines = frozen_log(now)
    access = AccessLog(writer, LogPolicy.of())
    assert access.plain
    headers = CIMultiDict({"X-Client-Id": client_id} if client_id is not None else {})
    ex = Exchange(SimpleNamespace(headers=CIMultiDictProxy(headers)), "GET", request_id, "en", traceparent, 0.0, CIMultiDict())  # type: ignore[arg-type]
    ex.attempts = 1
    ex.partner_status = status
    ex.token_source = token_source
    ex.breaker_state = breaker_state
    saved = proxy.accesslog.perf_counter
    proxy.accesslog.perf_counter = lambda: seconds  # type: ignore[assignment]  # on_finish: perf_counter() - ex.started
    try:
        access.on_finish(ex, route, status, None)
    finally:
        proxy.accesslog.perf_counter = saved
    line = access.success_line(route, "GET")
    for _ in range(2):  # twice: the second time from the line's caches
        line.write(request_id, traceparent, client_id if client_id is not None else "", status, seconds, token_source, breaker_state)
    expected, *written = lines()
    assert written == [expected, expected]
    json.loads(expected)


# -- encode_passed vs encode_reply ---------------------------------------------------------------------

_TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_passed_names = st.text(_TCHAR, min_size=1, max_size=12).filter(lambda n: n.lower() not in ("content-type", "x-request-id"))
_ascii_values = st.text("".join(map(chr, range(0x20, 0x7F))) + "\t", max_size=20)


@UNIT
@given(
    status=st.integers(100, 999),
    passed=st.lists(st.tuples(st.one_of(_passed_names, st.sampled_from(["Signature", "signature", "X-Trace"])), _ascii_values), max_size=5),
    request_id=st.from_regex(r"\A[A-Za-z0-9._:\-]{1,128}\Z"),
    content_type=_ascii_values,
    body=st.binary(max_size=64),
    date=st.sampled_from([DATE, b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"]),
    close=st.booleans(),
)
def test_encode_passed_is_encode_reply(status: int, passed: list[tuple[str, str]], request_id: str, content_type: str, body: bytes, date: bytes, close: bool) -> None:
    lines = "".join(f"{n}: {v}\r\n" for n, v in passed).encode("ascii")
    reply = Reply(status, downstream_headers(request_id, content_type, tuple(passed)), body)
    assert encode_passed(status, lines, request_id, content_type.encode("ascii"), body, date, close) == encode_reply(reply, date, close, False)


# =================================================================================================
# 4. Which routes get a lane: compiled per runtime, gone when the policy or tracing needs the chain
# =================================================================================================


def log_block(tmp_path: Path, block: str) -> Path:
    return patched_routes(tmp_path, {"drain_timeout: 5s": f"drain_timeout: 5s\n{block}"})


async def compiled(resources: Resources, routes: Path | None) -> Runtime:
    staged = Staged()
    runtime = compile_runtime(loaded_config(NOWHERE, routes), resources, staged)
    resources.commit(staged)
    return runtime


@on_http11
@pytest.mark.parametrize(
    "block, lane, line",
    [
        ("", True, True),
        ("log: {redact_fields: [client_id]}", False, False),       # scrubs a partner_call field
        ("log: {redact_fields: [Latency_MS]}", False, False),      # any case
        ("log: {redact_fields: [card_number]}", True, True),       # a field partner_call has not
        ("log: {capture_bodies: true}", False, False),
        ("log: {level: debug}", False, False),                     # partner_call_start records
        ("log: {level: warning}", True, False),                    # a lane, writing no record
    ],
)
async def test_the_log_policy_decides_whether_the_route_has_a_lane(tmp_path: Path, block: str, lane: bool, line: bool) -> None:
    resources = Resources(Metrics(), env={})
    try:
        runtime = await compiled(resources, log_block(tmp_path, block) if block else None)
        if not lane:
            assert runtime.lanes == {}
            return
        assert set(runtime.lanes) == {PRODUCTS, b"/v1/balance"}, "the GETs of exact paths"
        assert set(runtime.template_lanes) == {"order_status"}, "and the GET of a template path"
        found = runtime.lanes[PRODUCTS]
        assert isinstance(found, LaneRoute) and found.route.name == "get_products"
        assert (found.line is not None) == line
    finally:
        await resources.close()


@on_http11
async def test_a_reload_that_turns_tracing_on_removes_the_lane(tmp_path: Path) -> None:
    resources = Resources(Metrics(), env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    try:
        off = await compiled(resources, log_block(tmp_path, "tracing: {enabled: false}"))
        assert not off.tracing.enabled and PRODUCTS in off.lanes
        on = await compiled(resources, None)  # the same Resources: a reload
        assert on.tracing.enabled and on.lanes == {}
        again = await compiled(resources, log_block(tmp_path, "tracing: {enabled: false}"))
        assert PRODUCTS in again.lanes
    finally:
        await resources.close()


@on_http11
async def test_a_listener_finds_the_current_runtimes_lane() -> None:
    resources = Resources(Metrics(), env={})
    try:
        runtime = await compiled(resources, None)
        current = [runtime]
        listener = Listener(lambda: current[0])
        assert listener.lane(PRODUCTS) is runtime.lanes[PRODUCTS]
        assert listener.lane(b"/v1/products?x=1") is None and listener.lane(b"/v1/products/") is None and listener.lane(b"/V1/products") is None
        order = runtime.template_lanes["order_status"]
        assert listener.lane(b"/v1/orders/ord-1.a_b~c") is order
        for other in (b"/v1/orders/", b"/v1/orders/a/b", b"/v1/orders/%61", b"/v1/orders/caf\xc3\xa9", b"/v1/orders", b"/v1/orders/a/"):
            assert listener.lane(other) is None, other  # another path, a bad parameter, an escape: the ordinary path
        current[0] = dataclasses.replace(runtime, lanes={}, template_lanes={})
        assert listener.lane(PRODUCTS) is None and listener.lane(b"/v1/orders/ord-1") is None
    finally:
        await resources.close()
