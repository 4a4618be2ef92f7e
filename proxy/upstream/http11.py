"""A lean HTTP/1.1 client for the partner hot path: a keep-alive pool, a prebuilt request, a strict parser.

Why not aiohttp's ClientSession here (it still serves the token endpoint and the notifiers): on the
benchmark machine its per-request machinery (request object, header merging, timers, response
object, stream reader) cost more CPU than everything else the sidecar does, and a sidecar pays it
on every call. A proxy only needs a small part of HTTP: send one request on a pooled connection,
read one response whose framing is unambiguous, and hand back the status, the content type and
the body. That part is written here, strictly:

- framing: Content-Length or chunked; both at once, a bad length, a bad chunk, a header block over
  ``MAX_HEAD`` or a body over the cluster's ``max_response_bytes`` is a protocol error (502), so
  a confused or hostile partner can neither smuggle a second response nor exhaust memory;
- 1xx answers are skipped; 204/304 and HEAD have no body; no length means "read until close";
- a connection is reused only when the response was HTTP/1.1, completely read and not
  ``Connection: close``; one that closes while idle is dropped from the pool, never written to;
- nothing is retried here: retries belong to the forwarder, where they are counted and budgeted;
- redirects are answers like any other (the forwarder never follows them).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass

from yarl import URL

from proxy.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnreachable

MAX_HEAD = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(slots=True)
class Response:
    status: int
    content_type: str
    body: bytes


class _Framing(Exception):
    """Raised inside the parser; becomes UpstreamProtocolError at the boundary."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; parses exactly one response per request."""

    def __init__(self, max_body: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.max_body = max_body
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._head_only = False
        self.reusable = False
        # parser state for the response being read
        self._status = 0
        self._content_type = ""
        self._length: int | None = None
        self._chunked = False
        self._keep_alive = False
        self._in_body = False
        self._body = bytearray()
        self._chunk_left = -1  # -1: expecting a chunk-size line
        self._until_close = False

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._until_close and self._in_body:
                waiter.set_result(Response(self._status, self._content_type, bytes(self._body)))
            else:
                waiter.set_exception(UpstreamUnreachable("connection closed before a complete response"))

    def eof_received(self) -> bool | None:
        return False  # close the transport: connection_lost settles the waiter

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # bytes nobody asked for (e.g. after a complete response): the connection is unusable
            self.reusable = False
            self.close()
            return
        self._buf += data
        try:
            self._parse()
        except _Framing as exc:
            self.close()
            if not self._waiter.done():
                self._waiter.set_exception(UpstreamProtocolError(str(exc)))

    # -- requests ---------------------------------------------------------------------------------

    def send(self, request: bytes, head_only: bool) -> asyncio.Future[Response]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._head_only = head_only
        self.reusable = False
        self._reset_response()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- parser -----------------------------------------------------------------------------------

    def _reset_response(self) -> None:
        self._status = 0
        self._content_type = ""
        self._length = None
        self._chunked = False
        self._keep_alive = False
        self._in_body = False
        self._body = bytearray()
        self._chunk_left = -1
        self._until_close = False

    def _parse(self) -> None:
        while not self._in_body:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise _Framing(f"response head over {MAX_HEAD} bytes")
                return
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            if self._parse_head(head):
                self._in_body = True  # a final response; 1xx heads loop to the next head
        self._read_body()

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise _Framing("bad status line")
        status = int(parts[1])
        if status < 100:
            raise _Framing("bad status code")
        keep_alive = parts[0] == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        content_type = ""
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or b" " in name or b"\t" in name:
                raise _Framing("bad header line")  # also rejects obs-fold continuation lines
            key = name.lower()
            value = value.strip()
            if key == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise _Framing("bad or conflicting Content-Length")
                length = int(value)
            elif key == b"transfer-encoding":
                codings = [c.strip().lower() for c in value.split(b",")]
                if codings[-1] != b"chunked" or len(codings) != 1:
                    raise _Framing("unsupported Transfer-Encoding")
                chunked = True
            elif key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        if 100 <= status < 200:
            return False  # interim response: the final one follows
        if chunked and length is not None:
            raise _Framing("both Content-Length and Transfer-Encoding")  # a smuggling shape
        if length is not None and length > self.max_body:
            raise _Framing(f"partner response of {length} bytes is over the {self.max_body} byte limit")
        self._status, self._content_type, self._keep_alive = status, content_type, keep_alive
        if self._head_only or status in _NO_BODY_STATUSES:
            self._length, self._chunked = 0, False
        else:
            self._length, self._chunked = length, chunked
            self._until_close = length is None and not chunked
            if self._until_close:
                self._keep_alive = False
        return True

    def _read_body(self) -> None:
        if self._chunked:
            self._read_chunks()
            return
        if self._until_close:
            self._body += self._buf
            self._buf.clear()
            if len(self._body) > self.max_body:
                raise _Framing(f"partner response is over the {self.max_body} byte limit")
            return  # completed by connection_lost
        assert self._length is not None
        if len(self._buf) < self._length:
            return
        body = bytes(self._buf[: self._length])
        extra = len(self._buf) > self._length
        self._finish(body, reusable=self._keep_alive and not extra)

    def _read_chunks(self) -> None:
        buf = self._buf
        while True:
            if self._chunk_left == -1:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise _Framing("chunk size line too long")
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text) or len(size_text) > 16:
                    raise _Framing("bad chunk size")
                del buf[: end + 2]
                size = int(size_text, 16)
                if size == 0:
                    self._chunk_left = -2  # trailers follow
                else:
                    if len(self._body) + size > self.max_body:
                        raise _Framing(f"partner response is over the {self.max_body} byte limit")
                    self._chunk_left = size
            if self._chunk_left == -2:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise _Framing("trailers too long")
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if line:
                    continue  # a trailer field: ignored
                self._finish(bytes(self._body), reusable=self._keep_alive and not buf)
                return
            if len(buf) < self._chunk_left + 2:
                return
            if buf[self._chunk_left : self._chunk_left + 2] != b"\r\n":
                raise _Framing("chunk not followed by CRLF")
            self._body += buf[: self._chunk_left]
            del buf[: self._chunk_left + 2]
            self._chunk_left = -1

    def _finish(self, body: bytes, *, reusable: bool) -> None:
        self.reusable = reusable
        self._buf.clear()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._content_type, body))


