"""Adapting aiohttp's server to a proxy: the request as the chain sees it (``Downstream``), a
resource that matches every request target, and the ``Expect`` handling a proxy needs
(100-continue as aiohttp does it; anything else is a 417)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import HttpVersion11, web
from multidict import CIMultiDictProxy

from proxy.errors import ExpectationFailed, PayloadTooLarge, ProxyError

LocalReply = Callable[[web.Request, ProxyError], web.StreamResponse]


class AiohttpDownstream:
    """``proxy.exchange.Downstream`` over an aiohttp request; the body is read lazily, bounded."""

    __slots__ = ("_request", "method", "path", "headers", "has_body", "_body")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.method = request.method
        self.path = request.path
        self.headers: CIMultiDictProxy[str] = request.headers
        self.has_body = request.body_exists
        self._body: bytes | None = None

    @property
    def query(self) -> Mapping[str, str]:
        return self._request.rel_url.query

    async def read_body(self, limit: int) -> bytes:
        if self._body is not None:
            return self._body
        length = self._request.content_length
        if length is not None and length > limit:
            raise PayloadTooLarge(f"body of {length} bytes is over the route's {limit} byte limit")
        chunks: list[bytes] = []
        size = 0
        async for chunk in self._request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body over the route's {limit} byte limit")
            chunks.append(chunk)
        self._body = b"".join(chunks)
        return self._body


class CatchAllResource(web.PlainResource):
    """Matches every request target (aiohttp's own resources need a path starting with "/")."""

    def __init__(self) -> None:
        super().__init__("/", name="partner-proxy-catch-all")

    def _match(self, path: str) -> dict[str, str] | None:
        return {}

    def raw_match(self, path: str) -> bool:
        return True


def expect_handler(local_reply: LocalReply) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    async def expect(request: web.Request) -> web.StreamResponse | None:
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
            return None
        return local_reply(request, ExpectationFailed())

    return expect
