"""One request parsed by ``H1Protocol``, as the core's ``proxy.exchange.Downstream``.

The head is complete when the request is dispatched; the body may still be arriving. The protocol
appends body bytes (``feed``) and marks the end (``finish``); ``read_body`` returns at once when
the body is already here (the usual small POST) and waits only otherwise. Memory is bounded twice:
the route's ``limit`` (``PayloadTooLarge`` -> 413, raised as soon as the bytes pass it) and the
listener's ``max_body_buffer`` for a body nobody reads.

The target is decoded like aiohttp did (yarl, so ``/v1/%70roducts`` is ``/v1/products`` and an
absolute-form target is routed by its path); the query string is parsed only when a route asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from multidict import CIMultiDictProxy, MultiDict, MultiDictProxy
from yarl import URL

from proxy.errors import DownstreamError, PayloadTooLarge, ProxyError

_EMPTY_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


class BodyIncomplete(DownstreamError):
    """The body never ended: the client closed, stalled past ``body_timeout``, or broke its framing."""

    status, type, code = 400, "BadRequest", "BODY_INCOMPLETE"

    def message(self, language: str) -> str:
        if language == "id":
            return "Isi permintaan tidak diterima secara lengkap."
        return "The request body did not arrive complete."


def parse_query(query_string: str) -> MultiDictProxy[str]:
    """A raw query string as ``Downstream.query`` gives it (yarl's parsing: ``+`` is a space,
    escapes decoded, a repeated name keeps every value and ``[name]`` is the first)."""
    return URL.build(query=None, query_string=query_string, encoded=True).query if query_string else _EMPTY_QUERY


def split_target(target: str) -> tuple[str, str, str]:
    """(decoded path, raw path, raw query string) of a request target in any of the four forms."""
    if target[:1] == "/" and "?" not in target and "%" not in target and "#" not in target:
        return target, target, ""  # the usual origin-form target: nothing to split or decode
    if target.startswith("/"):
        path, _, rest = target.partition("?")
        query = rest.partition("#")[0]
        raw = path.partition("#")[0]
        if "%" in path or "#" in path:
            path = URL.build(path=raw, encoded=True).path
        return path, raw, query
    if "://" in target:  # absolute-form: RFC 9112 3.2.2, the authority is ignored
        url = URL(target, encoded=True)
        return url.path, url.raw_path, url.raw_query_string
    return target, target, ""  # asterisk-form ("*") and authority-form ("host:port"): never a route


class H1Request:
    """``Downstream`` over one parsed HTTP/1.x request."""

    __slots__ = (
        "method", "path", "decoded_path", "headers", "has_body", "version", "keep_alive", "query_string", "local_error",
        "_query", "_body", "complete", "_too_large", "_waiter", "_wait_limit", "discard", "content_length",
        "max_buffer", "_abandoned",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: CIMultiDictProxy[str],
        version: str,
        keep_alive: bool,
        has_body: bool,
        content_length: int | None,
        max_buffer: int,
    ) -> None:
        self.method = method
        # ``path`` is the target as sent, undecoded and without dot-segment removal, as the
        # ``Downstream`` contract says: routing must tell ``a%2Fb`` from ``a/b`` and see ``..``
        # (it decodes only unreserved escapes itself). ``decoded_path`` is for humans.
        self.decoded_path, self.path, self.query_string = split_target(target)
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.has_body = has_body
        self.content_length = content_length
        self.max_buffer = max_buffer
        self.local_error: ProxyError | None = None  # answered by Listener.local_reply (e.g. a bad Expect)
        self._query: MultiDictProxy[str] | None = None
        self._body = bytearray()
        self.complete = False  # the body ended (set by the protocol through finish)
        self._too_large = False
        self._waiter: asyncio.Future[None] | None = None
        self._wait_limit = 0
        self._abandoned = False
        self.discard = False  # answered already: the rest of the body is dropped

    # -- Downstream -----------------------------------------------------------------------------------

    @property
    def query(self) -> Mapping[str, str]:
        if self._query is None:
            self._query = parse_query(self.query_string)
        return self._query

    async def read_body(self, limit: int) -> bytes:
        length = self.content_length
        if length is not None and length > limit:
            raise PayloadTooLarge(f"body of {length} bytes is over the route's {limit} byte limit")
        while True:
            if self._too_large or len(self._body) > limit:
                raise PayloadTooLarge(f"body over the route's {limit} byte limit")
            if self.complete:
                return bytes(self._body)
            if self._abandoned:
                raise BodyIncomplete("the body did not end")
            self._waiter = asyncio.get_running_loop().create_future()
            self._wait_limit = limit
            try:
                await self._waiter
            finally:
                self._waiter = None

    # -- fed by the protocol --------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.discard or self._too_large:
            return
        body = self._body
        body += data
        if len(body) > self.max_buffer:
            self._too_large = True
            body.clear()
            self._wake()
        elif self._waiter is not None and len(body) > self._wait_limit:
            self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def abandon(self) -> None:
        """The body will never end: a waiting (or later) ``read_body`` fails with ``BodyIncomplete``."""
        self._abandoned = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(BodyIncomplete("the body did not end"))

    def drop_body(self) -> None:
        """Answered: nothing will read the body any more."""
        self.discard = True
        self._body = bytearray()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
