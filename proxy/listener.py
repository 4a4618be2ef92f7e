"""The data listener's core, whatever server parsed the request: match a route, run its chain,
render the answer or the error as a ``Reply``, and let the runtime's observers see it. With
tracing on, the request's SERVER span starts and ends here (the forwarder adds a CLIENT span per
partner attempt under it).

Everything that depends on config is read from the current ``Runtime``, taken once per request: a
reload that swaps the runtime mid-request does not change the request's config. What is logged and
counted is the observers' business; what headers cross is ``proxy.headers``'. The aiohttp adapter
(``proxy.downstream``) turns requests into ``Downstream`` and replies into responses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from multidict import CIMultiDict

from proxy.errors import InvalidPathParameter, ProxyError, RouteNotFound, TokenUnavailable
from proxy.exchange import Downstream, Exchange, UpstreamResponse
from proxy.headers import HttpDate, downstream_headers, upstream_headers
from proxy.otel import Tracing
from proxy.reply import Reply, error_reply
from proxy.runtime import Runtime
from proxy.tracing import child_traceparent, forwarded_tracestate, request_id_from

log = logging.getLogger("proxy.listener")


class Listener:
    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self._runtime = runtime
        self._date = HttpDate()
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

    def local_reply(self, downstream: Downstream, error: ProxyError) -> Reply:
        """An error before any route matched (no route, a bad Expect): the envelope and a request id."""
        started = time.perf_counter()
        runtime = self._runtime()
        headers = downstream.headers
        ex = Exchange(
            downstream=downstream,
            method=downstream.method,
            request_id=request_id_from(headers.get("X-Request-Id")),
            language=runtime.local_language(headers.get("Accept-Language")),
            traceparent="",
            started=started,
            upstream_headers=CIMultiDict(),
        )
        reply = error_reply(error, ex.language, ex.request_id)
        for observer in runtime.observers:
            observer.on_finish(ex, None, reply.status, None)
        return reply

    async def dispatch(self, downstream: Downstream) -> Reply:
        started = time.perf_counter()
        runtime = self._runtime()
        try:
            matched = runtime.routes.match(downstream.path)
        except InvalidPathParameter as exc:  # checked before anything else happens
            return self.local_reply(downstream, exc)
        if matched is None:
            return self.local_reply(downstream, RouteNotFound())
        route, params = matched
        headers = downstream.headers
        request_id = request_id_from(headers.get("X-Request-Id"))
        tracing = runtime.tracing
        span = None
        if tracing.enabled:  # the one check tracing costs when off
            span = tracing.server_span(
                route.path, downstream.method, traceparent=headers.get("traceparent"), tracestate=headers.get("tracestate"),
                path=downstream.path, attributes={"partner_proxy.route": route.name, "partner_proxy.cluster": route.cluster},
            )
        date = self._date() if route.date else None
        if span is None:
            traceparent = child_traceparent(headers.get("traceparent"))
            tracestate = forwarded_tracestate(headers.get("traceparent"), headers.get("tracestate"))
        else:  # the forwarder replaces it with each attempt's CLIENT span
            traceparent, tracestate = span.traceparent, span.tracestate
        forwarded = upstream_headers(headers, request_id, traceparent, tracestate, route.set_headers, date)
        ex = Exchange(
            downstream=downstream,
            method=downstream.method,
            request_id=request_id,
            language=route.language(headers.get("Accept-Language")),
            traceparent=traceparent,
            started=started,
            upstream_headers=forwarded,
            span=span,
            path_params=params,
        )
        if route.query:
            query = downstream.query
            ex.upstream_query = {name: query[name] for name in route.query if name in query}
        for observer in runtime.start_observers:
            observer.on_start(ex, route)
        upstream: UpstreamResponse | None = None
        reply: Reply | None = None
        if not self.inflight:  # set only when inflight drops to 0, so otherwise already clear
            self._idle.clear()
        self.inflight += 1
        active = Tracing.activate(span) if span is not None else None  # token fetches and breaker events find the span here
        try:
            upstream = await route.chain(ex)
        except ProxyError as exc:
            reply = self._error(ex, exc)
        except Exception:  # a bug must still answer in the envelope, never a traceback
            log.exception("unhandled error on route %s (request %s)", route.name, request_id)
            reply = self._error(ex, ProxyError("unhandled"))
        else:
            reply = self._answer(ex, upstream)
        finally:
            self.inflight -= 1
            if not self.inflight:
                self._idle.set()
            if span is not None:
                Tracing.deactivate(active)
                if reply is None:  # cancelled: the app went away
                    span.end(None, "cancelled")
        if span is not None:
            span.end(
                reply.status, ex.error_type,
                {"partner_proxy.partner_code": ex.partner_code, "partner_proxy.token_source": ex.token_source},
            )
        for observer in runtime.observers:
            observer.on_finish(ex, route, reply.status, upstream)
        return reply

    def _answer(self, ex: Exchange, upstream: UpstreamResponse) -> Reply:
        verdict = upstream.verdict
        if verdict is not None and verdict.error is not None:
            return self._error(ex, verdict.error)
        return Reply(upstream.status, downstream_headers(ex.request_id, upstream.content_type, upstream.headers), upstream.body)

    def _error(self, ex: Exchange, error: ProxyError) -> Reply:
        if ex.error_type is None:
            ex.error_type = error.type
        if isinstance(error, TokenUnavailable):
            ex.token_source = ex.token_source or "none"
        return error_reply(error, ex.language, ex.request_id)
