"""The data listener's core, whatever server parsed the request: match a route, run its chain
(as plain calls on the route's callback path, ``proxy.fastpath``, when nothing has to be waited
for; otherwise in a task), render the answer or the error as a ``Reply``, and let the runtime's
observers see it. With
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
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from proxy.errors import InvalidPathParameter, ProxyError, RouteNotFound, TokenUnavailable
from proxy.exchange import Downstream, Exchange, UpstreamResponse
from proxy.headers import HttpDate, downstream_headers, upstream_headers
from proxy.otel import Tracing
from proxy.reply import Reply, error_reply
from proxy.runtime import Runtime
from proxy.types import ACCOUNTING_BUG, CompiledRoute, FastState, Observer, ReplyTo

if TYPE_CHECKING:
    from proxy.lane import LaneRoute
from proxy.tracing import child_traceparent, forwarded_tracestate, request_id_from

log = logging.getLogger("proxy.listener")


class Listener:
    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self._runtime = runtime
        self._date = HttpDate()
        self.inflight = 0
        # requests answered as plain calls (proxy.fastpath), and in a task: for tests and tuning
        self.callback_requests = 0
        self.task_requests = 0
        self.lane_requests = 0  # of the callback requests, those the lane (proxy.lane) sent on bytes
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
        """An error before any route matched (no route, a bad path parameter, a bad Expect): the
        envelope and a request id; with tracing on, a SERVER span named by the method alone."""
        started = time.perf_counter()
        runtime = self._runtime()
        headers = downstream.headers
        span = None
        if runtime.tracing.enabled:
            span = runtime.tracing.server_span(
                None, downstream.method, traceparent=headers.get("traceparent"), tracestate=headers.get("tracestate"), path=downstream.path,
            )
        ex = Exchange(
            downstream=downstream,
            method=downstream.method,
            request_id=request_id_from(headers.get("X-Request-Id")),
            language=runtime.local_language(headers.get("Accept-Language")),
            traceparent="",
            started=started,
            upstream_headers=CIMultiDict(),
            span=span,
        )
        reply = error_reply(error, ex.language, ex.request_id)
        if span is not None:
            span.end(reply.status, error.type)
        for observer in runtime.observers:
            observer.on_finish(ex, None, reply.status, None)
        return reply

    def lane(self, target: bytes) -> LaneRoute | None:
        """The current runtime's lane (``proxy.lane``) for a request path, if it has one."""
        runtime = self._runtime()
        lane = runtime.lanes.get(target)
        if lane is not None or not runtime.template_lanes:
            return lane
        if b"%" in target or not target.isascii():
            return None  # escapes: the ordinary path normalises them
        try:
            found = runtime.routes.match(target.decode("ascii"))  # the route the ordinary path would pick
        except ProxyError:
            return None  # a bad parameter: the ordinary path renders the 400
        if found is None or found[1] is None:
            return None
        return runtime.template_lanes.get(found[0].name)

    def handle(self, downstream: Downstream, done: Callable[[Reply], None]) -> None:
        """Answer ``downstream`` through ``done`` (called once; maybe before this returns).

        The entry point of both servers (h1, and the aiohttp adapter through a future): a request no
        route takes is answered here and now; a route with a callback path (``proxy.fastpath``) runs
        as plain calls when it can; the rest run the route's chain (``_run``) in a task.
        """
        started = time.perf_counter()
        runtime = self._runtime()
        try:
            matched = runtime.routes.match(downstream.path)
        except InvalidPathParameter as exc:  # checked before anything else happens
            done(self.local_reply(downstream, exc))
            return
        if matched is None:
            done(self.local_reply(downstream, RouteNotFound()))
            return
        route, params = matched
        ex = self._exchange(runtime, downstream, route, params, started)
        fast = route.fast
        if fast is not None and ex.span is None:
            self.enter()
            observers = runtime.observers
            try:
                taken = fast.run(ex, self, route, observers, done)
            except BaseException as exc:  # raised before anything was sent: the request's answer
                self.callback_requests += 1
                self.finish_fast(_Refused(ex, route, observers, done), None, exc)
                return
            if taken:
                self.callback_requests += 1
                return
            self.leave()
        self.task_requests += 1
        task = asyncio.get_running_loop().create_task(self._run(runtime, route, ex))
        task.add_done_callback(partial(_reply_to, done, ex))

    def _exchange(self, runtime: Runtime, downstream: Downstream, route: CompiledRoute, params: dict[str, str] | None, started: float) -> Exchange:
        """The request's state once a route matched: ids, trace context, the partner's headers."""
        headers = downstream.headers
        request_id = request_id_from(headers.get("X-Request-Id"))
        incoming = headers.get("traceparent")
        tracing = runtime.tracing
        span = None
        if tracing.enabled:  # the one check tracing costs when off
            span = tracing.server_span(
                route.path, downstream.method, traceparent=incoming, tracestate=headers.get("tracestate"),
                path=downstream.path, attributes={"partner_proxy.route": route.name, "partner_proxy.cluster": route.cluster},
            )
        date = self._date() if route.date else None
        if span is None:
            traceparent = child_traceparent(incoming)
            tracestate = forwarded_tracestate(incoming, headers.get("tracestate")) if incoming else None
        else:  # the forwarder replaces it with each attempt's CLIENT span
            traceparent, tracestate = span.traceparent, span.tracestate
        forwarded = upstream_headers(headers, request_id, traceparent, tracestate, route.set_headers, date)
        # positional: keyword arguments cost a slots dataclass ~0.7 us more per request
        ex = Exchange(downstream, downstream.method, request_id, route.language(headers.get("Accept-Language")), traceparent, started, forwarded)
        if span is not None:
            ex.span = span
        if params is not None:
            ex.path_params = params
        if route.query:
            query = downstream.query
            if query:
                ex.upstream_query = {name: query[name] for name in route.query if name in query}
        for observer in runtime.start_observers:
            observer.on_start(ex, route)
        return ex

    def enter(self) -> None:
        """A request is in flight (the drain waits for it)."""
        if not self.inflight:  # set only when inflight drops to 0, so otherwise already clear
            self._idle.clear()
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self._idle.set()

    async def _run(self, runtime: Runtime, route: CompiledRoute, ex: Exchange) -> Reply:
        span = ex.span
        upstream: UpstreamResponse | None = None
        reply: Reply | None = None
        self.enter()
        active = Tracing.activate(span) if span is not None else None  # token fetches and breaker events find the span here
        try:
            upstream = await route.chain(ex)
        except ProxyError as exc:
            reply = self._error(ex, exc)
        except Exception:  # a bug must still answer in the envelope, never a traceback
            log.exception("unhandled error on route %s (request %s)", route.name, ex.request_id)
            reply = self._error(ex, ProxyError("unhandled"))
        else:
            reply = self._answer(ex, upstream)
        finally:
            self.leave()
            if span is not None:
                Tracing.deactivate(active)
                if reply is None:  # cancelled: the app went away
                    span.end(None, "cancelled")
        if span is not None:
            try:
                span.end(
                    reply.status, ex.error_type,
                    {"partner_proxy.partner_code": ex.partner_code, "partner_proxy.token_source": ex.token_source},
                )
            except Exception:
                log.exception(ACCOUNTING_BUG, route.name, ex.request_id)
        account(runtime.observers, ex, route, reply.status, upstream)
        return reply

    def finish_fast(self, call: FastState, upstream: UpstreamResponse | None, error: BaseException | None) -> None:
        """The callback path's end (``proxy.fastpath.FastCall`` hands the outcome here once): the same rendering
        and observers as ``_run`` (no span: tracing is off)."""
        self.leave()
        ex = call.ex
        try:
            if error is None:
                assert upstream is not None
                reply = self._answer(ex, upstream)
            elif isinstance(error, ProxyError):
                reply = self._error(ex, error)
            else:
                if not isinstance(error, asyncio.CancelledError):
                    log.error("unhandled error on route %s (request %s)", call.route.name, ex.request_id, exc_info=error)
                reply = self._error(ex, ProxyError("unhandled"))
        except Exception:  # a bug in rendering: still one answer, never a silent drop
            log.exception("unhandled error answering route %s (request %s)", call.route.name, ex.request_id)
            reply = error_reply(ProxyError("unhandled"), ex.language, ex.request_id)
        account(call.observers, ex, call.route, reply.status, upstream)
        call.done(reply)

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


