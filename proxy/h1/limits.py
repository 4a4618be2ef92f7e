"""The data listener's safety limits: what a client may send and how long it may take.

aiohttp had line and field caps but no header-read timeout, no cap on the header bytes a slow
client drips in, no keep-alive idle bound of ours and no pause when a client stops reading. These
are the bounds the listener enforces. ``H1Limits`` is the config's ``ListenerConfig`` (routes.yaml's
``listener:`` block), so the defaults are written once, in ``proxy.config.models``; ``H1Limits()``
holds them. The model imports nothing of the package, so ``proxy.h1`` gains no cycle by it.
"""

from __future__ import annotations

from proxy.config.models import ListenerConfig

H1Limits = ListenerConfig

__all__ = ["H1Limits"]
