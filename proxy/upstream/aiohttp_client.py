"""The ``aiohttp`` transport (``clusters.<name>.client: aiohttp``): aiohttp's ClientSession, made as strict as ``http11``.

aiohttp's response parser is lax outside Python's dev mode (llhttp with ``lenient_headers``,
``lenient_optional_cr_before_lf`` and ``lenient_spaces_after_chunk_size`` on, so a bare LF, a
control character in a header value, or ``2 \\r\\n`` as a chunk size pass). So every connection's
protocol is ``_StrictHandler``: the bytes are first fed through the same ``StrictAnswer`` (llhttp
strict, plus our checks) as the ``http11`` transport, and only bytes that pass reach aiohttp.
The two transports therefore give the same verdicts (``tests/test_upstream_wire.py`` runs one corpus
on both). It also closes a connection that receives bytes after a complete answer (aiohttp would
queue them as the next request's answer), and applies ``max_connection_duration``.

Exceptions become our error types in ONE table, ``EXCEPTIONS``, through
``proxy.upstream.transport.wire_error``. Whether the request was written is known from aiohttp's
``on_request_headers_sent`` trace; whether any byte of an answer came back from ``_StrictHandler``.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import _EXC_SENTINEL
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from proxy.upstream.http11 import StrictAnswer, Violation
from proxy.upstream.transport import Event, Phase, UpstreamAnswer, UpstreamRequest, map_exception, partner_url, wire_error

# The ONE table (first match wins: subclasses first). A phase in the third column overrides the
# one observed on the wire. ``tests/test_upstream_wire.py`` checks every aiohttp exception is here.
EXCEPTIONS: tuple[tuple[type[BaseException], Event, Phase | None], ...] = (
    (Violation, Event.VIOLATION, None),                                  # our strict parser (StrictAnswer)
    (aiohttp.ConnectionTimeoutError, Event.TIMEOUT, Phase.NOT_SENT),     # sock_connect
    (aiohttp.ClientConnectorError, Event.CLOSED, Phase.NOT_SENT),        # refused, DNS, TLS, certificate, proxy
    (aiohttp.ServerFingerprintMismatch, Event.VIOLATION, Phase.NOT_SENT),
    (aiohttp.ServerTimeoutError, Event.TIMEOUT, None),                   # sock_read (SocketTimeoutError)
    (TimeoutError, Event.TIMEOUT, None),                                 # the total timeout (asyncio.TimeoutError)
    (aiohttp.ClientPayloadError, Event.CLOSED, Phase.ANSWERING),         # the head came, the body did not end
    (aiohttp.ClientResponseError, Event.VIOLATION, None),                # aiohttp refused the answer
    (HttpProcessingError, Event.VIOLATION, None),                        # the same, unwrapped
    (aiohttp.ServerDisconnectedError, Event.CLOSED, None),
    (aiohttp.ClientConnectionResetError, Event.CLOSED, None),
    (aiohttp.ClientOSError, Event.CLOSED, None),
    (aiohttp.ClientConnectionError, Event.CLOSED, None),                 # ServerConnectionError and the rest
    (aiohttp.InvalidURL, Event.VIOLATION, Phase.NOT_SENT),               # cannot happen: base_url is checked
    (aiohttp.ClientError, Event.VIOLATION, None),                        # UploadAbortedError, redirects (never followed)...
    (ssl.SSLError, Event.VIOLATION, None),
    (OSError, Event.CLOSED, None),
)
_EVENTS = tuple((cls, event) for cls, event, _ in EXCEPTIONS)
_PHASES = {cls: phase for cls, _, phase in EXCEPTIONS if phase is not None}


class _StrictHandler(ResponseHandler):
    """aiohttp's connection protocol, with our strict parser in front of aiohttp's lax one."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop, max_body: int, max_age: float) -> None:
        super().__init__(loop=loop)
        self._strict = StrictAnswer(max_body)
        self._strict.done = True  # nothing asked yet: any byte is unsolicited
        self._created = time.monotonic()
        self._max_age = max_age

    def set_response_params(self, *, skip_payload: bool = False, **kw: Any) -> None:
        super().set_response_params(skip_payload=skip_payload, **kw)
        self._strict.reset(skip_payload)  # called per request, before it is written

    @property
    def should_close(self) -> bool:
        if self._max_age and time.monotonic() - self._created > self._max_age:
            return True
        return super().should_close

    def data_received(self, data: bytes) -> None:
        strict = self._strict
        if not data:
            super().data_received(data)
            return
        if strict.done:
            # bytes after a complete answer (or before any request): aiohttp would queue them as the
            # next request's answer. Drop them and the connection.
            self.force_close()
            if self.transport is not None:
                self.transport.close()
            return
        try:
            strict.feed(data)
        except Violation as exc:
            self._refuse(exc)
            return
        super().data_received(data)
        if strict.leftover:
            self.force_close()  # the answer stands; the connection is closed when it is released

    def _refuse(self, exc: Violation) -> None:
        payload = self._payload
        if payload is not None:
            payload.set_exception(exc)  # the head was delivered: the body reader gets the verdict
        self.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def set_exception(self, exc: BaseException, exc_cause: BaseException = _EXC_SENTINEL) -> None:
        try:
            exc._proxy_received = self._strict.received  # type: ignore[attr-defined]
        except AttributeError:
            pass
        super().set_exception(exc, exc_cause)


