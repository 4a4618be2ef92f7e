"""A cluster: one partner base URL with its connection pool, timeouts, breaker, cap and retry budget."""

from __future__ import annotations

import time

import aiohttp

from proxy.config.models import ClusterConfig
from proxy.errors import ClusterOverflow
from proxy.metrics import Metrics
from proxy.upstream.breaker import BreakerGuard
from proxy.upstream.http11 import Http11Pool


class RetryBudget:
    """Retries may be at most ``ratio`` of recent requests (plus a small floor), as in Envoy/Finagle.

    A budget, not just a count, because under a partner outage per-request retries multiply the
    load exactly when the partner can least take it. Counters decay over a 10 s window.
    """

    WINDOW = 10.0

    def __init__(self, ratio: float, min_per_second: float) -> None:
        self.ratio = ratio
        self.floor = min_per_second * self.WINDOW
        self._start = time.monotonic()
        self._requests = 0.0
        self._retries = 0.0

    def _roll(self) -> None:
        now = time.monotonic()
        if now - self._start >= self.WINDOW:
            # keep half of the last window so the budget does not reset to zero abruptly
            self._requests /= 2
            self._retries /= 2
            self._start = now

    def on_request(self) -> None:
        self._roll()
        self._requests += 1

    def try_spend(self) -> bool:
        self._roll()
        if self._retries + 1 <= max(self.floor, self.ratio * self._requests):
            self._retries += 1
            return True
        return False


class Cluster:
    """Built once per cluster config; survives reloads that leave its config unchanged."""

    def __init__(self, config: ClusterConfig, metrics: Metrics, breaker: BreakerGuard) -> None:
        self.config = config
        self.name = config.name
        self.metrics = metrics
        self.breaker = breaker
        self.budget = RetryBudget(config.retry.budget_ratio, config.retry.budget_min_per_second)
        self.timeout = aiohttp.ClientTimeout(total=config.timeout, sock_connect=config.connect_timeout)
        self.inflight = 0
        # The lean HTTP/1.1 pool by default; ``client: aiohttp`` keeps aiohttp's ClientSession.
        self.pool: Http11Pool | None = (
            Http11Pool(
                config.base_url,
                connect_timeout=config.connect_timeout,
                max_body=config.max_response_bytes,
                max_idle=config.max_connections,
            )
            if config.client == "http11"
            else None
        )
        metrics.unmapped.labels(self.name)  # exists at 0, so increase() sees the first unmapped code
        metrics.overflow.labels(self.name)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created lazily inside the running loop (aiohttp wants a loop), then reused for every call.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.config.max_connections,  # one host per cluster: no per-host bookkeeping needed
                ttl_dns_cache=300,
                keepalive_timeout=30,
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),  # a partner cookie must not leak into the next app request
            )
            # aiohttp silently re-sends an idempotent request once when a pooled connection drops.
            # Retries are ours to decide (counted, budgeted, seen by the breaker), so switch it off;
            # aiohttp's own TestClient sets the same attribute.
            self._session._retry_connection = False
        return self._session

    def enter(self) -> None:
        """Take an in-flight slot or refuse at once: a queue without bound is an outage amplifier."""
        if self.inflight >= self.config.max_connections:
            self.metrics.overflow.labels(self.name).inc()
            raise ClusterOverflow(self.name)
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
