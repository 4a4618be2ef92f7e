"""State shared by the data and admin listeners, and the reload that swaps the runtime whole."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiohttp import web

from proxy.config import LoadedConfig, load_config
from proxy.errors import ConfigError
from proxy.metrics import Metrics
from proxy.notify import Notifier
from proxy.resources import Hooks, Resources, Staged
from proxy.runtime import Runtime, compile_runtime

log = logging.getLogger("proxy.state")


@dataclass
class ProxyState:
    """What both listeners share. ``runtime`` is swapped whole on reload; ``initial`` is the config
    read at start-up, compiled when the data app starts (``open``)."""

    initial: LoadedConfig
    metrics: Metrics
    resources: Resources
    notifier: Notifier
    runtime: Runtime | None = None
    data_up: bool = False
    admin_up: bool = False
    draining: bool = False
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def loaded(self) -> LoadedConfig:
        return self.runtime.loaded if self.runtime is not None else self.initial

    @property
    def ready(self) -> bool:
        return self.runtime is not None and self.data_up and self.admin_up and not self.draining

    def current(self) -> Runtime:
        assert self.runtime is not None, "runtime is built in the data app's cleanup_ctx"
        return self.runtime

    async def open(self) -> None:
        """Start the long-lived writers and compile the start-up config (the data app's cleanup_ctx)."""
        self.resources.commlog.start()
        await self.notifier.start()
        staged = Staged()
        try:
            runtime = compile_runtime(self.initial, self.resources, staged)
        except BaseException:
            await self.resources.discard(staged)
            raise
        self.resources.commit(staged)
        self.runtime = runtime

    async def close(self) -> None:
        await self.resources.close()
        await self.notifier.stop()
        self.resources.commlog.stop()

    async def reload(self, routes_path: str, errors_path: str) -> bool:
        """Re-read both files and apply all of it, or nothing (then the running config stays)."""
        async with self.reload_lock:
            staged = Staged()
            try:
                loaded = await asyncio.to_thread(load_config, routes_path, errors_path)
                if loaded.proxy.credentials:  # providers take a store: a new one is built off the loop
                    await self.resources.prepare_store(loaded.proxy.token_cache)
                runtime = compile_runtime(loaded, self.resources, staged)
                if runtime.notifications != self.current().notifications:
                    await self.replace_notifier(Notifier(runtime.notifications, self.metrics))
            except ConfigError as exc:
                await self.resources.discard(staged)
                self.metrics.config_reloads.labels("failure").inc()
                for problem in exc.problems:
                    log.error("config reload rejected, keeping the running config: %s", problem)
                return False
            except Exception:
                await self.resources.discard(staged)
                self.metrics.config_reloads.labels("failure").inc()
                log.exception("config reload failed, keeping the running config")
                return False
            self.resources.commit(staged)
            self.runtime = runtime  # one assignment; requests in flight hold the one they started with
            self.metrics.config_reloads.labels("success").inc()
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
        """The notifier is told new settings by replacement: its queue and session are per settings."""
        await new.start()
        old, self.notifier = self.notifier, new
        await old.stop()


STATE = web.AppKey("proxy_state", ProxyState)
