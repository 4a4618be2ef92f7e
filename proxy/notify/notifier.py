"""The notifier: deduplicated events behind one bounded queue, posted by one worker off the request path.

Why a queue and a worker: a notification is a side effect of an error, and the error answer to the
app must not wait for (or fail because of) a chat webhook. ``emit`` is synchronous and only does
dict and queue bookkeeping; one worker task owns the HTTP session and posts to every sink.

Why deduplication lives in ``emit`` (before the queue): a partner outage produces the same error
for every request. Collapsing identical events before they are queued keeps the bounded queue for
*distinct* events, so a storm of one kind cannot push out a breaker-open message.

Deduplication, per key ``(kind, type, cluster)`` with window ``W = config.dedup_window``:

- the first event of a key is queued at once and opens a window ``[t0, t0 + W)``;
- identical events inside the window are not queued; they are counted (metric
  ``notifications{sink="dedup",result="suppressed"}``) and the latest one is remembered;
- when the window has passed and at least one event was suppressed, exactly one message carries
  ``suppressed: N`` ("and N more like it in the last W s"). Whichever comes first delivers it:
  the next event of that key (its own message carries the count), or the worker's periodic check
  (every ``tick_interval`` seconds, a summary message built from the last suppressed event), or
  ``stop()`` (pending counts are sent early so a shutdown does not lose them). Sending a message
  that carries a count opens a new window, so a steady storm yields at most one message per key
  per window and every suppressed event is reported exactly once;
- a window that passed with nothing suppressed is forgotten: the next event goes out at once.

Secrets: API keys live only in ``Secret`` objects and are revealed only into request headers.
Slack webhook URLs are credentials too, so nothing here logs a URL or an exception's text (aiohttp
errors embed the URL); logs name the sink and the exception class only, and ``repr`` shows sink
names only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from proxy.config.models import NotificationsConfig
from proxy.metrics import Metrics

from proxy.notify.events import KIND_BREAKER_OPEN, KIND_TOKEN_FAILING, Event, Message
from proxy.notify.sinks import SOURCE, Sink, _HttpStatus, build_sinks


@dataclass(slots=True)
class _Window:
    """Dedup state of one key: when its window opened, what it swallowed since, the latest swallowed."""

    opened: float
    suppressed: int = 0
    last: Event | None = None


class Notifier:
    """One bounded queue, one worker, every configured sink; see the module docstring for dedup."""

    def __init__(self, config: NotificationsConfig, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._sinks = build_sinks(config)
        self._log = logging.getLogger("proxy.notify")
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._queue: asyncio.Queue[Message] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        # How often the worker looks for windows that ended with a pending suppressed count.
        # Real seconds, independent of the injected clock; tests lower it.
        self.tick_interval = 1.0
        # A 429 (Slack's rate limit) is retried after its Retry-After, bounded: at most
        # ``max_tries`` posts per message and sink, and never a wait longer than
        # ``max_retry_after`` (a longer Retry-After gives up at once). So one message holds the
        # worker for at most (max_tries - 1) * max_retry_after plus the post timeouts, and the
        # other sinks of that message are posted concurrently, unaffected.
        self.max_tries = 3
        self.max_retry_after = 10.0
        self.default_retry_after = 1.0  # a 429 without a usable Retry-After

    def __repr__(self) -> str:
        state = "running" if self._worker is not None and not self._worker.done() else "idle"
        return f"<Notifier sinks={[s.name for s in self._sinks]} {state}>"

    __str__ = __repr__

    @property
    def enabled(self) -> bool:
        """Whether any sink is configured; when not, ``emit`` does nothing at all."""
        return bool(self._sinks)

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return tuple(self._sinks)

    def queued(self) -> int:
        """Messages waiting for the worker (bounded by ``config.queue_size``)."""
        return self._queue.qsize() if self._queue is not None else 0

    # ---- producer side: sync, on the event loop, never raises --------------------------------

    def emit(self, event: Event) -> None:
        """Queue ``event`` for the sinks unless deduplicated; drop (and count) if that is impossible.

        Called from request paths and breaker listeners, so it never blocks and never raises.
        """
        if not self._sinks:
            return
        try:
            self._emit(event)
        except Exception as exc:  # a notification must never become a request failure
            self._count("queue", "dropped")
            self._log.warning("notification dropped: %s", type(exc).__name__)

    def _emit(self, event: Event) -> None:
        queue = self._queue
        if queue is None or self._closed or not self._on_loop():
            self._count("queue", "dropped")
            return
        key = (event.kind, event.type, event.cluster)
        now = self._clock()
        win = self._windows.get(key)
        window = self._config.dedup_window
        if win is not None and now - win.opened < window:
            win.suppressed += 1
            win.last = event
            self._count("dedup", "suppressed")
            return
        carried = win.suppressed if win is not None else 0
        msg = Message(event, suppressed=carried, window=window)
        try:
            queue.put_nowait(msg)
        except asyncio.QueueFull:
            # Window state is left as it was: a pending count still goes out with a later message.
            self._count("queue", "dropped")
            return
        self._windows[key] = _Window(opened=now)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def breaker_opened(self, cluster: str) -> None:
        """``Hooks.breaker_opened`` target."""
        self.emit(Event(KIND_BREAKER_OPEN, cluster, "CircuitBreakerError", f"Circuit breaker for {cluster} opened"))

    def token_fetch_failed(self, provider: str, reason: str, consecutive: int) -> None:
        """``Hooks.token_fetch_failed`` target: one failure is noise, a run of them is an outage."""
        if consecutive < self._config.token_failure_threshold:
            return
        self.emit(
            Event(
                KIND_TOKEN_FAILING,
                provider,
                "AuthenticationFailure",
                f"Token fetch for {provider} failing: {reason} ({consecutive} in a row)",
                count=consecutive,
            )
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the session and the worker; a notifier without sinks starts nothing."""
        if not self._sinks or self._worker is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=self._config.queue_size)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": SOURCE},
        )
        self._closed = False
        self._worker = asyncio.create_task(self._run(), name="partner-proxy-notifier")

    async def stop(self, flush_timeout: float = 2.0) -> None:
        """Deliver what is queued and any pending suppressed counts within ``flush_timeout``, then cancel.

        Whatever is still queued when time runs out is counted as dropped.
        """
        if self._worker is None:
            return
        self._closed = True  # emit drops from here on
        queue = self._queue
        assert queue is not None
        try:
            async with asyncio.timeout(flush_timeout):
                await queue.join()
                for msg in self._due(force=True):
                    await self._deliver(msg)
        except TimeoutError:
            pass
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        left = queue.qsize()
        while not queue.empty():
            queue.get_nowait()
            queue.task_done()
        if left:
            self._metrics.notifications.labels("queue", "dropped").inc(left)
            self._log.warning("%d notifications dropped at shutdown", left)
        self._worker = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- worker ------------------------------------------------------------------------------

    async def _run(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            try:
                async with asyncio.timeout(self.tick_interval):
                    msg = await queue.get()
            except TimeoutError:
                msg = None
            try:
                if msg is not None:
                    try:
                        await self._deliver(msg)
                    finally:
                        queue.task_done()
                for summary in self._due(force=False):
                    await self._deliver(summary)
            except Exception as exc:  # a dead worker would silently turn every later emit into a drop
                self._log.error("notification worker error: %s", type(exc).__name__)

    def _due(self, *, force: bool) -> list[Message]:
        """Summaries for windows that ended with suppressed events (all pending ones when ``force``).

        A summary opens a fresh window for its key; a window that ended empty is forgotten.
        """
        now = self._clock()
        window = self._config.dedup_window
        out: list[Message] = []
        for key, win in list(self._windows.items()):
            ended = now - win.opened >= window
            if win.suppressed and win.last is not None and (ended or force):
                out.append(Message(win.last, suppressed=win.suppressed, window=window, summary=True))
                self._windows[key] = _Window(opened=now)
            elif ended:
                del self._windows[key]
        return out

    async def _deliver(self, msg: Message) -> None:
        """Post one message to every sink at once: a hanging sink holds only itself, up to the timeout."""
        session = self._session
        if session is None:
            return
        await asyncio.gather(*(self._post(sink, session, msg) for sink in self._sinks))

    async def _post(self, sink: Sink, session: aiohttp.ClientSession, msg: Message) -> None:
        for attempt in range(1, max(self.max_tries, 1) + 1):
            wait = await self._post_once(sink, session, msg, last=attempt >= self.max_tries)
            if wait is None:
                return
            self._count(sink.name, "rate_limited")
            self._log.warning("notification to %s rate limited (HTTP 429); retrying in %gs", sink.name, wait)
            await asyncio.sleep(wait)

    async def _post_once(self, sink: Sink, session: aiohttp.ClientSession, msg: Message, *, last: bool) -> float | None:
        """One post, counted; returns seconds to wait before retrying a 429, or None when done."""
        try:
            async with asyncio.timeout(self._config.timeout):
                await sink.post(session, msg)
        except _HttpStatus as exc:
            if exc.status == 429 and not last:
                wait = exc.retry_after if exc.retry_after is not None else self.default_retry_after
                if wait <= self.max_retry_after:
                    return wait
            self._count(sink.name, "failure")
            self._log.warning("notification to %s failed: HTTP %d", sink.name, exc.status)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            self._count(sink.name, "timeout")
            self._log.warning("notification to %s timed out after %gs", sink.name, self._config.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never out of the worker; the text may hold the URL, so log the class only
            self._count(sink.name, "failure")
            self._log.warning("notification to %s failed: %s", sink.name, type(exc).__name__)
        else:
            self._count(sink.name, "success")
        return None

    def _count(self, sink: str, result: str) -> None:
        self._metrics.notifications.labels(sink, result).inc()
