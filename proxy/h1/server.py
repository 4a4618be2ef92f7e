"""``H1Server``: the data listener's socket, its connections, and the drain.

Start binds (``reuse_port`` for ``serve --workers N``); ``stop_accepting`` closes the socket and
tells every connection the server is closing: an idle one closes now, a busy one answers its
current request with ``Connection: close`` and then closes. ``close`` ends what is left. In-flight
requests are counted by the core (``Listener.inflight`` / ``wait_idle``), which the caller waits on
between the two.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from proxy.corking import Cork
from proxy.h1.limits import H1Limits
from proxy.h1.protocol import H1Protocol
from proxy.h1.ticker import Ticker
from proxy.listener import Listener

FLUSH_WAIT = 1.0  # seconds close() waits for answers of requests that are finishing


class H1Server:
    """``limits``: fixed ``H1Limits``, or a callable giving the current ones (``serve`` passes the
    running config's, so a reload applies to the connections accepted after it). A connection reads
    them once, when it is made; it keeps them for its life."""

    def __init__(self, listener: Listener, limits: H1Limits | Callable[[], H1Limits] | None = None) -> None:
        self.listener = listener
        if limits is None or isinstance(limits, H1Limits):
            fixed = limits or H1Limits()
            self._limits: Callable[[], H1Limits] = lambda: fixed
        else:
            self._limits = limits
        self.loop = asyncio.get_running_loop()
        self.ticker = Ticker(self.loop)
        self.cork = Cork(self.loop)  # every connection's writes, after each loop iteration's reads
        self.connections: set[H1Protocol] = set()
        self.closing = False
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False, sock: socket.socket | None = None) -> None:
        self.ticker.start()
        if sock is not None:
            self._server = await self.loop.create_server(lambda: H1Protocol(self), sock=sock, backlog=1024)
        else:
            self._server = await self.loop.create_server(
                lambda: H1Protocol(self), host, port, reuse_port=reuse_port or None, backlog=1024,
            )

    @property
    def limits(self) -> H1Limits:
        """The limits a connection made now gets (``H1Protocol.__init__`` reads them once)."""
        return self._limits()

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def stop_accepting(self) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.drain()

    async def close(self) -> None:
        """End every connection. A request that just finished is still written first: its answer
        may come from a task's done callback after ``Listener.wait_idle`` saw it finish (that wait is
        bounded by ``FLUSH_WAIT``), and answers queued in the cork this iteration are flushed before
        anything is aborted."""
        await self.stop_accepting()
        deadline = self.loop.time() + FLUSH_WAIT
        while any(conn.busy for conn in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.cork.flush()  # answers written this iteration go out before anything is aborted
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.ticker.stop()
