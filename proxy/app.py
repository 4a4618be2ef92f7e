"""Assemble the two aiohttp applications: the data listener and the admin listener.

Every long-lived resource (sessions, Redis clients, providers, the log thread) is created in a
``cleanup_ctx`` and stored under a ``web.AppKey``; nothing is global, so tests build a fresh app
each time and the process can hold several (``demo`` runs the sandbox beside the sidecar).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import IO

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.commlog import CommunicationLog
from proxy.config import LoadedConfig
from proxy.listener import Listener
from proxy.metrics import Metrics
from proxy.notify import Notifier
from proxy.runtime import Resources
from proxy.state import STATE, ProxyState

log = logging.getLogger("proxy.app")




def build_state(loaded: LoadedConfig, *, registry: CollectorRegistry | None = None, log_stream: IO[str] | None = None) -> ProxyState:
    metrics = Metrics(registry)
    commlog = CommunicationLog(stream=log_stream, redact_fields=loaded.proxy.log.redact_fields, level=loaded.proxy.log.level)
    notifier = Notifier(loaded.proxy.notifications, metrics)
    return ProxyState(loaded=loaded, metrics=metrics, commlog=commlog, notifier=notifier)


class CatchAllResource(web.PlainResource):
    """Matches every request target (aiohttp's own resources need a path starting with "/")."""

    def __init__(self) -> None:
        super().__init__("/", name="partner-proxy-catch-all")

    def _match(self, path: str) -> dict[str, str] | None:
        return {}

    def raw_match(self, path: str) -> bool:
        return True


def build_data_app(state: ProxyState) -> web.Application:
    # client_max_size bounds downstream bodies; the GET route carries none.
    listener = Listener(state.current, state.metrics, state.commlog)
    app = web.Application(
        client_max_size=1024 * 1024,
        handler_args={"max_field_size": 8190, "max_line_size": 8190},
        middlewares=[listener.router_errors],
    )
    app[STATE] = state

    async def resources(app: web.Application) -> AsyncIterator[None]:
        state.commlog.start()
        await state.notifier.start()
        state.resources = Resources(state.metrics, state.hooks())
        state.runtime = state.resources.build(state.loaded)
        try:
            yield
        finally:
            await state.resources.close()
            await state.notifier.stop()
            state.commlog.stop()

    app.cleanup_ctx.append(resources)
    # Every request goes to the listener, which routes on the current (reloadable) config. The
    # configured paths get plain resources only because aiohttp finds those with one dict lookup;
    # the catch-all takes everything else, including targets like "*" and "host:port".
    for path in dict.fromkeys(r.path for r in state.loaded.proxy.routes):
        app.router.add_route("*", path, listener.handle, expect_handler=listener.expect)
    catch_all = CatchAllResource()
    app.router.register_resource(catch_all)
    catch_all.add_route("*", listener.handle, expect_handler=listener.expect)
    return app
