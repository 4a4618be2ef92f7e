"""The terminal of every chain: send the request to the cluster, guard each attempt, retry within bounds.

This is one of the two places where aiohttp/asyncio exceptions become our error types (the
other is the token client), always ``from exc`` so logs keep the cause.
"""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
from yarl import URL

from proxy.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnreachable
from proxy.exchange import Exchange, UpstreamResponse
from proxy.headers import wire_headers
from proxy.upstream.cluster import Cluster

DEFAULT_BODY_LIMIT = 1024 * 1024  # a body route without its own limit (the body filter sets one)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Forwarder:
    """Built once per route: the upstream URL and method are prepared here, not per request."""

    def __init__(self, cluster: Cluster, url: URL) -> None:
        self.cluster = cluster
        self.url = url
        retry = cluster.config.retry
        self.retry_on = frozenset(retry.retry_on)
        self.max_attempts = 1 + retry.attempts
        self._status_label_cache: dict[int, str] = {}
        self._durations: dict[str, object] = {}
        self._raw_path = url.raw_path_qs

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        cluster = self.cluster
        method = ex.method
        may_retry = method in IDEMPOTENT and self.max_attempts > 1
        if ex.body is None and method in BODY_METHODS and ex.downstream.has_body:
            # Read after validation (a 405 must not wait for a body) and before taking a slot;
            # a route's body filter may have read it already, under the route's own limit.
            ex.body = await ex.downstream.read_body(DEFAULT_BODY_LIMIT)
        cluster.enter()
        try:
            cluster.budget.on_request()
            attempt = 0
            while True:
                attempt += 1
                ex.attempts += 1
                ex.breaker_state = cluster.breaker.state
                try:
                    response = await self._attempt(ex, method)
                except UpstreamError as exc:
                    if may_retry and attempt < self.max_attempts and exc.kind in self.retry_on and self._breaker_allows() and self._may_retry(exc.kind):
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

    async def _attempt(self, ex: Exchange, method: str) -> UpstreamResponse:
        cluster = self.cluster
        started = time.perf_counter()
        status_label = "error"
        try:
            async with cluster.breaker.attempt() as guard:
                pool = cluster.pool
                if pool is not None:
                    try:
                        answer = await pool.request(
                            pool.request_bytes(method, self._path_qs(ex), wire_headers(ex.upstream_headers), ex.body or b""),
                            head_only=method == "HEAD",
                            timeout=cluster.config.timeout,
                        )
                    except UpstreamTimeout:
                        status_label = "timeout"
                        raise
                    status_label = self._status_label(answer.status)
                    if answer.status >= 500:
                        guard.fail("5xx")
                    return UpstreamResponse(answer.status, answer.content_type, answer.body)
                try:
                    async with cluster.session.request(
                        method,
                        self.url,
                        params=ex.upstream_query or None,
                        headers=ex.upstream_headers,
                        data=ex.body if ex.body else None,
                        allow_redirects=False,
                    ) as resp:
                        body = await _read_bounded(resp, cluster.config.max_response_bytes)
                        status_label = self._status_label(resp.status)
                        if resp.status >= 500:
                            guard.fail("5xx")
                        return UpstreamResponse(resp.status, resp.headers.get("Content-Type", ""), body)
                except asyncio.TimeoutError as exc:
                    status_label = "timeout"
                    raise UpstreamTimeout(f"no answer within {cluster.config.timeout}s") from exc
                except aiohttp.ClientConnectorError as exc:
                    raise UpstreamUnreachable(f"connect failed: {exc.os_error.__class__.__name__}") from exc
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    raise UpstreamUnreachable(f"connection lost: {exc.__class__.__name__}") from exc
                except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError, aiohttp.ClientError) as exc:
                    raise UpstreamProtocolError(f"bad response: {exc.__class__.__name__}") from exc
        finally:
            hist = self._durations.get(status_label)
            if hist is None:
                hist = self._durations[status_label] = cluster.metrics.upstream_duration.labels(cluster.name, status_label)
            hist.observe(time.perf_counter() - started)  # type: ignore[attr-defined]

    def _path_qs(self, ex: Exchange) -> str:
        if ex.upstream_query:
            return self.url.with_query(ex.upstream_query).raw_path_qs
        return self._raw_path

    def _status_label(self, status: int) -> str:
        label = self._status_label_cache.get(status)
        if label is None:
            label = str(status) if 100 <= status <= 599 else "other"
            self._status_label_cache[status] = label
        return label


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or UpstreamProtocolError past ``limit``: a partner cannot exhaust our memory."""
    length = resp.content_length
    if length is not None:
        if length > limit:
            raise UpstreamProtocolError(f"partner response of {length} bytes is over the {limit} byte limit")
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise UpstreamProtocolError(f"partner response is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
