"""A per-cluster circuit breaker: pybreaker's state machine behind our own ``async with`` guard.

Why not ``breaker.call(coro_fn)``: pybreaker counts a coroutine function as successful when it
*returns the coroutine*, before anything is awaited, so awaited failures never open it; its
``call_async`` needs Tornado, and its Redis storage blocks the event loop. So the guard asks
pybreaker only to record outcomes (``call`` with a plain function that raises or returns), after
the partner call was really awaited, and does admission itself:

- closed: admit everything;
- open: refuse with ``CircuitOpen`` (503 + Retry-After) until ``reset_timeout`` has passed;
- half-open: admit ``half_open_max_calls`` trial requests at a time, refuse the rest; a trial's
  success closes the breaker, its failure reopens it.

The request whose failure trips the breaker gets the answer for that failure, not a 503.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType

import pybreaker

from proxy.config.models import BreakerConfig
from proxy.errors import CircuitOpen, UpstreamError
from proxy.metrics import Metrics
from proxy.otel import Tracing, TracingRef

_STATE_NAMES = {pybreaker.STATE_CLOSED: "closed", pybreaker.STATE_OPEN: "open", pybreaker.STATE_HALF_OPEN: "half_open"}


class _Failure(Exception):
    """What we hand pybreaker to record one failed attempt."""


def _fail(exc: BaseException) -> None:
    raise exc


def _succeed() -> None:
    return None


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, guard: BreakerGuard) -> None:
        self.guard = guard

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: pybreaker.CircuitBreakerState | None, new_state: pybreaker.CircuitBreakerState) -> None:
        old = _STATE_NAMES.get(old_state.name, "closed") if old_state is not None else "closed"
        new = _STATE_NAMES.get(new_state.name, "closed")
        self.guard._on_transition(old, new)


class BreakerGuard:
    """One per cluster; ``attempt()`` wraps exactly one partner attempt (retries are attempts too)."""

    def __init__(
        self,
        cluster: str,
        config: BreakerConfig,
        metrics: Metrics,
        on_open: Callable[[str], None] | None = None,
        tracing: Tracing | TracingRef | None = None,
    ) -> None:
        self.cluster = cluster
        # Transitions happen inside an attempt (admit or record), in the request's task: the event
        # lands on that request's span, if it has one.
        self._tracing: Tracing | TracingRef = tracing if tracing is not None else Tracing.disabled()
        self.config = config
        self._metrics = metrics
        self._on_open = on_open
        self._trials = 0
        self._failures = frozenset(config.failures)
        # Our own (public) memory storage, so when the breaker opened is read through pybreaker's
        # documented storage API rather than the breaker's private ``_state_storage``.
        self._storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._state = "closed"  # pybreaker calls _Listener on each change of it
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=config.fail_max,
            state_storage=self._storage,
            reset_timeout=config.reset_timeout,
            listeners=[_Listener(self)],
            name=cluster,
        )
        metrics.set_breaker_state(cluster, "closed")

    @property
    def state(self) -> str:
        """pybreaker's state by our name, mirrored on every transition (read on every attempt)."""
        return self._state

    def retry_after(self) -> float:
        opened_at = self._storage.opened_at
        if opened_at is None:
            return self.config.reset_timeout
        left = (opened_at - datetime.now(UTC)).total_seconds() + self.config.reset_timeout
        return float(min(math.ceil(self.config.reset_timeout), max(1, math.ceil(left))))

    def _on_transition(self, old: str, new: str) -> None:
        self._state = new
        if old == new:
            return
        self._metrics.breaker_transitions.labels(self.cluster, old, new).inc()
        self._metrics.set_breaker_state(self.cluster, new)
        self._tracing.event(
            "breaker.transition", {"partner_proxy.cluster": self.cluster, "partner_proxy.breaker_from": old, "partner_proxy.breaker_to": new}
        )
        if new == "open" and self._on_open is not None:
            try:
                self._on_open(self.cluster)
            except Exception:  # a notifier must never break the data path
                pass

    def admit(self) -> bool:
        """Raise CircuitOpen or return whether this attempt is a half-open trial."""
        if self._state == "closed":
            return False
        state = self._breaker.current_state
        if state == pybreaker.STATE_OPEN:
            if self._still_open():
                raise CircuitOpen(self.cluster, self.retry_after())
            self._breaker.half_open()
        # half-open: a bounded number of trials at a time
        if self._trials >= self.config.half_open_max_calls:
            raise CircuitOpen(self.cluster, 1)
        self._trials += 1
        return True

    def _still_open(self) -> bool:
        opened_at = self._storage.opened_at
        return opened_at is not None and (datetime.now(UTC) - opened_at).total_seconds() < self.config.reset_timeout

    def record(self, trial: bool, failure_kind: str | None) -> None:
        """Tell pybreaker how an admitted attempt ended (``None`` = success or a non-counting error)."""
        if trial:
            self._trials -= 1
        if failure_kind is None and self._state == "closed" and not self._storage.counter:
            return  # the common case: nothing for pybreaker to reset or count (saves its locks and listeners)
        state = self._breaker.current_state
        if state == pybreaker.STATE_OPEN:
            return  # another attempt already opened it; a late answer must not close or extend it
        if state == pybreaker.STATE_HALF_OPEN and not trial:
            return  # only trials decide a half-open breaker
        try:
            if failure_kind is not None and failure_kind in self._failures:
                self._breaker.call(_fail, _Failure(failure_kind))
            else:
                self._breaker.call(_succeed)
        except (_Failure, pybreaker.CircuitBreakerError):
            pass

    def release(self, trial: bool) -> None:
        """An admitted attempt that ended without a verdict (the app went away): free its trial slot."""
        if trial:
            self._trials -= 1

    def attempt(self) -> Attempt:
        return Attempt(self)


class Attempt:
    """``async with guard.attempt() as a:`` ... ``a.fail("5xx")`` for failures that are answers, not exceptions."""

    __slots__ = ("_guard", "_trial", "_kind")

    def __init__(self, guard: BreakerGuard) -> None:
        self._guard = guard
        self._trial = False
        self._kind: str | None = None

    def fail(self, kind: str) -> None:
        self._kind = kind

    async def __aenter__(self) -> Attempt:
        self._trial = self._guard.admit()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            self._guard.release(self._trial)  # the app went away: says nothing about the partner
            return
        if isinstance(exc, UpstreamError):
            self._kind = exc.kind
        elif exc is not None:
            self._guard.release(self._trial)
            return
        self._guard.record(self._trial, self._kind)
