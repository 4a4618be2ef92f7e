"""A lean HTTP/1.1 transport for the partner hot path: a keep-alive pool, a prebuilt request, llhttp strict.

Why not aiohttp's ClientSession here (it still serves the token endpoint, the notifiers and
``clusters.<name>.client: aiohttp``): on the benchmark machine its per-request machinery (request
object, header merging, timers, response object, stream reader) cost more CPU than everything else
the sidecar does, and a sidecar pays it on every call. A proxy only needs a small part of HTTP:
send one request on a pooled connection, read one response whose framing is unambiguous, and hand
back the status, the headers and the body.

Answers are parsed by llhttp (Node's parser, in C, through ``httptools``) with every leniency off,
which is llhttp's default and what ``httptools`` builds (``tests/test_http11.py`` proves it on
bare CR/LF). ``StrictAnswer`` adds what llhttp lets through and a proxy must not:

- a reason phrase with NUL or another control character (llhttp accepts any byte but CR/LF there);
- an HTTP version other than 1.0/1.1 (llhttp also parses ``HTTP/2.0`` text);
- a ``Transfer-Encoding`` other than exactly one ``chunked`` (we never send ``TE``, so ``gzip,
  chunked`` or ``chunked, chunked`` is a partner we cannot read correctly, and llhttp reads
  ``chunked, gzip`` until close);
- a 101 (we never ask for an upgrade); a head over ``MAX_HEAD`` or a body over ``max_response_bytes``;
- bytes after a complete answer: the answer is used, the connection is closed (never reused, so a
  smuggled second answer cannot reach the next request).

1xx answers before the real one are skipped; 204/304 and HEAD have no body; no length means "read
until close". A connection is reused only when the answer was complete, keep-alive, and the
connection is younger than ``max_connection_duration`` and was idle less than ``idle_timeout``.
Nothing is retried here, nothing is counted: that is the forwarder's job. Exceptions become our
error types in ONE table, ``EXCEPTIONS``, through ``proxy.upstream.transport.wire_error``.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import Callable
from functools import partial

import httptools

from proxy.corking import Cork
from proxy.upstream.transport import Event, Phase, UpstreamAnswer, UpstreamRequest, map_exception, partner_url, wire_error

MAX_HEAD = 64 * 1024
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CRLF = "\r\n"
_COLON = ": "

_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search  # RFC 9112 4: HTAB / SP / VCHAR / obs-text


class Violation(Exception):
    """The answer breaks HTTP/1.1 (or our caps). Raised inside the parser callbacks."""


class Closed(Exception):
    """The connection ended before a complete answer."""


class _Leftover(Exception):
    """Bytes after a complete answer: stops the parser; the connection is closed."""


# The ONE table from what this transport can raise to a wire event (first match wins: subclasses
# first). ``tests/test_http11.py`` enumerates every exception class and checks it is mapped.
EXCEPTIONS: tuple[tuple[type[BaseException], Event], ...] = (
    (Violation, Event.VIOLATION),
    (httptools.HttpParserUpgrade, Event.VIOLATION),
    (httptools.HttpParserError, Event.VIOLATION),  # and its Callback / InvalidStatus / ... subclasses
    (Closed, Event.CLOSED),
    (TimeoutError, Event.TIMEOUT),                 # before OSError: TimeoutError is one
    (ssl.SSLError, Event.VIOLATION),               # a TLS failure: before the first byte it is NOT_SENT anyway
    (OSError, Event.CLOSED),                       # refused, reset, unreachable, DNS (gaierror), broken pipe
)


class StrictAnswer:
    """llhttp callbacks for one connection's answers, plus the checks llhttp leaves to us.

    Shared by both transports: ``aiohttp_client`` feeds the same bytes through it so the two give
    the same verdicts. ``feed()`` raises ``Violation`` / ``HttpParserError``; ``done`` turns true
    when the final answer is complete; bytes past it set ``leftover``.
    """

    __slots__ = (
        "parser", "max_body", "head_only", "received", "status", "headers", "body", "body_len",
        "headers_done", "done", "leftover", "interim", "keep_alive", "framed", "head_len", "_te", "_length", "_connection",
    )

    def __init__(self, max_body: int) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.max_body = max_body
        self.reset(False)

    def reset(self, head_only: bool) -> None:
        # What ``on_message_begin`` resets for every answer (an interim 1xx included) is set there;
        # it is set here too so that a StrictAnswer read before any byte arrived is consistent.
        self.head_only = head_only
        self.received = 0
        self.status = 0
        # as received: the parser's bytes (``decoded_headers`` for the str form); the callback
        # path's lane (``proxy.lane``) reads them without decoding
        self.headers: list[tuple[bytes, bytes]] = []
        # bytes while the body came in one ``on_body`` chunk (the usual case: no copy), a bytearray
        # once a second chunk arrived; ``body_bytes()`` hands out bytes either way
        self.body: bytes | bytearray = b""
        self.body_len = 0
        self.headers_done = False
        self.done = False
        self.leftover = False
        self.interim = False
        self.keep_alive = False
        self.framed = True  # False: the body ends with the connection
        self.head_len = 0
        self._te: list[bytes] | None = None  # the Transfer-Encoding values, None: no such header
        self._length: int | None = None      # the Content-Length, None: no such header
        self._connection = False             # a Connection header came (see on_headers_complete)

    def body_bytes(self) -> bytes:
        """The body as received, as an immutable ``bytes`` (copied only if it came in pieces)."""
        body = self.body
        return body if type(body) is bytes else bytes(body)

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except _Leftover:
            self.leftover = True
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Leftover):
                self.leftover = True
                return
            if isinstance(cause, Violation):
                raise cause from None
            if self.done:
                self.leftover = True  # garbage after a complete answer: the answer stands
                return
            raise Violation(f"llhttp: {exc}") from exc
        except httptools.HttpParserUpgrade as exc:
            raise Violation("101 Switching Protocols: no upgrade was asked for") from exc
        if not self.headers_done and self.received > MAX_HEAD:
            raise Violation(f"response head over {MAX_HEAD} bytes")

    def eof(self) -> bool:
        """The connection ended: True if that completes an answer delimited by the close."""
        if self.done:
            return True
        if self.headers_done and not self.interim and not self.framed:
            self.done = True
            return True
        return False

    # -- llhttp callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:
            raise _Leftover()
        self.headers = []
        self._te = None
        self._length = None
        self._connection = False
        self.head_len = 0
        self.headers_done = False
        self.interim = False

    def on_status(self, reason: bytes) -> None:
        self.head_len += len(reason) + 15
        if _BAD_REASON(reason):
            raise Violation("control character in the status line")

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp (strict) already refused CR, LF, NUL, other controls and DEL in names and values,
        # a second Content-Length, and a Content-Length that is not one run of digits.
        head_len = self.head_len = self.head_len + len(name) + len(value) + 4
        if head_len > MAX_HEAD:
            raise Violation(f"response head over {MAX_HEAD} bytes")
        # The framing headers are picked out here, by length first (one int compare for the other
        # headers), rather than by a second pass over the decoded list.
        n = len(name)
        if n == 14:
            if name.lower() == b"content-length":
                self._length = int(value)
        elif n == 10:
            if name.lower() == b"connection":
                self._connection = True
        elif n == 17 and name.lower() == b"transfer-encoding":
            if self._te is None:
                self._te = [value]
            else:
                self._te.append(value)
        self.headers.append((name, value))

    def decoded_headers(self) -> list[tuple[str, str]]:
        """The headers as ``UpstreamAnswer`` carries them: decoded latin-1, so every byte survives."""
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self.headers]

    def on_headers_complete(self) -> None:
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        # The version is read only when it can be other than 1.1 (httptools formats a new string
        # each call, ~0.25 us). Strict llhttp takes 0.9, 1.0, 1.1 and 2.0; of these only 1.1 keeps
        # the connection alive without a Connection header (0.9, 1.0 and 2.0 need keep-alive in it).
        if not keep_alive or self._connection:
            version = parser.get_http_version()
            if version != "1.1" and version != "1.0":
                raise Violation(f"HTTP version {version} in an HTTP/1.1 answer")
        status = parser.get_status_code()
        if status < 100 or status > 999:
            raise Violation(f"status code {status}")
        self.status = status
        self.headers_done = True
        if status < 200:
            if status == 101:
                raise Violation("101 Switching Protocols: no upgrade was asked for")
            self.interim = True  # 100, 103...: the real answer follows
            return
        te = self._te
        if te is not None:
            codings = [c.strip().lower() for v in te for c in v.split(b",")]
            if codings != [b"chunked"]:
                raise Violation(f"Transfer-Encoding {b', '.join(te).decode('latin-1')!r}: only one 'chunked' is accepted")
        length = self._length
        head_only = self.head_only
        if length is not None and length > self.max_body and not head_only:
            raise Violation(f"partner response of {length} bytes is over the {self.max_body} byte limit")
        if head_only:
            # llhttp cannot be told the request was HEAD: finish here and never reuse the connection
            self.keep_alive = False
            self.framed = True
            self._finish()
            return
        self.keep_alive = keep_alive
        self.framed = te is not None or length is not None or status == 204 or status == 304

    def on_body(self, data: bytes) -> None:
        if self.done:
            raise _Leftover()
        body_len = self.body_len = self.body_len + len(data)
        if body_len > self.max_body:
            raise Violation(f"partner response is over the {self.max_body} byte limit")
        body = self.body
        if not body:
            self.body = data  # the first chunk: kept as it is (llhttp hands us a fresh bytes object)
        elif type(body) is bytes:
            self.body = bytearray(body) + data  # a second chunk: from here on, appended in place
        else:
            body += data

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.headers_done = False
            return
        if not self.done:
            self._finish()

    def _finish(self) -> None:
        self.done = True


DoneCallback = Callable[[UpstreamAnswer | None, BaseException | None], None]
# told the connection as well, so that one bound method serves every request (no partial per request)
AnswerCallback = Callable[["_Connection", UpstreamAnswer | None, BaseException | None], None]
# ``Http11Pool.start_bytes``' outcome: the parsed answer itself (headers as bytes), or the error
RawDoneCallback = Callable[[StrictAnswer | None, BaseException | None], None]


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; parses exactly one answer per request.

    The outcome of a request goes to one plain callback (``start``), so the same connection serves
    the callback path (``Http11Pool.start``: no future, no task) and ``send``'s future. The callback
    runs only after the chunk that completed the answer was fully parsed: bytes after the answer
    must mark the connection unusable *before* anyone can reuse it. Requests are written through
    the pool's ``Cork`` (``proxy.corking``): after the loop iteration's reads.
    """

    __slots__ = (
        "transport", "closed", "answer", "_on_answer", "reusable", "created", "idle_since", "deadline", "_cork",
        "method", "timeout", "on_done", "raw",
    )

    def __init__(self, max_body: int, cork: Cork) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.answer = StrictAnswer(max_body)
        self._on_answer: AnswerCallback | None = None
        self.reusable = False
        self.created = time.monotonic()
        self.idle_since = self.created
        self.deadline = 0.0  # the callback path's timeout (the pool's coarse clock); 0: none
        self._cork = cork
        # the callback path's request in flight (``Http11Pool.start``), kept here rather than bound
        # into a partial per request; ``on_done`` is dropped once called (it holds the exchange)
        self.method = ""
        self.timeout = 0.0
        self.on_done: DoneCallback | None = None
        # the request's ``on_done`` takes the ``StrictAnswer`` itself (``Http11Pool.start_bytes``)
        self.raw = False

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._on_answer is not None:
            if self.answer.eof():
                self._deliver()
            else:
                error = Closed("connection ended before a complete answer" + (f": {exc.__class__.__name__}" if exc else ""))
                error.__cause__ = exc
                self.fail(error)

    def eof_received(self) -> bool | None:
        return False  # close the transport: connection_lost settles the request

    def data_received(self, data: bytes) -> None:
        if self._on_answer is None:
            self.close()  # bytes nobody asked for (e.g. after a complete answer): never reuse
            return
        answer = self.answer
        try:
            answer.feed(data)
        except Violation as exc:
            self.close()
            self.fail(exc)
            return
        if answer.leftover:
            self.reusable = False
            self.close()
        if answer.done:
            self._deliver()

    def _deliver(self) -> None:
        answer = self.answer
        callback, self._on_answer = self._on_answer, None
        if not self.closed:
            self.reusable = answer.keep_alive and answer.framed
        if callback is not None:
            if self.raw:  # read at once by its caller: the next request on this connection resets it
                callback(self, answer, None)  # type: ignore[arg-type]
            else:
                callback(self, UpstreamAnswer(answer.status, answer.decoded_headers(), answer.body_bytes()), None)

    def fail(self, exc: BaseException) -> None:
        """End the request in flight with ``exc`` (a violation, the connection's end, a timeout)."""
        callback, self._on_answer = self._on_answer, None
        if callback is not None:
            callback(self, None, exc)

    # -- requests ---------------------------------------------------------------------------------

    def start(self, request: bytes, head_only: bool, on_answer: AnswerCallback) -> None:
        assert self.transport is not None
        self._on_answer = on_answer
        self.reusable = False
        self.answer.reset(head_only)
        self._cork.write(self.transport, request)

    def send(self, request: bytes, head_only: bool) -> asyncio.Future[UpstreamAnswer]:
        waiter: asyncio.Future[UpstreamAnswer] = asyncio.get_running_loop().create_future()
        self.raw = False  # the last request on this connection may have been the lane's
        self.start(request, head_only, partial(_resolve, waiter))
        return waiter

    @property
    def busy(self) -> bool:
        return self._on_answer is not None

    @property
    def received(self) -> int:
        return self.answer.received

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self._cork.close(self.transport)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _resolve(waiter: asyncio.Future[UpstreamAnswer], conn: _Connection, answer: UpstreamAnswer | None, exc: BaseException | None) -> None:
    if waiter.done():
        return
    if exc is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(answer)  # type: ignore[arg-type]


