"""The data listener's handler: match a route, run its chain, render the answer or the error.

Everything that depends on config is read from the current ``Runtime``, taken once per request: a
reload that swaps the runtime mid-request does not change the request's config. What is logged and
counted is the runtime's observers' business; what headers cross is ``proxy.headers``'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDict

from proxy.downstream import AiohttpDownstream
from proxy.errors import ProxyError, RouteNotFound, TokenUnavailable
from proxy.exchange import Exchange, UpstreamResponse
from proxy.headers import downstream_headers, upstream_headers
from proxy.reply import error_response
from proxy.runtime import Runtime
from proxy.tracing import child_traceparent, request_id_from
from proxy.types import Handler

log = logging.getLogger("proxy.listener")


class Listener:
    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self._runtime = runtime
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """For the drain: True once no request is in flight, False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def local_reply(self, request: web.Request, error: ProxyError) -> web.Response:
        """An error before any route matched (no route, a bad Expect): the envelope and a request id."""
        started = time.perf_counter()
        runtime = self._runtime()
        headers = request.headers
        ex = Exchange(
            downstream=AiohttpDownstream(request),
            method=request.method,
            request_id=request_id_from(headers.get("X-Request-Id")),
            language=runtime.local_language(headers.get("Accept-Language")),
            traceparent="",
            started=started,
            upstream_headers=CIMultiDict(),
        )
        response = error_response(error, ex.language, ex.request_id)
        for observer in runtime.observers:
            observer.on_finish(ex, None, response.status, None)
        return response

    @web.middleware
    async def router_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A target no resource can match (``CONNECT host:port`` has no path at all) still gets the
        envelope and a request id instead of aiohttp's text/plain 404."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return self.local_reply(request, RouteNotFound())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        runtime = self._runtime()
        route = runtime.routes.match(request.path)
        if route is None:
            return self.local_reply(request, RouteNotFound())
        headers = request.headers
        request_id = request_id_from(headers.get("X-Request-Id"))
        traceparent = child_traceparent(headers.get("traceparent"))
        downstream = AiohttpDownstream(request)
        ex = Exchange(
            downstream=downstream,
            method=downstream.method,
            request_id=request_id,
            language=route.language(headers.get("Accept-Language")),
            traceparent=traceparent,
            started=started,
            upstream_headers=upstream_headers(headers, request_id, traceparent),
        )
        if route.query:
            query = downstream.query
            ex.upstream_query = {name: query[name] for name in route.query if name in query}
        for observer in runtime.start_observers:
            observer.on_start(ex, route)
        upstream: UpstreamResponse | None = None
        self.inflight += 1
        self._idle.clear()
        try:
            upstream = await route.chain(ex)
        except ProxyError as exc:
            response = self._error(ex, exc)
        except Exception:  # a bug must still answer in the envelope, never a traceback
            log.exception("unhandled error on route %s (request %s)", route.name, request_id)
            response = self._error(ex, ProxyError("unhandled"))
        else:
            response = self._answer(ex, upstream)
        finally:
            self.inflight -= 1
            if not self.inflight:
                self._idle.set()
        for observer in runtime.observers:
            observer.on_finish(ex, route, response.status, upstream)
        return response

    def _answer(self, ex: Exchange, upstream: UpstreamResponse) -> web.Response:
        verdict = upstream.verdict
        if verdict is not None and verdict.error is not None:
            return self._error(ex, verdict.error)
        return web.Response(status=upstream.status, body=upstream.body, headers=downstream_headers(ex.request_id, upstream.content_type, upstream.headers))

    def _error(self, ex: Exchange, error: ProxyError) -> web.Response:
        if ex.error_type is None:
            ex.error_type = error.type
        if isinstance(error, TokenUnavailable):
            ex.token_source = ex.token_source or "none"
        return error_response(error, ex.language, ex.request_id)


