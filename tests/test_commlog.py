"""The communication log's own fast paths: each must write exactly what the plain version wrote."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from proxy import commlog
from proxy.commlog import _Clock


def reference(t: float) -> str:
    """The timestamp as formatted before the clock cached anything: the contract of ``_Clock.now``."""
    second = int(t)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{int((t - second) * 1000):03d}Z"


def times() -> Iterator[float]:
    rng = random.Random(7)
    base = 1_767_225_599.0  # one second before a new year (a new minute, hour, day, month, year)
    t = base
    for _ in range(20_000):  # dense, as a busy worker calls it: many calls per millisecond
        t += rng.choice((0.0, 1e-7, 3e-6, 4e-5, 2e-4, 9e-4))
        yield t
    for k in range(3000):  # on and next to every millisecond boundary of three seconds
        edge = base + k / 1000
        yield from (edge, float.__sub__(edge, 2.5e-7), edge + 2.5e-7)
    for _ in range(2000):  # backwards, jumps, far future (a coarser float grid), before 1970, zero
        yield rng.choice((t - rng.random() * 5, t + rng.random() * 100, rng.uniform(1e11, 1e12), -rng.random() * 100, 0.0))


def test_cached_timestamps_are_exactly_the_formatted_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    now = 0.0
    monkeypatch.setattr(commlog.time, "time", lambda: now)
    hits = 0
    for now in times():
        before = clock._lo, clock._hi
        assert clock.now() == reference(now), now
        hits += before == (clock._lo, clock._hi)
    assert hits > 10_000  # the cache is used, not only correct