class Http11Pool:
    """The ``http11`` transport: keep-alive connections to one origin.

    How many exist at once is bounded above it (``Cluster.limits``: ``max_connections``); the pool
    keeps at most ``max_idle`` of them idle.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        max_body: int,
        max_idle: int,
        idle_timeout: float = 30.0,
        max_connection_duration: float = 0.0,
    ) -> None:
        url = partner_url(base_url)
        assert url.host is not None  # partner_url refuses a URL without one
        self.host: str = url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        default_port = 443 if url.scheme == "https" else 80
        host_header = url.raw_host or url.host
        if ":" in host_header and not host_header.startswith("["):
            host_header = f"[{host_header}]"
        self.host_header = host_header if self.port == default_port else f"{host_header}:{self.port}"
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if url.scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.max_body = max_body
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_age = max_connection_duration  # 0: no limit
        self._idle: deque[_Connection] = deque()
        self._closed = False
        # the callback path's requests in flight, expired by one coarse timer (``start``)
        self._busy: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cork: Cork | None = None  # requests go out after the loop iteration's reads
        self._tick = 0.05
        self._tick_handle: asyncio.TimerHandle | None = None
        self._on_started = self._started_done  # bound once: every callback-path request's answer goes here

    async def _connect(self) -> _Connection:
        loop, cork = self._loop_and_cork()
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(
                lambda: _Connection(self.max_body, cork), self.host, self.port,
                ssl=self.ssl, server_hostname=self.host if self.ssl else None,
            )
        return conn

    def _usable(self, conn: _Connection, now: float) -> bool:
        return not (
            conn.closed
            or (conn.transport is not None and conn.transport.is_closing())
            or now - conn.idle_since > self.idle_timeout
            or (self.max_age and now - conn.created > self.max_age)
        )

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        usable = self._usable
        while not usable(idle[0], now):
            idle.popleft().close()  # the oldest first: idle too long, too old, or closed by the partner
            if not idle:
                return None
        if len(idle) == 1:
            return idle.pop()  # the one just checked (the usual case: one connection per request in flight)
        while idle:
            conn = idle.pop()  # most recently used first: the likeliest to be alive
            if usable(conn, now):
                return conn
            conn.close()
        return None

    def request_bytes(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        # One f-string and one encode; the "name: value" lines are joined in C, no Python code per header.
        if body or method in BODY_METHODS:
            end = f"\r\nContent-Length: {len(body)}\r\n\r\n" if headers else f"Content-Length: {len(body)}\r\n\r\n"
        else:
            end = "\r\n\r\n" if headers else "\r\n"
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host_header}\r\n{_CRLF.join(map(_COLON.join, headers))}{end}".encode("utf-8", "replace")
        return head + body if body else head

    def _loop_and_cork(self) -> tuple[asyncio.AbstractEventLoop, Cork]:
        loop, cork = self._loop, self._cork
        if loop is None or cork is None:
            loop = self._loop = asyncio.get_running_loop()
            cork = self._cork = Cork(loop)
        return loop, cork

    def has_idle(self) -> bool:
        """A pooled connection is ready now (``start`` will not need to connect)."""
        idle = self._idle
        if idle and self._usable(idle[-1], time.monotonic()):
            return True  # the one ``_take_idle`` hands out first
        conn = self._take_idle()
        if conn is None:
            return False
        self._idle.append(conn)
        return True

    def start(self, request: UpstreamRequest, timeout: float, on_done: DoneCallback) -> bool:
        """The callback path: send on a pooled connection and call ``on_done(answer, None)`` or
        ``on_done(None, error)`` (our ``UpstreamError``, or the exception itself if no table entry
        maps it: a bug) from the connection's own callbacks. False, with nothing done, when no
        pooled connection is ready: connecting needs a coroutine, ``send``.

        The timeout is the pool's coarse clock (a tick of at most 50 ms over every request in flight)
        instead of a timer per request.
        """
        conn = self._take_idle()
        if conn is None:
            return False
        method = request.method
        self._send_now(conn, self.request_bytes(method, request.target, request.headers, request.body), method, timeout, on_done, False)
        return True

    def start_bytes(self, data: bytes, method: str, timeout: float, on_done: RawDoneCallback) -> bool:
        """``start`` for a request already encoded (``proxy.lane``: a route's constant head is
        encoded once). ``on_done`` gets the connection's ``StrictAnswer`` itself, headers as bytes,
        and must read it at once: the connection is back in the pool when it is called."""
        conn = self._take_idle()
        if conn is None:
            return False
        self._send_now(conn, data, method, timeout, on_done, True)  # type: ignore[arg-type]
        return True

    def _send_now(self, conn: _Connection, data: bytes, method: str, timeout: float, on_done: DoneCallback, raw: bool) -> None:
        loop = self._loop
        if loop is None:
            loop, _ = self._loop_and_cork()
        conn.deadline = loop.time() + timeout
        conn.method = method
        conn.timeout = timeout
        conn.on_done = on_done
        conn.raw = raw
        self._busy.add(conn)
        if self._tick_handle is None:
            self._tick = max(0.005, min(0.05, timeout / 4))
            self._tick_handle = loop.call_later(self._tick, self._expire_busy)
        try:
            conn.start(data, method == "HEAD", self._on_started)
        except Exception as exc:  # the write itself failed: nothing was sent
            self._busy.discard(conn)
            conn.on_done = None
            on_done(None, self._failure(exc, conn, Phase.NOT_SENT, method, timeout))

    def _started_done(self, conn: _Connection, answer: UpstreamAnswer | None, exc: BaseException | None) -> None:
        self._busy.discard(conn)
        conn.deadline = 0.0
        on_done, conn.on_done = conn.on_done, None
        if on_done is None:
            return  # ``start`` already told it (the write itself failed): the outcome goes out once
        if exc is not None:
            on_done(None, self._failure(exc, conn, Phase.SENT, conn.method, conn.timeout))
            return
        self._recycle(conn)
        on_done(answer, None)

    def _expire_busy(self) -> None:
        self._tick_handle = None
        busy = self._busy
        if not busy or self._loop is None:
            return
        now = self._loop.time()
        for conn in [c for c in busy if c.deadline and c.deadline <= now]:
            conn.fail(TimeoutError())
        if busy:
            self._tick_handle = self._loop.call_later(self._tick, self._expire_busy)

    async def send(self, request: UpstreamRequest, *, timeout: float) -> UpstreamAnswer:
        """Send one request and read its answer within ``timeout`` seconds (connect included)."""
        data = self.request_bytes(request.method, request.target, request.headers, request.body)
        conn: _Connection | None = None
        phase = Phase.NOT_SENT
        loop, _ = self._loop_and_cork()
        deadline = loop.time() + timeout
        try:
            conn = self._take_idle()
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect()
            waiter = conn.send(data, request.method == "HEAD")
            phase = Phase.SENT
            # One timer on the answer's future instead of asyncio.timeout (a Timeout object, a
            # reschedule and the task's cancel/uncancel bookkeeping: ~12% of the request's CPU).
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                answer = await waiter
            finally:
                timer.cancel()
        except Exception as exc:
            error = self._failure(exc, conn, phase, request.method, timeout)
            if error is exc:
                raise
            raise error from exc
        except BaseException:  # cancelled: the app went away
            if conn is not None:
                conn.abort()
            raise
        self._recycle(conn)
        return answer

    def _failure(self, exc: BaseException, conn: _Connection | None, phase: Phase, method: str, timeout: float) -> BaseException:
        """The error a failed request ends with; the connection is never reused (its state is unknown)."""
        if conn is not None:
            conn.abort()
            if phase is Phase.SENT and conn.received:
                phase = Phase.ANSWERING
        event = map_exception(EXCEPTIONS, exc)
        if event is None:
            return exc  # not ours to map: a bug, raised as it is
        error = wire_error(phase, event, method, _detail(exc, phase, timeout))
        error.__cause__ = exc  # as ``raise ... from exc`` would (send re-raises it so)
        return error

    def _recycle(self, conn: _Connection) -> None:
        now = time.monotonic()
        if conn.reusable and not conn.closed and not self._closed and len(self._idle) < self.max_idle and not (self.max_age and now - conn.created > self.max_age):
            conn.idle_since = now
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        self._closed = True
        if self._tick_handle is not None and not self._busy:
            # requests still in flight (a reload replaced this cluster) keep their timeouts:
            # the clock stops by itself once the last one ended
            self._tick_handle.cancel()
            self._tick_handle = None
        while self._idle:
            self._idle.pop().close()


def _expire(waiter: asyncio.Future[UpstreamAnswer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _detail(exc: BaseException, phase: Phase, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return "connect timed out" if phase is Phase.NOT_SENT else f"no complete answer within {timeout}s"
    if isinstance(exc, (Violation, Closed)):
        return str(exc)
    return f"{exc.__class__.__name__}: {exc}"
