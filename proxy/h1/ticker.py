"""One coarse clock per server: the ``Date`` header and every connection's timeout, once a second.

Why not ``loop.call_later`` per request or ``asyncio.timeout``: a timer handle per request costs
about 0.8 us and another heap operation; these timeouts (head, body, keep-alive idle) are seconds
long and need no precision below the tick. Connections register themselves and expose ``deadline``
(0: none) and ``expire(now)``.
"""

from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate
from typing import Protocol

log = logging.getLogger("proxy.h1")


class Timed(Protocol):
    deadline: float

    def expire(self, now: float) -> None: ...


class Ticker:
    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 1.0) -> None:
        self._loop = loop
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self.connections: set[Timed] = set()
        self.now = loop.time()
        self.date = b""
        self._update()

    def _update(self) -> None:
        self.now = self._loop.time()
        self.date = b"Date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n"

    def start(self) -> None:
        if self._handle is None:
            self._handle = self._loop.call_later(self._interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._update()
        now = self.now
        for conn in [c for c in self.connections if c.deadline and c.deadline <= now]:
            try:
                conn.expire(now)
            except Exception:  # one connection's bug must not stop every other connection's timeouts
                log.exception("bug expiring a connection")
        self._handle = self._loop.call_later(self._interval, self._tick)
