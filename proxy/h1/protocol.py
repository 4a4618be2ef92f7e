"""One downstream connection: llhttp (strict) parses, the core answers, answers go out in order.

Why a Protocol and not aiohttp's server: per request aiohttp builds a request object, a
payload stream, a response object, a writer and timers; a sidecar needs a head, a bounded body and
one ``write``. The parser is ``httptools.HttpRequestParser`` with llhttp's defaults: no lenient
flag, so CL+TE, bare CR/LF, NUL and other controls, obs-fold, a second Content-Length, a space
before a colon and unknown methods are 400 from llhttp itself. Added here, as ``H1Limits`` says:

- target over ``max_request_line`` -> 414; a header line over ``max_field_size``, more than
  ``max_headers`` lines or more than ``max_head_bytes`` of head (counted as bytes arrive, so a
  client dripping one endless header is cut off too) -> 431; a singleton field (Host,
  Content-Length, Content-Type, ...) twice -> 400 (RFC 9110 5.3, as aiohttp answered);
- ``header_timeout`` from the first byte of a request (or the connection) to the end of its head ->
  408 and close; ``body_timeout`` for the body; ``keepalive_timeout`` idle; all from the server's
  one ``Ticker``, no timer per request;
- pipelining: requests are parsed ahead (at most ``max_pipelined`` waiting, then reading pauses)
  and answered strictly in order; a parser error is answered after the requests before it;
- back-pressure: when the transport's write buffer passes ``write_buffer_high`` reading pauses,
  and resumes once it drained below ``write_buffer_low``;
- an answer given before the body ended (413, 405, 417) carries ``Connection: close``; the rest
  of the body is read and dropped for ``linger_timeout`` so the client sees the answer, not a reset;
- ``Upgrade``/``CONNECT``: never switched; the request is answered (routed, or 404) and the
  connection closed, the bytes after it never parsed.

A request is handed to ``Listener.handle`` with a callback for its answer: the listener answers
it at once (no route), as plain calls (``proxy.fastpath``) or from a task running the chain; a
request the listener can answer without the chain (an ``Expect`` it cannot meet) is answered
synchronously by ``Listener.local_reply``. A bug here is logged and answered 500 (or the
connection closed), never a traceback to the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.corking import Cork
from proxy.errors import ExpectationFailed, ProxyError
from proxy.h1.downstream import H1Request
from proxy.h1.limits import H1Limits
from proxy.h1.response import CONTINUE, UnsafeHeader, encode_passed, encode_reply, plain
from proxy.h1.ticker import Ticker
from proxy.listener import Listener
from proxy.reply import Reply, error_reply
from proxy.tracing import request_id_from

if TYPE_CHECKING:
    from proxy.lane import LaneCall

log = logging.getLogger("proxy.h1")

# RFC 9110 fields that make no sense twice (aiohttp's list, which the suite's property test uses).
SINGLETON_HEADERS = (
    "Content-Length", "Content-Location", "Content-Range", "Content-Type", "ETag", "Host",
    "Max-Forwards", "Server", "Transfer-Encoding", "User-Agent",
)

# the method names as str without a decode per request (llhttp refused any other method)
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")}

# what the deadline is for (expire() acts on it)
_NONE, _HEAD, _BODY, _IDLE, _LINGER = 0, 1, 2, 3, 4


class _Reject(Exception):
    """Raised in a parser callback: answer ``status`` (plain) and close."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def _decoded(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    # names are tokens (llhttp checked); values may carry obs-text: kept as aiohttp kept it
    return [(name.decode("ascii"), value.decode("utf-8", "surrogateescape")) for name, value in raw]


def _refuse_repeated_singletons(headers: CIMultiDictProxy[str]) -> None:
    """Only called when some header name came twice (rare): the full check stays off the usual path."""
    for name in SINGLETON_HEADERS:
        if len(headers.getall(name, ())) > 1:
            raise _Reject(400, f"{name} twice")


class ServerSide(Protocol):
    """What a connection needs from its server (``proxy.h1.server.H1Server``)."""

    listener: Listener
    ticker: Ticker
    loop: asyncio.AbstractEventLoop
    connections: set[H1Protocol]
    closing: bool
    cork: Cork

    @property
    def limits(self) -> H1Limits: ...  # read once per connection, in __init__ (a reload applies to new connections)


