"""The request path's call shapes, in one place (as ``starlette/types.py`` does for ASGI).

A ``CompiledRoute`` is one route ready to serve: its names and its chain. A route's chain is a ``Next``: it takes the exchange and returns the partner's answer. A ``Filter``
wraps the rest of the chain; an ``Observer`` sees each finished exchange (access log, metrics) and
never changes it. ``proxy.chain`` folds filters around the forwarder once, when config is compiled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from proxy.exchange import Exchange, UpstreamResponse
from proxy.reply import Reply
from proxy.tracing import LanguagePicker

Next = Callable[[Exchange], Awaitable[UpstreamResponse]]
# How the callback path (``proxy.fastpath``) hands on an outcome: the answer, or what was raised.
Done = Callable[[UpstreamResponse | None, BaseException | None], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# How a listener's server takes the answer to one request (called once).
ReplyTo = Callable[[Reply], None]


class FastPath(Protocol):
    """A route's callback path (``proxy.fastpath.FastRoute``): start the request as plain calls and
    return True (``end.finish_fast`` is called once, later), or return False having done nothing."""

    def run(self, ex: Exchange, end: FastEnd, route: CompiledRoute, observers: tuple[Observer, ...], done: ReplyTo) -> bool: ...


class FastState(Protocol):
    """What a callback-path request carries to its end (``proxy.fastpath.FastCall``)."""

    @property
    def ex(self) -> Exchange: ...

    @property
    def route(self) -> CompiledRoute: ...

    @property
    def observers(self) -> tuple[Observer, ...]: ...

    @property
    def done(self) -> ReplyTo: ...


class FastEnd(Protocol):
    """Where a callback-path request ends (``proxy.listener.Listener.finish_fast``): rendered,
    observed, answered through ``call.done``."""

    def finish_fast(self, call: FastState, upstream: UpstreamResponse | None, error: BaseException | None) -> None: ...


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    path: str                         # the match path, a template for routes with {params}
    cluster: str
    upstream_path: str                # as configured (the template, never a concrete value)
    query: tuple[str, ...]            # allow-listed query parameters forwarded upstream
    chain: Next
    language: LanguagePicker          # Accept-Language -> one of the route's error-table languages
    set_headers: tuple[tuple[str, str], ...] = ()  # upstream headers the route sets (Accept: ...)
    date: bool = False                # a fresh RFC 1123 Date header per upstream request
    fast: FastPath | None = None      # the same chain as plain calls, where the route allows it


class Filter(Protocol):
    """Config in the constructor, one ``__call__``. It may answer itself (raise a ``ProxyError``),
    change the exchange before calling ``next``, or look at the partner's answer on the way back."""

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse: ...


class Observer(Protocol):
    """Sees each matched request start and every answered request finish (after its response is
    built); must not raise or block. ``route`` is None for a request no route matched. One that
    raises anyway is logged with ``ACCOUNTING_BUG`` and does not change the answer
    (``proxy.listener.account``, ``proxy.lane.LaneCall.account``)."""

    def on_start(self, ex: Exchange, route: CompiledRoute) -> None: ...

    def on_finish(self, ex: Exchange, route: CompiledRoute | None, status: int, upstream: UpstreamResponse | None) -> None: ...


ACCOUNTING_BUG = "unhandled error accounting route %s (request %s); the answer stands"


def report_to(done: Done, task: asyncio.Task[UpstreamResponse]) -> None:
    """A task's done-callback that hands its outcome to ``done``: where the callback path had to
    continue in a coroutine (a retry, a token renewal), its result rejoins the plain calls here."""
    if task.cancelled():
        done(None, asyncio.CancelledError())
        return
    exc = task.exception()
    if exc is not None:
        done(None, exc)
    else:
        done(task.result(), None)
