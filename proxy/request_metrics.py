"""Downstream request metrics as an observer: ``requests_total{route,status}`` and the duration
histogram, through hot children bound once per (route, status) (``.labels()`` per request cost
~2 us; a prometheus-client inc/observe takes a lock each, a hot child is a plain add, see
``proxy.metrics.HotCounter``)."""

from __future__ import annotations

from time import perf_counter

from proxy.exchange import Exchange, UpstreamResponse
from proxy.metrics import HotCounter, HotHistogram, Metrics
from proxy.types import CompiledRoute

UNMATCHED = "unmatched"  # the route label of requests no route matched (never the request's path)

# What one (route, status) updates: its counter and the route's histogram.
_Bound = tuple[HotCounter, HotHistogram]


class RequestMetrics:
    """Long-lived (its label cache survives reloads); labels come from config, never from input."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # route name -> status -> what to update: two dict lookups by a str (its hash is cached) and
        # an int are cheaper than building and hashing a (route, status) tuple per request.
        self._bound: dict[str, dict[int, _Bound]] = {}

    def on_start(self, ex: Exchange, route: CompiledRoute) -> None:
        return None

    def on_finish(self, ex: Exchange, route: CompiledRoute | None, status: int, upstream: UpstreamResponse | None) -> None:
        self.record(route.name if route is not None else UNMATCHED, status, perf_counter() - ex.started)

    def record(self, name: str, status: int, seconds: float) -> None:
        """One answered request of route ``name`` (``proxy.lane`` calls it without an exchange)."""
        try:
            counter, hist = self._bound[name][status]
        except KeyError:  # the first request of this (route, status): bind once
            counter, hist = self._bound.setdefault(name, {})[status] = self._bind(name, status)
        counter.inc()
        hist.observe(seconds)

    def _bind(self, name: str, status: int) -> _Bound:
        m = self._metrics
        return m.hot_counter(m.requests, name, str(status)), m.hot_histogram(m.request_duration, name)
