"""Adapting aiohttp's server to a proxy: a resource that matches every request target, and the
``Expect`` handling a proxy needs (100-continue as aiohttp does it; anything else is a 417)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion11, web

from proxy.errors import ExpectationFailed, ProxyError

LocalReply = Callable[[web.Request, ProxyError], web.StreamResponse]


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