@dataclass(frozen=True, slots=True)
class _Refused:
    """A callback-path request refused before anything was sent (``FastRoute.run`` raised): what
    ``finish_fast`` needs to answer it (``FastState``), there being no ``FastCall`` yet."""

    ex: Exchange
    route: CompiledRoute
    observers: tuple[Observer, ...]
    done: ReplyTo


def account(observers: tuple[Observer, ...], ex: Exchange, route: CompiledRoute, status: int, upstream: UpstreamResponse | None) -> None:
    """The observers' ``on_finish`` (metrics, the ``partner_call`` line). A bug in one is logged and
    never changes the answer: the partner has already acted (a checkout may have been charged) and
    the app must be told what it said, not a 500. The other observers still run."""
    for observer in observers:
        try:
            observer.on_finish(ex, route, status, upstream)
        except Exception:
            log.exception(ACCOUNTING_BUG, route.name, ex.request_id)


def _reply_to(done: Callable[[Reply], None], ex: Exchange, task: asyncio.Task[Reply]) -> None:
    """``_run`` renders every error; what reaches here is a bug or a cancellation."""
    try:
        reply = task.result()
    except BaseException as exc:
        if not isinstance(exc, asyncio.CancelledError):
            log.error("bug in the data listener's task", exc_info=exc)
        reply = error_reply(ProxyError("unhandled"), ex.language, ex.request_id)
    done(reply)
