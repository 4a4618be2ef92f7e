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

from aiohttp import web
from yarl import URL

from proxy.errors import PayloadTooLarge, UpstreamError, UpstreamProtocolError
from proxy.exchange import Exchange, UpstreamResponse
from proxy.upstream.cluster import Cluster
from proxy.upstream.transport import IDEMPOTENT, Event, Phase, UpstreamAnswer, UpstreamRequest, bad_header_value, wire_error

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# Partner headers handed back to the app besides Content-Type (checked like it). Empty today: the
# listener renders only the status, Content-Type and body; a Signature header would go here.
PASS_BACK: frozenset[str] = frozenset()


class Forwarder:
    """Built once per route: the upstream URL and method are prepared here, not per request."""

    def __init__(self, cluster: Cluster, url: URL, method: str | None = None) -> None:
        self.cluster = cluster
        self.url = url
        self.method = method  # None: the downstream method
        retry = cluster.config.retry
        self.retry_on = frozenset(retry.on)
        self.max_attempts = 1 + retry.attempts
        self._status_label_cache: dict[int, str] = {}
        self._durations: dict[str, object] = {}
        self._raw_path = url.raw_path_qs

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        cluster = self.cluster
        method = self.method or ex.request.method
        # POST and PATCH are never sent twice by the forwarder: the partner may have acted on the first.
        may_retry = method in IDEMPOTENT and self.max_attempts > 1
        request = ex.request
        if method in BODY_METHODS and request.body_exists:
            # Read after validation (a 405 must not wait for a body) and before taking a slot.
            try:
                ex.body = await request.read()
            except web.HTTPRequestEntityTooLarge as exc:
                raise PayloadTooLarge(f"body over {request.client_max_size} bytes") from exc
        upstream = UpstreamRequest(method, self._target(ex), self._headers(ex), ex.body)
        cluster.enter()
        try:
            cluster.budget.on_request()
            attempt = 0
            while True:
                attempt += 1
                ex.attempts += 1
                ex.breaker_state = cluster.breaker.state
                try:
                    response = await self._attempt(upstream)
                except UpstreamError as exc:
                    if (
                        may_retry and exc.retryable and attempt < self.max_attempts and exc.kind in self.retry_on
                        and self._breaker_allows() and self._may_retry(exc.kind)
                    ):
                        await self._backoff(attempt)
                        continue
                    raise
                if response.status >= 500 and may_retry and attempt < self.max_attempts and "5xx" in self.retry_on and self._breaker_allows() and self._may_retry("5xx"):
                    await self._backoff(attempt)
                    continue
                return response
        finally:
            cluster.leave()

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
        try:
            async with cluster.breaker.attempt() as guard:
                try:
                    answer = await cluster.transport.send(request, timeout=cluster.config.timeout)
                except UpstreamError as exc:
                    if exc.kind == "timeout":
                        status_label = "timeout"
                    raise
                response = _checked(answer, request.method)
                status_label = self._status_label(answer.status)
                if answer.status >= 500:
                    guard.fail("5xx")
                return response
        finally:
            limits.release()
            hist = self._durations.get(status_label)
            if hist is None:
                hist = self._durations[status_label] = cluster.metrics.upstream_duration.labels(cluster.name, status_label)
            hist.observe(time.perf_counter() - started)  # type: ignore[attr-defined]

    def _target(self, ex: Exchange) -> str:
        if ex.upstream_query:
            return self.url.with_query(ex.upstream_query).raw_path_qs
        return self._raw_path

    @staticmethod
    def _headers(ex: Exchange) -> list[tuple[str, str]]:
        headers = []
        for name, value in ex.upstream_headers.items():
            # The app's values were checked by the HTTP parser; ours (a token from the token
            # endpoint) are not: a CR or LF would start a new header line on the wire.
            if "\r" in value or "\n" in value or "\x00" in value:
                raise UpstreamProtocolError(f"refusing to send header {name} with a control character")
            headers.append((name, value))
        return headers

    def _status_label(self, status: int) -> str:
        label = self._status_label_cache.get(status)
        if label is None:
            label = str(status) if 100 <= status <= 599 else "other"
            self._status_label_cache[status] = label
        return label


def _checked(answer: UpstreamAnswer, method: str) -> UpstreamResponse:
    """The app's HTTP client must accept every header value we hand back; a partner's that it
    would refuse (CR, LF, NUL, other C0 controls but HTAB, DEL) makes the answer a protocol error,
    never a dropped app connection. The strict parsers refuse these already; this is the last gate."""
    content_type = ""
    passed: list[tuple[str, str]] = []
    for name, value in answer.headers:
        lname = name.lower()
        if lname == "content-type":
            if not content_type:
                content_type = value
        elif lname not in PASS_BACK:
            continue
        if bad_header_value(value):
            raise wire_error(Phase.ANSWERING, Event.VIOLATION, method, f"control character in the partner's {name} header")
        if lname != "content-type":
            passed.append((name, value))
    return UpstreamResponse(answer.status, content_type, answer.body, headers=tuple(passed))
