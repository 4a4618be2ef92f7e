"""Every Prometheus collector of the sidecar, on a registry passed in by app assembly.

Names and labels of the ``partner_proxy_*`` series listed in DESIGN.md section 2 are a contract:
alerts and dashboards use them. Label values come from config (route, cluster, provider names) or
from a closed set (status codes, states, results), never from request input.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.metrics_core import Metric

# Latency buckets for a sidecar: its own overhead is tens of microseconds, most partner answers are
# milliseconds, the partner timeout is ~10 s. So 50 us to 10 s in 1-2.5-5 steps (and 30 s for the
# slowest configured timeouts): request minus upstream duration stays readable at p50 and p99.
_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)

_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]{1,15}$")

BREAKER_STATES = ("closed", "open", "half_open")


def code_label(partner_code: str | None) -> str:
    """A partner code becomes a label only when it looks like one; anything else is ``other``."""
    if partner_code is None:
        return "none"
    return partner_code if _CODE_RE.match(partner_code) else "other"


def multiprocess_dir() -> str | None:
    """Set by ``serve --workers N``: every worker writes its samples there; a scrape sums them."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# --- hot children -------------------------------------------------------------------------------
# prometheus-client takes a threading.Lock per Counter.inc and per Histogram.observe (a linear scan
# of the buckets and two locked adds); in multiprocess mode each also writes the mmap file. A few of
# those per request were ~4 % of the sidecar's CPU. The event loop is the only writer of the
# request-path series, so those series count into plain Python numbers first ("hot children") and
# are folded into the real prometheus children when a collection needs them: the exposition (names,
# labels, HELP/TYPE, buckets, values) is prometheus-client's own.


class HotCounter:
    """A counter child for one writer thread: ``inc`` is a plain add, ``flush`` folds it in.

    ``value`` only grows (counts since creation) and only the writer changes it; ``flush`` adds
    ``value - flushed`` to the prometheus child and remembers ``value``. So a flush from another
    thread needs no lock against the writer: it reads ``value`` once (one attribute load), and an
    ``inc`` racing with it is simply counted by the next flush. Flushes lock among themselves.
    """

    __slots__ = ("value", "_flushed", "_child", "_lock")

    def __init__(self, child: Any) -> None:
        self.value: float = 0
        self._flushed: float = 0
        self._child = child
        self._lock = threading.Lock()

    def inc(self, n: float = 1) -> None:
        """``n`` must be >= 0 (not checked: the callers pass constants; a counter never goes down)."""
        self.value += n

    def flush(self) -> None:
        with self._lock:
            now = self.value
            delta = now - self._flushed
            if delta:
                self._flushed = now
                self._child.inc(delta)


class HotHistogram:
    """A histogram child for one writer thread: ``observe`` is a bisect and two plain adds.

    The same buckets as prometheus-client's ``Histogram.observe`` (the first upper bound >= the
    value, i.e. ``bisect_left``; +Inf is the last bound). One difference: a NaN lands in the first
    bucket here, where prometheus-client counts it in no bucket; both make ``_sum`` NaN, and the
    callers observe ``perf_counter`` differences, never NaN.

    Like ``HotCounter``, the counts and the sum only grow from creation and ``flush`` adds what
    changed since the last flush to the prometheus child's buckets and sum. The sum is folded in as
    ``now - flushed``, which is exact whenever it did not more than double since the last flush; so
    when nothing else writes the child (the request path's series), the exposed ``_sum`` is the
    very float prometheus-client would have added up itself (the values are added in the same
    order), not one rounded differently by batching.
    """

    __slots__ = ("counts", "sum", "_bounds", "_flushed_counts", "_flushed_sum", "_child", "_lock")

    def __init__(self, child: Any) -> None:
        # prometheus-client has no public API to add bucket counts: ``_upper_bounds`` (ends with
        # +Inf), ``_buckets`` (one value per bound, not cumulative) and ``_sum`` are its internals,
        # unchanged since 0.1; tests/test_hot_metrics.py compares the exposition with its own.
        self._bounds: list[float] = list(child._upper_bounds)
        self.counts: list[int] = [0] * len(self._bounds)
        self.sum = 0.0
        self._flushed_counts = [0] * len(self._bounds)
        self._flushed_sum = 0.0
        self._child = child
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def flush(self) -> None:
        with self._lock:
            child = self._child
            done = self._flushed_counts
            for i, now in enumerate(self.counts):
                delta = now - done[i]
                if delta:
                    done[i] = now
                    child._buckets[i].inc(delta)
            now_sum = self.sum
            if now_sum != self._flushed_sum:  # not ``if now - flushed``: +Inf - +Inf would add a NaN
                child._sum.inc(now_sum - self._flushed_sum)
                self._flushed_sum = now_sum


