"""Downstream request metrics as an observer: ``requests_total{route,status}`` and the duration
histogram, through hot children bound once per (route, status) (``.labels()`` per request cost
~2 us; a prometheus-client inc/observe takes a lock each, a hot child is a plain add, see
``proxy.metrics.HotCounter``)."""

from __future__ import annotations

import time

from proxy.exchange import Exchange, UpstreamResponse
from proxy.metrics import HotCounter, HotHistogram, Metrics
from proxy.types import CompiledRoute

UNMATCHED = "unmatched"  # the route label of requests no route matched (never the request's path)


class RequestMetrics:
    """Long-lived (its label cache survives reloads); labels come from config, never from input."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # One lookup per request: the counter of (route, status) and the route's histogram together.
        self._bound: dict[tuple[str, int], tuple[HotCounter, HotHistogram]] = {}

    def on_start(self, ex: Exchange, route: CompiledRoute) -> None:
        return None

    def on_finish(self, ex: Exchange, route: CompiledRoute | None, status: int, upstream: UpstreamResponse | None) -> None:
        name = route.name if route is not None else UNMATCHED
        key = (name, status)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = self._bind(name, status)
        counter, hist = bound
        counter.inc()
        hist.observe(time.perf_counter() - ex.started)

    def _bind(self, name: str, status: int) -> tuple[HotCounter, HotHistogram]:
        m = self._metrics
        return m.hot_counter(m.requests, name, str(status)), m.hot_histogram(m.request_duration, name)