class Http11Pool:
    """Keep-alive connections to one origin. The cluster's in-flight cap bounds how many exist."""

    def __init__(self, base_url: str, *, connect_timeout: float, max_body: int, max_idle: int) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.host = url.host
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
        self._idle: deque[_Connection] = deque()
        self._closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.max_body), self.host, self.port,
                    ssl=self.ssl, server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError as exc:
            raise UpstreamUnreachable(f"connect timed out after {self.connect_timeout}s") from exc
        except ssl.SSLError as exc:
            raise UpstreamProtocolError(f"TLS handshake failed: {exc.__class__.__name__}") from exc
        except OSError as exc:
            raise UpstreamUnreachable(f"connect failed: {exc.__class__.__name__}") from exc
        return conn

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()  # most recently used first: the likeliest to be alive
            if not conn.closed:
                return conn
        return None

    def request_bytes(self, method: str, path_qs: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        lines = [f"{method} {path_qs} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "replace")
        return head + body if body else head

    async def request(self, request: bytes, *, head_only: bool, timeout: float) -> Response:
        """Send one request and read its response within ``timeout`` seconds (connect included)."""
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = self._take_idle() or await self._connect()
                response = await conn.send(request, head_only)
        except TimeoutError as exc:
            if conn is not None:
                conn.abort()  # its state is unknown: never reuse it
            raise UpstreamTimeout(f"no complete answer within {timeout}s") from exc
        except BaseException:
            if conn is not None:
                conn.abort()
            raise
        if conn.reusable and not conn.closed and not self._closed and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
