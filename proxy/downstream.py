"""The aiohttp adapter of the data listener: requests become ``Downstream``, ``Reply`` becomes a
response; a resource that matches every request target; and the ``Expect`` handling a proxy needs
(100-continue as aiohttp does it; anything else is a 417)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import partial

from aiohttp import HttpVersion11, web
from multidict import CIMultiDictProxy

from proxy.errors import ExpectationFailed, PayloadTooLarge, ProxyError, RouteNotFound
from proxy.listener import Listener
from proxy.reply import Reply
from proxy.types import Handler


class AiohttpDownstream:
    """``proxy.exchange.Downstream`` over an aiohttp request; the body is read lazily, bounded."""

    __slots__ = ("_request", "method", "path", "headers", "has_body", "_body")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.method = request.method
        # The target as sent, undecoded and without dot-segment removal: %2F, %00 and ".." must stay
        # visible to routing (which refuses them in a parameter). Absolute-form and other targets
        # go through yarl's parse.
        raw = request.raw_path
        self.path = raw.partition("?")[0] if raw.startswith("/") else request.rel_url.raw_path
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


def response(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


class AiohttpListener:
    """The data listener on aiohttp's server: every request goes to ``Listener.handle``, so the
    callback path serves it where it can (aiohttp still runs its own task per request)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    async def handle(self, request: web.Request) -> web.StreamResponse:
        answered: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.listener.handle(AiohttpDownstream(request), partial(_settle, answered))
        return response(await answered)

    def local(self, request: web.Request, error: ProxyError) -> web.Response:
        return response(self.listener.local_reply(AiohttpDownstream(request), error))

    @web.middleware
    async def router_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A target no resource can match (``CONNECT host:port`` has no path at all) still gets the
        envelope and a request id instead of aiohttp's text/plain 404."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return self.local(request, RouteNotFound())

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
            return None
        return self.local(request, ExpectationFailed())


def _settle(answered: asyncio.Future[Reply], reply: Reply) -> None:
    if not answered.done():  # the handler may have been cancelled: the app went away
        answered.set_result(reply)