class H1Protocol(asyncio.Protocol):
    __slots__ = (
        "_server", "_limits", "_ticker", "_listener", "_loop", "transport", "_parser", "_queue",
        "_receiving", "_active", "_url", "_headers", "_head_bytes", "_in_head", "_stopped",
        "_write_paused", "_read_paused", "_close_after", "_closed", "deadline", "_deadline_kind",
        "_error", "_in_next", "_cork", "_lane",
    )

    def __init__(self, server: ServerSide) -> None:
        self._server = server
        self._limits = server.limits
        self._ticker = server.ticker
        self._listener = server.listener
        self._loop = server.loop
        self._cork = server.cork
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        # parsed requests (head complete) in arrival order; the first is in flight. An int is a
        # parser-level status to answer, in its turn, before closing.
        self._queue: deque[H1Request | int] = deque()
        self._receiving: H1Request | None = None  # the request whose body the parser is reading
        self._active: H1Request | LaneCall | None = None  # a LaneCall: the request is on the lane
        self._lane: LaneCall | None = None  # the lane's request whose head is parsed, until its end
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []  # as llhttp gives them; decoded in on_headers_complete
        self._head_bytes = 0
        self._in_head = False
        self._stopped = False        # no more parsing (an error, an upgrade, closing)
        self._write_paused = False
        self._read_paused = False
        self._close_after: H1Request | None = None  # lingering: close when this body ends
        self._closed = False
        self.deadline = 0.0
        self._deadline_kind = _NONE
        self._error: _Reject | None = None
        self._in_next = False  # inside _next: an answer given at once must not start the next request itself

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(self._limits.write_buffer_high, self._limits.write_buffer_low)  # type: ignore[attr-defined]
        self._server.connections.add(self)
        self._ticker.connections.add(self)
        self._set_deadline(_HEAD, self._limits.header_timeout)  # a connection that never sends a request

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._stopped = True
        self._server.connections.discard(self)
        self._ticker.connections.discard(self)
        if self._receiving is not None:
            self._receiving.abandon()
        self._queue.clear()  # requests not started yet are never run; the one in flight finishes

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        was_in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_parsing()  # the request is queued (CONNECT, Upgrade): answer it, then close
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._fail(cause.status)
            elif isinstance(cause, Exception) and isinstance(exc, httptools.HttpParserCallbackError):
                log.error("bug in the data listener's parser callbacks", exc_info=cause)
                self._fail(500)
            else:
                self._fail(400)
        except Exception:
            log.exception("bug in the data listener")
            self._fail(500)
        else:
            if self._in_head:
                # still inside a head: count every byte (httptools buffers a partial line itself)
                self._head_bytes += len(data) if was_in_head else 0
                if self._head_bytes > self._limits.max_head_bytes:
                    self._fail(431)
        self._next()

    def eof_received(self) -> bool | None:
        # The client half-closed: answer what was fully sent, then close.
        self._stop_parsing()
        if self._receiving is not None and not self._receiving.complete:
            self._fail(400)
        if self._active is None and not self._queue:
            self._close()
        else:
            self._next()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- llhttp callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = []
        self._headers = []
        self._head_bytes = 0
        self._in_head = True
        if self._deadline_kind != _HEAD:
            self._set_deadline(_HEAD, self._limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_request_line:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        limits = self._limits
        if size > limits.max_field_size:
            raise _Reject(431, "header line too long")
        headers = self._headers
        if len(headers) >= limits.max_headers:
            raise _Reject(431, "too many headers")
        self._head_bytes += size + 4
        if self._head_bytes > limits.max_head_bytes:
            raise _Reject(431, "request head too large")
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        url = self._url
        raw_target = url[0] if len(url) == 1 else b"".join(url)
        if self._active is None and not self._queue:  # nothing before it to answer first
            query = raw_target.find(b"?")
            lane = self._listener.lane(raw_target if query < 0 else raw_target[:query])
            if lane is not None and parser.get_method() == b"GET":
                call = lane.prepare(self, self._headers, raw_target, query, parser.should_keep_alive(), parser.get_http_version)
                if call is not None:
                    self._lane = call
                    return
        fields = _decoded(self._headers)
        names = {name.lower() for name, _ in fields}  # one pass answers "is it there?" for the rest
        headers = CIMultiDictProxy(CIMultiDict(fields))
        if len(fields) != len(names):
            _refuse_repeated_singletons(headers)  # some name came twice: is it one that must not?
        target = raw_target.decode("ascii", "surrogateescape")
        content_length = int(headers["Content-Length"]) if "content-length" in names else None  # llhttp: one run of digits
        has_body = bool(content_length) or "transfer-encoding" in names
        version = parser.get_http_version()
        method = parser.get_method()
        request = H1Request(
            _METHODS.get(method) or method.decode("ascii"), target, headers, version, parser.should_keep_alive(),
            has_body, content_length, self._limits.max_body_buffer,
        )
        if "expect" in names:
            expect = headers["Expect"]
            if expect.lower() != "100-continue" or version != "1.1":
                request.local_error = ExpectationFailed()
        self._receiving = request
        self._queue.append(request)
        if has_body:
            self._set_deadline(_BODY, self._limits.body_timeout)
        if len(self._queue) > self._limits.max_pipelined:
            self._update_reading()

    def on_body(self, body: bytes) -> None:
        request = self._receiving
        if request is not None:
            request.feed(body)

    def on_message_complete(self) -> None:
        call = self._lane
        if call is not None:
            self._lane = None
            if self._deadline_kind in (_HEAD, _BODY):
                self._set_deadline(_NONE, 0.0)
            if not call.start():
                self._queue.append(self.lane_request(call))  # the ordinary path: _next runs it after the feed
            return
        request = self._receiving
        self._receiving = None
        if request is None:
            return
        request.finish()
        if request is self._close_after:
            self._stop_parsing()
            self._close()
            return
        if self._deadline_kind in (_HEAD, _BODY):
            self._set_deadline(_NONE, 0.0)

    # -- answering ----------------------------------------------------------------------------------

    def _next(self) -> None:
        """Start the first queued request if none is in flight (called after parsing and answering)."""
        while self._active is None and self._queue and not self._closed:
            item = self._queue[0]
            if isinstance(item, int):
                self._queue.clear()
                self._write(plain(item, self._ticker.date))
                self._close_gracefully()
                return
            self._active = item
            if item.local_error is not None:
                self._answer(item, self._local(item, item.local_error))
                continue
            if item.has_body and not item.complete and item.headers.get("Expect") is not None:
                self._write(CONTINUE)
            self._in_next = True
            try:
                self._listener.handle(item, self._done)  # may answer at once: _done then leaves _next to us
            except Exception:
                log.exception("bug in the data listener's dispatch")
                if self._active is item:
                    self._answer(item, error_reply(ProxyError("unhandled"), "en", request_id_from(item.headers.get("X-Request-Id"))))
            finally:
                self._in_next = False
        if self._read_paused or self._write_paused or len(self._queue) > self._limits.max_pipelined:
            self._update_reading()  # only when reading may have to pause or resume

    def _local(self, request: H1Request, error: ProxyError) -> Reply:
        try:
            return self._listener.local_reply(request, error)
        except Exception:
            log.exception("bug answering a local reply")
            return error_reply(ProxyError("unhandled"), "en", request_id_from(None))

    def _done(self, reply: Reply) -> None:
        """The listener's answer to the request in flight (requests are answered one at a time, in order)."""
        request = self._active
        if not isinstance(request, H1Request):  # cannot happen: the listener answers each request once
            log.error("an answer with no request in flight (dropped)")
            return
        self._answer(request, reply)
        if not self._in_next:
            self._next()

    def _answer(self, request: H1Request, reply: Reply) -> None:
        self._active = None
        if self._queue and self._queue[0] is request:
            self._queue.popleft()
        if self._closed:
            return
        body_left = not request.complete
        close = not request.keep_alive or self._stopped or self._server.closing or body_left
        try:
            data = encode_reply(reply, self._ticker.date, close, request.method == "HEAD")
        except UnsafeHeader:
            log.error("reply header with CR or LF refused (request %s)", reply.headers.get("X-Request-Id"))
            data = encode_reply(error_reply(ProxyError("unsafe reply header"), "en", request_id_from(None)), self._ticker.date, True, False)
            close = True
        self._write(data)
        self._after_answer(request, close, body_left)

    def _after_answer(self, request: H1Request | None, close: bool, body_left: bool) -> None:
        if not close:
            if not self._queue and self._receiving is None and not self._in_head:
                self._set_deadline(_IDLE, self._limits.keepalive_timeout)
            return
        self._queue.clear()
        if body_left and not self._stopped and request is not None:
            request.drop_body()
            self._close_after = request
            self._set_deadline(_LINGER, self._limits.linger_timeout)
        else:
            self._stop_parsing()
            self._close_gracefully()

    # -- the lane (proxy.lane) ----------------------------------------------------------------------

    @property
    def listener(self) -> Listener:
        return self._listener

    def lane_request(self, call: LaneCall) -> H1Request:
        """The lane's request as the ordinary path sees it: the same bytes, decoded as
        ``on_headers_complete`` decodes them (the lane took only requests without a body)."""
        fields = _decoded(call.raw)
        request = H1Request(
            "GET", call.target.decode("ascii", "surrogateescape"), CIMultiDictProxy(CIMultiDict(fields)),
            call.version, call.keep_alive, False, None, self._limits.max_body_buffer,
        )
        request.finish()
        return request

    def lane_started(self, call: LaneCall) -> None:
        self._active = call  # what is parsed behind it waits in the queue, as behind any request

    def lane_handed_on(self, call: LaneCall) -> H1Request:
        """The lane gives its request to the forwarder's and the listener's code: their answer
        comes back through ``lane_reply``, as any request's."""
        request = self.lane_request(call)
        if self._active is call:
            self._active = request
        return request

    def lane_reply(self, reply: Reply) -> None:
        self._done(reply)

    def lane_answer(
        self, status: int, passed: bytes, request_id: str, content_type: bytes, body: bytes, keep_alive: bool, then: Callable[[], None],
    ) -> None:
        """The lane's reply (``_answer`` for bytes): a GET, complete, answered in its turn. ``then``
        (its accounting) runs once the reply is written, or at once if the app has gone."""
        self._active = None
        self._cork.after(then)
        if self._closed:
            return
        close = not keep_alive or self._stopped or self._server.closing
        self._write(encode_passed(status, passed, request_id, content_type, body, self._ticker.date, close))
        self._after_answer(None, close, False)
        if self._queue:
            self._next()

    def _write(self, data: bytes) -> None:
        """After the loop iteration's reads (``proxy.corking``), in order with closing."""
        if self.transport is not None and not self._closed:
            self._cork.write(self.transport, data)

    def _fail(self, status: int) -> None:
        """A parser-level refusal: answered after the requests before it, then the connection closes."""
        self._stop_parsing()
        receiving = self._receiving
        if receiving is not None and not receiving.complete:
            receiving.abandon()  # its body never completes: a read_body waiting for it fails
            self._receiving = None
            if receiving is not self._active and receiving in self._queue:
                self._queue.remove(receiving)
        self._queue.append(status)

    # -- flow control, timeouts, closing ------------------------------------------------------------

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self._closed:
            return
        pause = self._write_paused or len(self._queue) > self._limits.max_pipelined
        if pause != self._read_paused:
            self._read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _set_deadline(self, kind: int, seconds: float) -> None:
        self._deadline_kind = kind
        self.deadline = self._ticker.now + seconds if kind != _NONE else 0.0

    def expire(self, now: float) -> None:
        """The ticker found the deadline passed."""
        kind = self._deadline_kind
        self.deadline = 0.0
        self._deadline_kind = _NONE
        if self._closed:
            return
        if kind == _HEAD:
            if self._active is not None or self._queue:
                self._fail(408)  # a pipelined head never finished: answered in its turn, then close
                self._next()
                return
            self._stop_parsing()
            if self._in_head:
                self._write(plain(408, self._ticker.date))
            self._close()
        elif kind == _BODY:
            self._fail(408)  # the body's reader (if dispatched) gets BodyIncomplete: a 400 envelope
            self._next()
        else:  # idle keep-alive, or the linger after an early answer
            self._stop_parsing()
            self._close()

    @property
    def busy(self) -> bool:
        """A request is being answered on this connection."""
        return self._active is not None and not self._closed

    def drain(self) -> None:
        """The server stops: close now if idle; otherwise the current answer says ``Connection: close``."""
        if self._active is None and not self._queue and self._receiving is None and not self._in_head:
            self._stop_parsing()
            self._close()

    def _stop_parsing(self) -> None:
        self._stopped = True

    def _close_gracefully(self) -> None:
        """Send FIN after the answer and drop what the client still sends, for ``linger_timeout``:
        closing a socket with unread bytes makes the kernel send a reset, and a reset can destroy
        the answer before the client read it (a 431 to a client still sending its headers)."""
        transport = self.transport
        if transport is None or self._closed:
            return
        self._stopped = True
        if transport.can_write_eof():
            self._cork.write_eof(transport)
            self._set_deadline(_LINGER, self._limits.linger_timeout)
        else:
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self._cork.close(self.transport)  # after what was written

    def abort(self) -> None:
        if self.transport is not None:
            self._closed = True
            self.transport.abort()
