"""The terminal of every chain: retries, the breaker guard, the connection thresholds and metrics.

The wire itself is the cluster's ``Transport`` (``proxy.upstream.http11`` or
``proxy.upstream.aiohttp_client``), which already turned its exceptions into our error types
(one table each). Here: build the ``UpstreamRequest`` once per attempt loop, wait (bounded) for a
connection slot, guard each attempt with the breaker, retry idempotent methods within the retry
budget, check every header value handed back to the app, and count.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from functools import partial

from yarl import URL

from proxy.errors import ProxyError, UpstreamError
from proxy.exchange import Exchange, UpstreamResponse
from proxy.headers import BadHeaderValue, answer_headers, wire_headers
from proxy.otel import Span, Tracing
from proxy.types import Done, report_to
from proxy.upstream.cluster import Cluster
from proxy.upstream.transport import IDEMPOTENT, Event, Phase, UpstreamAnswer, UpstreamRequest, wire_error

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
DEFAULT_BODY_LIMIT = 1024 * 1024  # a body route without its own limit (the body filter sets one)


class Forwarder:
    """Built once per route: the upstream URL and the partner headers passed back are prepared here."""

    def __init__(
        self,
        cluster: Cluster,
        url: URL,
        pass_back: frozenset[str] = frozenset(),
        path_template: str | None = None,
        *,
        tracing: Tracing | None = None,
    ) -> None:
        self.cluster = cluster
        self.url = url
        # "/api/v2/order/{request_id}": the cluster's base path + the route's upstream template,
        # filled per request with values routing has checked (unreserved characters only).
        self.path_template = path_template
        self.tracing = tracing if tracing is not None else Tracing.disabled()
        self._span_attrs = {"server.address": url.host, "server.port": url.port, "partner_proxy.cluster": cluster.name}
        self.pass_back = pass_back  # lower-case names of partner headers handed back besides Content-Type
        retry = cluster.config.retry
        self.retry_on = frozenset(retry.retry_on)
        self.max_attempts = 1 + retry.attempts
        self._status_label_cache: dict[int, str] = {}
        self._durations: dict[str, object] = {}
        self._raw_path = url.raw_path_qs

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        method = ex.method
        if ex.body is None and method in BODY_METHODS and ex.downstream.has_body:
            # Read after validation (a 405 must not wait for a body) and before taking a slot;
            # a route's body filter may have read it already, under the route's own limit.
            ex.body = await ex.downstream.read_body(DEFAULT_BODY_LIMIT)
        upstream = self._request(ex)
        cluster = self.cluster
        cluster.enter()
        try:
            cluster.budget.on_request()
            return await self._attempts(ex, upstream, 0)
        finally:
            cluster.leave()

    def _request(self, ex: Exchange) -> UpstreamRequest:
        return UpstreamRequest(ex.method, self._target(ex), wire_headers(ex.upstream_headers), ex.body or b"")

    async def _attempts(self, ex: Exchange, upstream: UpstreamRequest, attempt: int) -> UpstreamResponse:
        """Attempts ``attempt + 1``, ``attempt + 2``... until one answers or may not be retried."""
        while True:
            attempt += 1
            ex.attempts += 1
            ex.breaker_state = self.cluster.breaker.state
            span = ex.span
            if span is None:
                request, client = upstream, None
            else:
                request, client = self._traced(ex, span, upstream)
            try:
                response = await self._attempt(request)
            except UpstreamError as exc:
                if client is not None:
                    client.end(None, exc.type)
                reason = self._retry_reason(ex, attempt, exc, None)
                if reason is None:
                    raise
                if span is not None:
                    span.add_event("retry", {"partner_proxy.attempt": ex.attempts, "partner_proxy.retry_reason": reason})
                await self._backoff(attempt)
                continue
            except BaseException as exc:  # the breaker refused, the pool overflowed, or the app went away
                if client is not None:
                    client.end(None, exc.type if isinstance(exc, ProxyError) else "cancelled")
                raise
            if client is not None:
                client.end(response.status)
            reason = self._retry_reason(ex, attempt, None, response)
            if reason is None:
                return response
            if span is not None:
                span.add_event("retry", {"partner_proxy.attempt": ex.attempts, "partner_proxy.retry_reason": reason})
            await self._backoff(attempt)

    # -- the callback path (proxy.fastpath): the first attempt without a coroutine --------------------

    def can_start_now(self) -> bool:
        """True when ``start`` will not wait: an http11 pool with a connection ready, a free slot."""
        pool = self.cluster.pool
        return pool is not None and self.cluster.limits.can_take_now() and pool.has_idle()

    def start(self, ex: Exchange, done: Done) -> None:
        """The first attempt as plain calls, only right after ``can_start_now()`` said True with
        nothing in between that enters the cluster or takes a connection slot (``FastRoute.run``
        peeks at the token and attaches it; neither touches the cluster). Tracing off, no body.

        Raises what ``__call__`` would raise before anything is sent (an ``UpstreamProtocolError``
        for a header we must not send, ``CircuitOpen``). Otherwise ``done(response, None)`` or
        ``done(None, error)`` is called once, from the connection's callbacks, or after a retry that
        runs as ``_attempts`` in a task.
        """
        upstream = self._request(ex)
        cluster = self.cluster
        ex.attempts += 1
        ex.breaker_state = cluster.breaker.state
        trial, started = self.open_now()
        try:
            pool = cluster.pool
            assert pool is not None
            on_answer = partial(self.answered, ex, upstream, trial, started, done)
            if not pool.start(upstream, cluster.config.timeout, on_answer):  # cannot happen either (has_idle)
                on_answer(None, wire_error(Phase.NOT_SENT, Event.CLOSED, ex.method, "no pooled connection ready"))
        except BaseException:
            cluster.limits.leave()
            raise

    def open_now(self) -> tuple[bool, float]:
        """The first callback-path attempt's admission, right after ``can_start_now()``: the cluster
        entered and a slot taken (``take_now``: ``enter()`` and ``try_acquire()`` without their
        checks, which can_start_now() just made), the request counted in the retry budget, the
        breaker asked (``CircuitOpen`` raised with everything undone). The connection itself is
        still checked by the pool: an idle one may have gone stale."""
        limits = self.cluster.limits
        limits.take_now()
        try:
            self.cluster.budget.on_request()
            return self._open_attempt()
        except BaseException:
            limits.leave()
            raise

    def succeeded(self, trial: bool, started: float, status: int) -> None:
        """A callback-path attempt that ended in a checked answer under 500 which nobody retries
        (``proxy.lane``'s end): what ``_settle`` and ``answered`` record for it."""
        self.cluster.breaker.record(trial, None)
        self._close_attempt(self._status_label(status), started)
        self.cluster.leave()

    def answered(
        self, ex: Exchange, upstream: UpstreamRequest, trial: bool, started: float,
        done: Done,
        answer: UpstreamAnswer | None, exc: BaseException | None,
    ) -> None:
        """The first callback-path attempt's outcome (``start``'s, or one ``proxy.lane`` hands on):
        settled, then retried in a task if it may be, else ``done``."""
        try:
            response = self._settle(upstream.method, trial, started, answer, exc)
        except UpstreamError as failed:
            self._answer_failed(ex, upstream, done, failed)
            return
        except BaseException as bug:  # raised as it is, like __call__ would: the listener answers 500
            self.cluster.leave()
            done(None, bug)
            return
        if self._retry_reason(ex, 1, None, response) is None:
            self.cluster.leave()
            done(response, None)
            return
        self._retry(ex, upstream, done)

    def _answer_failed(self, ex: Exchange, upstream: UpstreamRequest, done: Done, error: UpstreamError) -> None:
        """The first callback-path attempt failed: retried in a task if it may be, else the request's error."""
        if self._retry_reason(ex, 1, error, None) is None:
            self.cluster.leave()
            done(None, error)
            return
        self._retry(ex, upstream, done)

    def _retry(self, ex: Exchange, upstream: UpstreamRequest, done: Done) -> None:
        task = asyncio.get_running_loop().create_task(self._retried(ex, upstream))
        task.add_done_callback(partial(report_to, done))

    async def _retried(self, ex: Exchange, upstream: UpstreamRequest) -> UpstreamResponse:
        try:
            await self._backoff(1)
            return await self._attempts(ex, upstream, 1)
        finally:
            self.cluster.leave()

    # -- one attempt ------------------------------------------------------------------------------------

    def _retry_reason(self, ex: Exchange, attempt: int, exc: UpstreamError | None, response: UpstreamResponse | None) -> str | None:
        """Why attempt ``attempt + 1`` is made (and counted, and budgeted), or None: no retry.
        POST and PATCH are never sent twice by the forwarder: the partner may have acted on the first."""
        if attempt >= self.max_attempts or ex.method not in IDEMPOTENT:
            return None
        if exc is not None:
            if exc.retryable and exc.kind in self.retry_on and self._breaker_allows() and self._may_retry(exc.kind):
                return exc.kind
            return None
        assert response is not None
        if response.status >= 500 and "5xx" in self.retry_on and self._breaker_allows() and self._may_retry("5xx"):
            return f"status_{response.status}"
        return None

    def _traced(self, ex: Exchange, span: Span, upstream: UpstreamRequest) -> tuple[UpstreamRequest, Span | None]:
        """This attempt's CLIENT span, and the request carrying its id in ``traceparent``."""
        client = self.tracing.client_span(
            span, f"{ex.method} {self.cluster.name}", attempt=ex.attempts, attributes={"http.request.method": ex.method, **self._span_attrs}
        )
        if client is None:  # this runtime's tracer was closed by a reload mid-request
            return upstream, None
        traceparent = ex.traceparent = client.traceparent
        headers = [(n, traceparent) if n.lower() == "traceparent" else (n, v) for n, v in upstream.headers]
        return UpstreamRequest(upstream.method, upstream.target, headers, upstream.body), client

    def _breaker_allows(self) -> bool:
        # The attempt that tripped the breaker answers with its own failure, not a 503 for its retry.
        return self.cluster.breaker.state != "open"

    def _may_retry(self, reason: str) -> bool:
        if self.cluster.budget.try_spend():
            self.cluster.metrics.retries.labels(self.cluster.name, reason).inc()
            return True
        return False

    async def _backoff(self, attempt: int) -> None:
        retry = self.cluster.config.retry
        delay = min(retry.backoff_max, retry.backoff_base * (2 ** (attempt - 1)))
        await asyncio.sleep(random.uniform(0, delay))  # full jitter

    async def _attempt(self, request: UpstreamRequest) -> UpstreamResponse:
        limits = self.cluster.limits
        if not limits.try_acquire():
            await limits.acquire()  # bounded: max_pending_requests, pending_timeout -> ClusterOverflow
        trial, started = self._open_attempt()
        try:
            answer = await self.cluster.transport.send(request, timeout=self.cluster.config.timeout)
        except UpstreamError as exc:
            return self._settle(request.method, trial, started, None, exc)
        except BaseException:  # cancelled (the app went away) or a bug: says nothing about the partner
            self.cluster.breaker.release(trial)
            self._close_attempt("error", started)
            raise
        return self._settle(request.method, trial, started, answer, None)

    def _open_attempt(self) -> tuple[bool, float]:
        """With a connection slot held: the breaker's admission (``CircuitOpen`` frees the slot)."""
        started = time.perf_counter()
        try:
            trial = self.cluster.breaker.admit()
        except BaseException:
            self._close_attempt("error", started)
            raise
        return trial, started

    def _settle(self, method: str, trial: bool, started: float, answer: UpstreamAnswer | None, exc: BaseException | None) -> UpstreamResponse:
        """How an admitted attempt ended: told to the breaker, the slot freed, its duration observed;
        the checked answer returned, or the attempt's ``UpstreamError`` raised."""
        breaker = self.cluster.breaker
        status_label = "error"
        try:
            if exc is not None:
                if not isinstance(exc, UpstreamError):
                    breaker.release(trial)  # a bug: says nothing about the partner
                    raise exc
                if exc.kind == "timeout":
                    status_label = "timeout"
                breaker.record(trial, exc.kind)
                raise exc
            assert answer is not None
            try:
                response = _checked(answer, method, self.pass_back)
            except UpstreamError as violation:
                breaker.record(trial, violation.kind)
                raise
            status_label = self._status_label(answer.status)
            breaker.record(trial, "5xx" if answer.status >= 500 else None)
            return response
        finally:
            self._close_attempt(status_label, started)

    def _close_attempt(self, status_label: str, started: float) -> None:
        cluster = self.cluster
        cluster.limits.release()
        hist = self._durations.get(status_label)
        if hist is None:
            hist = self._durations[status_label] = cluster.metrics.hot_histogram(cluster.metrics.upstream_duration, cluster.name, status_label)
        hist.observe(time.perf_counter() - started)  # type: ignore[attr-defined]

    def _target(self, ex: Exchange) -> str:
        if ex.path_params is not None and self.path_template is not None:
            path = self.path_template.format_map(ex.path_params)
            if ex.upstream_query:
                return URL.build(path=path, encoded=True).with_query(ex.upstream_query).raw_path_qs
            return path
        if ex.upstream_query:
            return self.query_target(ex.upstream_query)
        return self._raw_path

    def query_target(self, query: Mapping[str, str]) -> str:
        """The partner target of an exact route with the allow-listed query (``proxy.lane`` too)."""
        return self.url.with_query(query).raw_path_qs

    def _status_label(self, status: int) -> str:
        label = self._status_label_cache.get(status)
        if label is None:
            label = str(status) if 100 <= status <= 599 else "other"
            self._status_label_cache[status] = label
        return label


def _checked(answer: UpstreamAnswer, method: str, pass_back: frozenset[str]) -> UpstreamResponse:
    """The header policy picks what goes back (``proxy.headers.answer_headers``); a value the app's
    HTTP client would refuse makes the answer a protocol error, never a dropped app connection."""
    try:
        content_type, passed = answer_headers(answer.headers, pass_back)
    except BadHeaderValue as exc:
        raise wire_error(Phase.ANSWERING, Event.VIOLATION, method, str(exc)) from exc
    return UpstreamResponse(answer.status, content_type, answer.body, headers=passed)