async def _on_headers_sent(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
    ctx.trace_request_ctx.sent = True


class AiohttpTransport:
    """``send`` through one ClientSession (created lazily, inside the running loop)."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        max_body: int,
        max_connections: int,
        idle_timeout: float = 30.0,
        max_connection_duration: float = 0.0,
    ) -> None:
        url = partner_url(base_url)
        self.origin = str(url.origin())
        self.connect_timeout = connect_timeout
        self.max_body = max_body
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_age = max_connection_duration
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._closed = False

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            loop = asyncio.get_running_loop()
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,  # one host per cluster; the cluster's limiter bounds it first
                ttl_dns_cache=300,
                keepalive_timeout=self.idle_timeout,  # an idle connection older than this is never reused
                enable_cleanup_closed=False,
            )
            # Our strict protocol for every connection (aiohttp has no public hook for this).
            connector._factory = functools.partial(_StrictHandler, loop=loop, max_body=self.max_body, max_age=self.max_age)  # type: ignore[assignment]
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_on_headers_sent)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),  # a partner cookie must not leak into the next app request
                trace_configs=[trace],
            )
            # aiohttp silently re-sends an idempotent request once when a pooled connection drops.
            # Retries are the forwarder's to decide (counted, budgeted, seen by the breaker).
            self._session._retry_connection = False
        return self._session

    def _timeout(self, total: float) -> aiohttp.ClientTimeout:
        t = self._timeouts.get(total)
        if t is None:
            t = self._timeouts[total] = aiohttp.ClientTimeout(total=total, sock_connect=self.connect_timeout)
        return t

    async def send(self, request: UpstreamRequest, *, timeout: float) -> UpstreamAnswer:
        ctx = SimpleNamespace(sent=False)
        headed = False
        try:
            async with self.session.request(
                request.method,
                URL(self.origin + request.target, encoded=True),
                headers=request.headers,
                data=request.body or None,
                allow_redirects=False,
                timeout=self._timeout(timeout),
                trace_request_ctx=ctx,
            ) as resp:
                headed = True
                body = await _read_bounded(resp, self.max_body)
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers]
                return UpstreamAnswer(resp.status, headers, body)
        except Violation as exc:
            raise wire_error(Phase.ANSWERING if ctx.sent else Phase.NOT_SENT, Event.VIOLATION, request.method, str(exc)) from exc
        except Exception as exc:
            event = map_exception(_EVENTS, exc)
            if event is None:
                raise
            phase = _phase_of(exc, ctx.sent, headed)
            raise wire_error(phase, event, request.method, f"{exc.__class__.__name__}: {exc}") from exc

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


def _phase_of(exc: BaseException, sent: bool, headed: bool) -> Phase:
    for cls, phase in _PHASES.items():
        if isinstance(exc, cls):
            return phase
    if not sent:
        return Phase.NOT_SENT
    if headed or getattr(exc, "_proxy_received", None):
        return Phase.ANSWERING
    return Phase.SENT


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or a Violation past ``limit``: a partner cannot exhaust our memory."""
    length = resp.content_length
    if length is not None:
        if length > limit:
            raise Violation(f"partner response of {length} bytes is over the {limit} byte limit")
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise Violation(f"partner response is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
