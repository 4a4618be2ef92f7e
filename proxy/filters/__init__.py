"""HTTP filters: one small class per module, config in, one ``async __call__(exchange, next)``.

A filter may answer itself (raise a ``ProxyError``), change the exchange before calling ``next``,
or look at the partner's answer on the way back. ``proxy.chain`` folds them around the forwarder
once per route when the config is compiled.
"""

from __future__ import annotations

from typing import Protocol

from proxy.exchange import Exchange, Next, UpstreamResponse


class Filter(Protocol):
    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse: ...


__all__ = ["Filter"]
