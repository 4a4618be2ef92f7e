"""State shared by the data and admin listeners, and the reload that swaps the runtime."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiohttp import web

from proxy.commlog import CommunicationLog
from proxy.config import LoadedConfig, load_config
from proxy.errors import ConfigError
from proxy.metrics import Metrics
from proxy.notify import Notifier
from proxy.runtime import Hooks, Resources, Runtime

log = logging.getLogger("proxy.state")


@dataclass
class ProxyState:
    """What both listeners share. ``runtime`` is swapped whole on reload."""

    loaded: LoadedConfig
    metrics: Metrics
    commlog: CommunicationLog
    notifier: Notifier
    resources: Resources | None = None
    runtime: Runtime | None = None
    data_up: bool = False
    admin_up: bool = False
    draining: bool = False
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def ready(self) -> bool:
        return self.runtime is not None and self.data_up and self.admin_up and not self.draining

    def current(self) -> Runtime:
        assert self.runtime is not None, "runtime is built in the data app's cleanup_ctx"
        return self.runtime

    async def reload(self, routes_path: str, errors_path: str) -> bool:
        """Re-read both files; swap in the new runtime only if the whole config is valid."""
        async with self.reload_lock:
            try:
                loaded = await asyncio.to_thread(load_config, routes_path, errors_path)
                assert self.resources is not None
                runtime = self.resources.build(loaded)
            except ConfigError as exc:
                self.metrics.config_reloads.labels("failure").inc()
                for problem in exc.problems:
                    log.error("config reload rejected, keeping the running config: %s", problem)
                return False
            except Exception:
                self.metrics.config_reloads.labels("failure").inc()
                log.exception("config reload failed, keeping the running config")
                return False
            if loaded.proxy.notifications != self.loaded.proxy.notifications:
                await self.replace_notifier(Notifier(loaded.proxy.notifications, self.metrics))
            self.loaded, self.runtime = loaded, runtime  # one assignment each; requests hold their own
            self.metrics.config_reloads.labels("success").inc()
            self.resources.retire_in_background()
            log.info("config reloaded from %s and %s", routes_path, errors_path)
            return True

    def hooks(self) -> Hooks:
        """Hooks that always reach the *current* notifier, so a reload can replace it."""
        return Hooks(
            breaker_opened=lambda cluster: self.notifier.breaker_opened(cluster),
            token_fetch_failed=lambda provider, reason, n: self.notifier.token_fetch_failed(provider, reason, n),
            partner_error=lambda event: self.notifier.emit(event),
        )

    async def replace_notifier(self, new: Notifier) -> None:
        old, self.notifier = self.notifier, new
        await new.start()
        await old.stop()


STATE = web.AppKey("proxy_state", ProxyState)
