"""Downstream request metrics as an observer: ``requests_total{route,status}`` and the duration
histogram, through hot children bound once per (route, status) (``.labels()`` per request cost
~2 us; a prometheus-client inc/observe takes a lock each, a hot child is a plain add, see
``proxy.metrics.HotCounter``)."""

from __future__ import annotations

from bisect import bisect_left
from time import perf_counter

from proxy.exchange import Exchange, UpstreamResponse
from proxy.metrics import HotCounter, HotHistogram, Metrics
from proxy.types import CompiledRoute

UNMATCHED = "unmatched"  # the route label of requests no route matched (never the request's path)

# What one (route, status) updates: the counter, the route's histogram, and that histogram's bucket
# counts and bounds (so the per-request update needs no attribute lookups on it).
_Bound = tuple[HotCounter, HotHistogram, list[int], list[float]]


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
        name = route.name if route is not None else UNMATCHED
        try:
            counter, hist, counts, bounds = self._bound[name][status]
        except KeyError:  # the first request of this (route, status): bind once
            counter, hist, counts, bounds = self._bound.setdefault(name, {})[status] = self._bind(name, status)
        # ``counter.inc()`` and ``hist.observe(elapsed)`` inlined (two calls of ~50 ns each, on every
        # request): the same plain adds on the same objects, made by the loop, their only writer.
        counter.value += 1
        elapsed = perf_counter() - ex.started
        counts[bisect_left(bounds, elapsed)] += 1
        hist.sum += elapsed

    def _bind(self, name: str, status: int) -> _Bound:
        m = self._metrics
        hist = m.hot_histogram(m.request_duration, name)
        return m.hot_counter(m.requests, name, str(status)), hist, hist.counts, hist.bounds
