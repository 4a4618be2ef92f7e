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

from yarl import URL

from proxy.errors import ProxyError, UpstreamError
from proxy.exchange import Exchange, UpstreamResponse
from proxy.headers import BadHeaderValue, answer_headers, wire_headers
from proxy.otel import Span, Tracing
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
        cluster = self.cluster
        method = ex.method
        # POST and PATCH are never sent twice by the forwarder: the partner may have acted on the first.
        may_retry = method in IDEMPOTENT and self.max_attempts > 1
        if ex.body is None and method in BODY_METHODS and ex.downstream.has_body:
            # Read after validation (a 405 must not wait for a body) and before taking a slot;
            # a route's body filter may have read it already, under the route's own limit.
            ex.body = await ex.downstream.read_body(DEFAULT_BODY_LIMIT)
        upstream = UpstreamRequest(method, self._target(ex), wire_headers(ex.upstream_headers), ex.body or b"")
        cluster.enter()
        try:
            cluster.budget.on_request()
            attempt = 0
            while True:
                attempt += 1
                ex.attempts += 1
                ex.breaker_state = cluster.breaker.state
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
                    if (
                        may_retry and exc.retryable and attempt < self.max_attempts and exc.kind in self.retry_on
                        and self._breaker_allows() and self._may_retry(exc.kind)
                    ):
                        if span is not None:
                            span.add_event("retry", {"partner_proxy.attempt": ex.attempts, "partner_proxy.retry_reason": exc.kind})
                        await self._backoff(attempt)
                        continue
                    raise
                except BaseException as exc:  # the breaker refused, the pool overflowed, or the app went away
                    if client is not None:
                        client.end(None, exc.type if isinstance(exc, ProxyError) else "cancelled")
                    raise
                if client is not None:
                    client.end(response.status)
                if response.status >= 500 and may_retry and attempt < self.max_attempts and "5xx" in self.retry_on and self._breaker_allows() and self._may_retry("5xx"):
                    if span is not None:
                        span.add_event("retry", {"partner_proxy.attempt": ex.attempts, "partner_proxy.retry_reason": f"status_{response.status}"})
                    await self._backoff(attempt)
                    continue
                return response
        finally:
            cluster.leave()

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
        cluster = self.cluster
        limits = cluster.limits
        if not limits.try_acquire():
            await limits.acquire()  # bounded: max_pending_requests, pending_timeout -> ClusterOverflow
        started = time.perf_counter()
        status_label = "error"
        breaker = cluster.breaker
        try:
            # ``async with breaker.attempt()`` spelled out as plain calls (no guard object, no two
            # coroutines per attempt); the same admit / record / release as ``Attempt``.
            trial = breaker.admit()
            try:
                try:
                    answer = await cluster.transport.send(request, timeout=cluster.config.timeout)
                except UpstreamError as exc:
                    if exc.kind == "timeout":
                        status_label = "timeout"
                    raise
                response = _checked(answer, request.method, self.pass_back)
                status_label = self._status_label(answer.status)
            except UpstreamError as exc:
                breaker.record(trial, exc.kind)
                raise
            except BaseException:  # cancelled (the app went away) or a bug: says nothing about the partner
                breaker.release(trial)
                raise
            breaker.record(trial, "5xx" if answer.status >= 500 else None)
            return response
        finally:
            limits.release()
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
            return self.url.with_query(ex.upstream_query).raw_path_qs
        return self._raw_path

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
