"""Assemble the two aiohttp applications: the data listener and the admin listener.

Every long-lived resource (sessions, Redis clients, providers, the log thread) is created in a
``cleanup_ctx`` and stored under a ``web.AppKey``; nothing is global, so tests build a fresh app
each time and the process can hold several (``demo`` runs the sandbox beside the sidecar).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import IO

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.commlog import CommunicationLog
from proxy.config import LoadedConfig
from proxy.downstream import AiohttpListener, CatchAllResource
from proxy.listener import Listener
from proxy.metrics import Metrics
from proxy.notify import Notifier
from proxy.resources import Resources
from proxy.state import STATE, ProxyState

LISTENER = web.AppKey("proxy_listener", Listener)

DATA_SERVER_ENV = "PARTNER_PROXY_DATA_SERVER"


def data_server() -> str:
    """Which server runs the data listener: ``h1`` (proxy/h1, the default) or ``aiohttp`` (the
    previous adapter, kept as a fallback). An environment switch rather than a routes.yaml key: it is
    a deployment decision read once at start-up, and a reload cannot swap servers under open sockets."""
    value = os.environ.get(DATA_SERVER_ENV, "h1").strip().lower() or "h1"
    if value not in ("h1", "aiohttp"):
        raise ValueError(f"{DATA_SERVER_ENV}={value!r}: use h1 or aiohttp")
    return value


def build_state(loaded: LoadedConfig, *, registry: CollectorRegistry | None = None, log_stream: IO[str] | None = None) -> ProxyState:
    metrics = Metrics(registry)
    resources = Resources(metrics, commlog=CommunicationLog(stream=log_stream))
    state = ProxyState(initial=loaded, metrics=metrics, resources=resources, notifier=Notifier(loaded.proxy.notifications, metrics))
    resources.hooks = state.hooks()
    return state


def build_data_app(state: ProxyState) -> web.Application:
    # client_max_size bounds downstream bodies; the GET route carries none.
    listener = Listener(state.current)
    adapter = AiohttpListener(listener)
    app = web.Application(
        client_max_size=1024 * 1024,
        handler_args={"max_field_size": 8190, "max_line_size": 8190},
        middlewares=[adapter.router_errors],
    )
    app[STATE] = state
    app[LISTENER] = listener

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await state.open()
        try:
            yield
        finally:
            await state.close()

    app.cleanup_ctx.append(resources)
    # Every request goes to the listener, which routes on the current (reloadable) config. The
    # configured paths get plain resources only because aiohttp finds those with one dict lookup;
    # the catch-all takes everything else, including targets like "*" and "host:port".
    for path in dict.fromkeys(r.path for r in state.initial.proxy.routes):
        app.router.add_route("*", path, adapter.handle, expect_handler=adapter.expect)
    catch_all = CatchAllResource()
    app.router.register_resource(catch_all)
    catch_all.add_route("*", adapter.handle, expect_handler=adapter.expect)
    return app