class _FlushesHotChildren:
    """Mixin for the sidecar's counters and histograms: collecting one first flushes its hot children.

    In ``collect`` rather than in a separate collector: every way of reading a value goes through
    it (``generate_latest``, ``registry.get_sample_value`` in tests, a restricted registry, a direct
    ``metric.collect()``), whatever the registry's order. Multiprocess scrapes read the mmap files
    instead; ``Metrics.flush`` covers those.
    """

    _hot_children: list[HotCounter | HotHistogram]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._hot_children = []
        super().__init__(*args, **kwargs)

    def collect(self) -> Iterable[Metric]:
        for hot in tuple(self._hot_children):
            hot.flush()
        return super().collect()  # type: ignore[misc]


class FlushingCounter(_FlushesHotChildren, Counter):
    pass


class FlushingHistogram(_FlushesHotChildren, Histogram):
    pass


class Metrics:
    """All collectors, built once per app on its own registry (tests build a fresh one each time).

    With ``serve --workers N`` (prometheus-client multiprocess mode) counters and histograms are
    summed over the workers at scrape time; the breaker-state and token-expiry gauges carry a
    ``pid`` label per live worker, because each worker has its own breaker and token clock.

    The per-request series are updated through hot children (``hot_counter``, ``hot_histogram``):
    a collection of this registry flushes them first, so one process always shows every update.
    In multiprocess mode a scrape reads the other workers' files, so each worker also flushes once
    a second (``refresh_gauges``, from the server's loop) and when it stops: a scrape shows the
    serving worker's counts as of now and the others' as of at most a second ago.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, version: str | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess = multiprocess_dir() is not None
        self.pid = str(os.getpid())
        self._expiry_sources: dict[str, Callable[[], float]] = {}
        self._hot: dict[tuple[Any, tuple[str, ...]], HotCounter | HotHistogram] = {}
        r = self.registry
        p = "partner_proxy_"
        self.requests = FlushingCounter(p + "requests", "Requests answered to the app", ["route", "status"], registry=r)
        self.request_duration = FlushingHistogram(
            p + "request_duration_seconds", "Time to answer the app", ["route"], buckets=_BUCKETS, registry=r
        )
        self.upstream_duration = FlushingHistogram(
            p + "upstream_request_duration_seconds",
            "Time of each partner attempt",
            ["cluster", "status"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.breaker_state = Gauge(
            p + "circuit_breaker_state", "1 for the current breaker state, 0 for the others", ["cluster", "state"], registry=r,
            multiprocess_mode="liveall",
        )
        self.breaker_transitions = FlushingCounter(
            p + "circuit_breaker_transitions", "Breaker state changes", ["cluster", "from", "to"], registry=r
        )
        self.token_fetches = FlushingCounter(
            p + "token_fetches", "Calls to the token endpoint by result", ["provider", "result"], registry=r
        )
        self.token_lookups = FlushingCounter(
            p + "token_cache_lookups", "Where a token lookup was answered", ["provider", "layer"], registry=r
        )
        self.token_expiry = Gauge(
            p + "token_expires_in_seconds", "Seconds until the current in-process token expires", ["provider"], registry=r,
            multiprocess_mode="liveall",
        )
        self.redis_errors = FlushingCounter(p + "redis_errors", "Redis operations that failed", ["op"], registry=r)
        self.redis_tls_reloads = FlushingCounter(
            p + "redis_tls_reloads", "Redis TLS files replaced on disk: put in use (success) or kept out (failure)", ["result"], registry=r
        )
        self.partner_errors = FlushingCounter(
            p + "partner_errors", "Partner error answers by code and mapped type", ["cluster", "partner_code", "type"], registry=r
        )
        self.unmapped = FlushingCounter(
            p + "partner_unmapped_errors", "Partner errors that hit only the table default", ["cluster"], registry=r
        )
        self.retries = FlushingCounter(p + "upstream_retries", "Extra partner attempts", ["cluster", "reason"], registry=r)
        self.overflow = FlushingCounter(
            p + "upstream_overflow", "Requests refused with 503 ClusterOverflow (any threshold; see cluster_overflow)", ["cluster"], registry=r
        )
        self.cluster_overflow = FlushingCounter(
            p + "cluster_overflow",
            "Requests refused with 503 ClusterOverflow, by threshold (max_requests, max_pending_requests, pending_timeout)",
            ["cluster", "threshold"], registry=r,
        )
        self.signature_failures = FlushingCounter(
            p + "signature_failures", "Partner 200 answers whose signature was missing or did not verify", ["route", "reason"], registry=r
        )
        self.config_reloads = FlushingCounter(p + "config_reloads", "Config reloads by result", ["result"], registry=r)
        self.notifications = FlushingCounter(p + "notifications", "Notifications by sink and result", ["sink", "result"], registry=r)
        self.spans_dropped = FlushingCounter(
            p + "spans_dropped", "Trace spans lost before export (queue_full, export_failed, shutdown)", ["reason"], registry=r
        )
        self.spans_exported = FlushingCounter(p + "spans_exported", "Trace spans accepted by the OTLP collector", registry=r)
        self.build_info = Gauge(
            p + "build_info", "Always 1; the version label says which partner-proxy runs", ["version"], registry=r,
            multiprocess_mode="max",
        )
        # Per worker (pid label), the same in one process and with --workers N: prometheus-client's
        # ProcessCollector cannot run in multiprocess mode (a scrape would show only the worker that
        # served it), and it reads /proc on the event loop at scrape time. These are sampled off the
        # loop by ``sample_process`` (CPU time is a system call and is also taken at scrape).
        self.process_cpu = FlushingCounter(p + "process_cpu_seconds", "User and system CPU time of the worker", ["pid"], registry=r)
        self.process_rss = Gauge(
            p + "process_resident_memory_bytes", "Resident memory of the worker", ["pid"], registry=r, multiprocess_mode="liveall"
        )
        self.process_fds = Gauge(p + "process_open_fds", "Open file descriptors of the worker", ["pid"], registry=r, multiprocess_mode="liveall")
        self.process_start = Gauge(
            p + "process_start_time_seconds", "Start of the worker, seconds since the epoch", ["pid"], registry=r, multiprocess_mode="liveall"
        )
        self._cpu_seen = 0.0
        self.process_start.labels(self.pid).set(_STARTED_AT)
        self.build_info.labels(version or _version()).set(1)
        for reason in ("queue_full", "export_failed", "shutdown"):
            self.spans_dropped.labels(reason)

        for result in ("success", "failure"):
            self.config_reloads.labels(result)  # exist at 0, so increase() sees the first failure

    def hot_counter(self, metric: FlushingCounter, *labels: object) -> HotCounter:
        """The hot child of ``metric`` for these label values: one per (metric, labels), bind it once."""
        hot = self._bind(metric, HotCounter, labels)
        assert isinstance(hot, HotCounter)
        return hot

    def hot_histogram(self, metric: FlushingHistogram, *labels: object) -> HotHistogram:
        """The hot child of ``metric`` for these label values: one per (metric, labels), bind it once."""
        hot = self._bind(metric, HotHistogram, labels)
        assert isinstance(hot, HotHistogram)
        return hot

    def _bind(self, metric: Any, kind: type[HotCounter] | type[HotHistogram], labels: tuple[object, ...]) -> HotCounter | HotHistogram:
        # Only a metric whose collect() flushes may have hot children, or a scrape would miss them.
        wanted = "counter" if kind is HotCounter else "histogram"
        if not isinstance(metric, _FlushesHotChildren) or getattr(metric, "_type", None) != wanted:
            raise TypeError(f"{metric!r} is not a {wanted} of proxy.metrics (Flushing{wanted.title()})")
        parent: Any = metric
        values = tuple(str(v) for v in labels)  # as prometheus-client keys its children
        key = (parent, values)
        hot = self._hot.get(key)
        if hot is None:
            hot = kind(parent.labels(*values) if values else parent)
            self._hot[key] = hot
            parent._hot_children.append(hot)
        return hot

    def flush(self) -> None:
        """Fold every hot child's pending counts into prometheus-client (in multiprocess mode: into
        this worker's mmap files, where a scrape in any worker reads them)."""
        for hot in tuple(self._hot.values()):
            hot.flush()

    def track_token_expiry(self, provider: str, seconds_left: Callable[[], float]) -> None:
        """Live at scrape time in one process; in multiprocess mode refreshed by ``refresh_gauges``."""
        if self.multiprocess:
            self._expiry_sources[provider] = seconds_left
            self.token_expiry.labels(provider).set(seconds_left())
        else:
            self.token_expiry.labels(provider).set_function(seconds_left)

    def refresh_gauges(self) -> None:
        """Multiprocess mode, once a second and at each scrape: write to this worker's files what a
        scrape in another worker cannot compute: the token-expiry gauges, CPU, the hot counts."""
        for provider, seconds_left in self._expiry_sources.items():
            self.token_expiry.labels(provider).set(seconds_left())
        self.sample_cpu()
        self.flush()

    def sample_cpu(self) -> None:
        """Add the CPU time used since the last sample (``os.times``: a system call, no file read)."""
        t = os.times()
        used = t.user + t.system
        if used > self._cpu_seen:
            self.process_cpu.labels(self.pid).inc(used - self._cpu_seen)
            self._cpu_seen = used

    async def sample_process(self) -> None:
        """Memory and descriptors from /proc, read in a thread (a file read never runs on the loop)."""
        rss, fds = await asyncio.to_thread(_read_proc)
        if rss is not None:
            self.process_rss.labels(self.pid).set(rss)
        if fds is not None:
            self.process_fds.labels(self.pid).set(fds)
        self.sample_cpu()

    def exposition(self) -> bytes:
        """The /metrics body: this process's registry, or every worker's samples in multiprocess mode."""
        if not self.multiprocess:
            self.sample_cpu()
            return generate_latest(self.registry)
        self.refresh_gauges()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def set_breaker_state(self, cluster: str, state: str) -> None:
        for s in BREAKER_STATES:
            self.breaker_state.labels(cluster, s).set(1 if s == state else 0)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("partner-proxy")
    except metadata.PackageNotFoundError:
        return "unknown"


_PAGE = resource.getpagesize()


# The OS keeps a process's start time only in /proc; this module is imported within milliseconds
# of the start, which is the resolution the gauge is for (restarts, uptime).
_STARTED_AT = time.time()


def _read_proc() -> tuple[float | None, int | None]:
    rss: float | None = None
    fds: int | None = None
    try:
        with open("/proc/self/statm", "rb") as f:
            rss = float(int(f.read().split()[1]) * _PAGE)
    except (OSError, ValueError, IndexError):
        rss = None
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = None
    return rss, fds
