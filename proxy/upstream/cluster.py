"""A cluster: one partner base URL with its transport, timeouts, breaker, connection thresholds and retry budget."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from proxy.config.models import ClusterConfig
from proxy.errors import ClusterOverflow
from proxy.metrics import Metrics
from proxy.upstream.aiohttp_client import AiohttpTransport
from proxy.upstream.breaker import BreakerGuard
from proxy.upstream.http11 import Http11Pool
from proxy.upstream.transport import Transport

OVERFLOW_THRESHOLDS = ("max_requests", "max_pending_requests", "pending_timeout")


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


class ConnectionLimits:
    """Envoy's cluster thresholds, above the transport so every transport honours them.

    - ``max_requests``: requests in the cluster at once (waiting, in flight, or between retries);
      one more is refused at once (503 ``ClusterOverflow``, threshold ``max_requests``).
    - ``max_connections``: attempts on the wire at once, so the pool never holds more connections
      (HTTP/1.1: one request per connection). An attempt beyond it waits, FIFO, for a connection;
    - at most ``max_pending_requests`` wait (one more: threshold ``max_pending_requests``), each for
      at most ``pending_timeout`` (then: threshold ``pending_timeout``).

    A freed connection slot is handed straight to the oldest waiter, so a burst drains in order.
    """

    def __init__(self, config: ClusterConfig, metrics: Metrics) -> None:
        self.name = config.name
        self.max_connections = config.max_connections
        self.max_pending = config.max_pending_requests
        self.pending_timeout = config.pending_timeout
        self.max_requests = config.max_requests
        self.metrics = metrics
        self.requests = 0   # in the cluster (max_requests)
        self.active = 0     # holding a connection slot (max_connections)
        self._waiters: deque[asyncio.Future[None]] = deque()
        metrics.overflow.labels(self.name)  # exists at 0, so increase() sees the first overflow
        for threshold in OVERFLOW_THRESHOLDS:
            metrics.cluster_overflow.labels(self.name, threshold)

    @property
    def pending(self) -> int:
        return len(self._waiters)

    def overflow(self, threshold: str) -> ClusterOverflow:
        self.metrics.overflow.labels(self.name).inc()
        self.metrics.cluster_overflow.labels(self.name, threshold).inc()
        return ClusterOverflow(self.name, threshold)

    def enter(self) -> None:
        if self.requests >= self.max_requests:
            raise self.overflow("max_requests")
        self.requests += 1

    def leave(self) -> None:
        self.requests -= 1

    def can_take_now(self) -> bool:
        """A request could enter and take a connection slot at once (nothing changed, nothing waits)."""
        return self.requests < self.max_requests and self.active < self.max_connections and not self._waiters

    def take_now(self) -> None:
        """Enter and take a connection slot without checking again, right after ``can_take_now()``
        said True with nothing run in between that could enter or take one (``Forwarder.start``):
        one call instead of ``enter()`` and ``try_acquire()``, which would only repeat its checks."""
        self.requests += 1
        self.active += 1

    def try_acquire(self) -> bool:
        """Take a connection slot if one is free and nobody is queued ahead."""
        if self.active < self.max_connections and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait, bounded in number and time, for a connection slot."""
        if self.try_acquire():
            return
        if len(self._waiters) >= self.max_pending:
            raise self.overflow("max_pending_requests")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.pending_timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as we gave up: pass it on
            else:
                waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            if isinstance(exc, TimeoutError):
                raise self.overflow("pending_timeout") from None
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the oldest waiter; ``active`` is unchanged
                return
        self.active -= 1


class Cluster:
    """Built once per cluster config; survives reloads that leave its config unchanged."""

    def __init__(self, config: ClusterConfig, metrics: Metrics, breaker: BreakerGuard) -> None:
        self.config = config
        self.name = config.name
        self.metrics = metrics
        self.breaker = breaker
        self.budget = RetryBudget(config.retry.budget_ratio, config.retry.budget_min_per_second)
        self.limits = ConnectionLimits(config, metrics)
        # The lean HTTP/1.1 pool by default; ``client: aiohttp`` uses aiohttp's ClientSession.
        self.transport: Transport
        if config.client == "http11":
            self.transport = Http11Pool(
                config.base_url,
                connect_timeout=config.connect_timeout,
                max_body=config.max_response_bytes,
                max_idle=config.max_connections,
                idle_timeout=config.idle_timeout,
                max_connection_duration=config.max_connection_duration,
            )
        else:
            self.transport = AiohttpTransport(
                config.base_url,
                connect_timeout=config.connect_timeout,
                max_body=config.max_response_bytes,
                max_connections=config.max_connections,
                idle_timeout=config.idle_timeout,
                max_connection_duration=config.max_connection_duration,
            )
        # the http11 transport, or None when the cluster uses aiohttp (read on every callback-path request)
        self.pool: Http11Pool | None = self.transport if isinstance(self.transport, Http11Pool) else None
        metrics.unmapped.labels(self.name)  # exists at 0, so increase() sees the first unmapped code


    def enter(self) -> None:
        """Count a request into the cluster, or refuse it at once past ``max_requests``."""
        self.limits.enter()

    def leave(self) -> None:
        self.limits.leave()

    async def close(self) -> None:
        await self.transport.close()
