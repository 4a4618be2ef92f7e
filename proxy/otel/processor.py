"""A span processor with a hard queue bound and an honest count of what it loses.

Why not the SDK's ``BatchSpanProcessor``: its queue is a ``deque(maxlen=...)`` that silently
drops the *oldest* span when full, and nothing tells how many were lost. A sidecar whose
collector is down must say so (``partner_proxy_spans_dropped_total{reason}``), so this one:

- ``on_end`` runs on the event loop and only appends to a deque (and, once per full batch, sets
  an Event): no I/O, no encoding, no wait. A full queue drops the *new* span, counted as
  ``queue_full``;
- one daemon thread wakes every ``schedule_delay`` (or as soon as a batch is full), takes up to
  ``max_export_batch_size`` spans and calls the exporter. Protobuf encoding and the HTTP request
  happen there, never on the loop. A failed or raising export counts its spans as
  ``export_failed``; the exporter's own timeout (``export_timeout``) bounds each attempt, so a
  hanging collector holds only this thread while the queue fills and overflows (counted);
- ``shutdown(timeout)`` stops intake, lets the thread export what is queued for at most
  ``timeout`` seconds, then counts the rest as ``shutdown`` and returns, even if the collector
  still hangs (the thread is a daemon and is abandoned).

Export failures are logged at most once per ``LOG_EVERY`` seconds, with counts only: the SDK
exporter's own per-batch error lines are silenced in ``proxy.logsetup``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("proxy.otel")

DropHook = Callable[[str, int], None]
ExportHook = Callable[[int], None]

LOG_EVERY = 60.0
QUEUE_FULL, EXPORT_FAILED, SHUTDOWN = "queue_full", "export_failed", "shutdown"
DROP_REASONS = (QUEUE_FULL, EXPORT_FAILED, SHUTDOWN)


def _ignore_drop(reason: str, count: int) -> None:
    pass


def _ignore_export(count: int) -> None:
    pass


class BoundedExportProcessor(SpanProcessor):
    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int,
        max_export_batch_size: int,
        schedule_delay: float,
        on_drop: DropHook = _ignore_drop,
        on_export: ExportHook = _ignore_export,
    ) -> None:
        self._exporter = exporter
        self._max_queue = max_queue_size
        self._batch = max_export_batch_size
        self._delay = schedule_delay
        self._on_drop = on_drop
        self._on_export = on_export
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._take_lock = threading.Lock()  # the thread's batch take vs shutdown's final count
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = False
        self._flush_requests: list[threading.Event] = []
        self._failed_since_log = 0
        self._last_log = 0.0
        self._thread = threading.Thread(target=self._run, name="otel-span-export", daemon=True)
        self._thread.start()

    # ---- on the event loop -------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if self._closed:
            self._on_drop(SHUTDOWN, 1)
            return
        queue = self._queue
        if len(queue) >= self._max_queue:
            self._on_drop(QUEUE_FULL, 1)
            return
        queue.append(span)
        if len(queue) >= self._batch and not self._wake.is_set():
            self._wake.set()

    def queued(self) -> int:
        return len(self._queue)

    # ---- the export thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._delay)
            self._wake.clear()
            flushes, self._flush_requests = self._flush_requests, []
            self._drain(until_empty=bool(flushes))
            for done in flushes:
                done.set()
        self._drain(until_empty=True)

    def _drain(self, *, until_empty: bool) -> None:
        while True:
            with self._take_lock:
                queue = self._queue
                n = min(len(queue), self._batch)
                batch = [queue.popleft() for _ in range(n)]
            if not batch:
                return
            self._export(batch)
            if not until_empty and len(self._queue) < self._batch:
                return

    def _export(self, batch: Sequence[ReadableSpan]) -> None:
        try:
            result = self._exporter.export(batch)
        except Exception as exc:  # an exporter bug must not kill the thread
            result = SpanExportResult.FAILURE
            log.debug("span export raised %s", type(exc).__name__)
        if result is SpanExportResult.SUCCESS:
            self._on_export(len(batch))
            return
        self._on_drop(EXPORT_FAILED, len(batch))
        self._failed_since_log += len(batch)
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            log.warning(
                "span export failing: %d span(s) dropped since the last report (collector down or slow?); "
                "see partner_proxy_spans_dropped_total",
                self._failed_since_log,
            )
            self._failed_since_log = 0
            self._last_log = now

    # ---- SpanProcessor lifecycle (blocking: call from a thread, see Tracing.aclose) -----------

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._closed or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._flush_requests.append(done)
        self._wake.set()
        return done.wait(timeout_millis / 1000)

    def shutdown(self, timeout: float = 2.0) -> None:  # type: ignore[override]
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        with self._take_lock:
            left = len(self._queue)
            self._queue.clear()
        if left:
            self._on_drop(SHUTDOWN, left)
            log.warning("tracing shutdown: %d span(s) not exported in %.1fs", left, timeout)
        try:
            self._exporter.shutdown()  # aborts the exporter's retry backoff if the thread still waits
        except Exception as exc:
            log.debug("span exporter shutdown raised %s", type(exc).__name__)
