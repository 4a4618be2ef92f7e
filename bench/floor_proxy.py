"""The floor: the least a Python reverse proxy on uvloop and httptools can cost per request.

A measuring stick for ``bench/run.py``, not a product: it forwards every request as
``GET <upstream path>`` on a pooled keep-alive connection and sends back the status, the
Content-Type and the body. No validation, no credentials, no limits, no logs, no metrics, no
error handling beyond dropping a broken connection. What it does do is what the sidecar's own
data listener does underneath: llhttp (httptools) parsing both directions, asyncio Protocols with
plain callbacks and no task per request, a keep-alive pool, and writes corked until the loop
iteration's reads are done (``proxy.corking`` explains why that matters on loopback).

So the distance between this row and nginx's is the price of Python, uvloop and the kernel's
work; the distance between this row and partner-proxy's is the price of partner-proxy's features
and of how they are built.

    python bench/floor_proxy.py --port 8081 --upstream http://127.0.0.1:8090/v2/product-list
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

Answer = Callable[[int, bytes, bytes], None]


class Writes:
    """Writes of one loop iteration, flushed after its reads (one ``call_soon`` per iteration)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[asyncio.Transport, bytes]] = []
        self.scheduled = False

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        self.pending.append((transport, data))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        self.scheduled = False
        for transport, data in pending:
            if not transport.is_closing():
                transport.write(data)


class Upstream(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: Answer | None = None
        self.content_type = b""
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.answer is not None:
            self.answer, answer = None, self.answer
            answer(502, b"text/plain", b"upstream closed")

    def on_message_begin(self) -> None:
        self.content_type = b""
        self.body = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 12 and name.lower() == b"content-type":
            self.content_type = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callback: llhttp resets after it

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.complete and self.answer is not None:
            self.answer, answer = None, self.answer
            if self.keep_alive:
                self.pool.idle.append(self)
            elif self.transport is not None:
                self.transport.close()
            answer(self.parser.get_status_code(), self.content_type, b"".join(self.body))


class Pool:
    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, writes: Writes) -> None:
        self.loop, self.host, self.port, self.writes = loop, host, port, writes
        self.idle: deque[Upstream] = deque()

    def send(self, request: bytes, answer: Answer) -> None:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None:
                conn.answer = answer
                self.writes.write(conn.transport, request)
                return
        self.loop.create_task(self._connect(request, answer))

    async def _connect(self, request: bytes, answer: Answer) -> None:
        try:
            transport, conn = await self.loop.create_connection(lambda: Upstream(self), self.host, self.port)
        except OSError:
            answer(502, b"text/plain", b"upstream unreachable")
            return
        conn.answer = answer
        self.writes.write(transport, request)


class Downstream(asyncio.Protocol):
    def __init__(self, pool: Pool, head: bytes, writes: Writes) -> None:
        self.pool, self.head, self.writes = pool, head, writes
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self.pool.send(self.head, self.answer)

    def answer(self, status: int, content_type: bytes, body: bytes) -> None:
        if self.transport is not None:
            self.writes.write(self.transport, b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                              % (status, content_type, len(body), body))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, upstream: str) -> None:
    loop = asyncio.get_running_loop()
    url = urlsplit(upstream)
    host, up_port = url.hostname or "127.0.0.1", url.port or 80
    head = f"GET {url.path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\nAccept-Encoding: identity\r\n\r\n".encode()
    writes = Writes(loop)
    pool = Pool(loop, host, up_port, writes)
    server = await loop.create_server(lambda: Downstream(pool, head, writes), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port/path, fetched with GET for every request")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve(args.port, args.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
