"""The long-lived resources a runtime uses: clusters (pools, breakers), token providers, Redis
stores, the token session, the tracer (``Tracing``), the communication-log writer and the request
metrics.

They outlive reloads: a reload asks for a cluster or provider by its config, gets the running one
back when that config did not change (token cache and breaker state survive), and a new one when it
did. New objects are only *staged* until the reload commits; a reload that fails closes what it
staged and leaves everything running as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

from proxy.commlog import CommunicationLog
from proxy.config.models import ClusterConfig, CredentialsConfig, TokenCacheConfig, TracingConfig
from proxy.metrics import Metrics
from proxy.notify import Event
from proxy.oauth import RedisTokenStore, TokenProvider
from proxy.otel import Tracing, TracingRef, package_version
from proxy.otel.config import settings_from
from proxy.request_metrics import RequestMetrics
from proxy.upstream.breaker import BreakerGuard
from proxy.upstream.cluster import Cluster

log = logging.getLogger("proxy.resources")

# Seconds added to the longest a request can take before replaced clusters/providers are closed.
RETIRE_MARGIN = 5.0


@dataclass
class Hooks:
    """Callbacks into notifications. They must stay valid across reloads (breakers and providers
    outlive a config), so app assembly passes functions that look up the current notifier."""

    breaker_opened: Callable[[str], None] = lambda cluster: None
    token_fetch_failed: Callable[[str, str, int], None] = lambda provider, reason, n: None
    partner_error: Callable[[Event], None] = lambda event: None


ProviderKey = tuple[CredentialsConfig, TokenCacheConfig]


@dataclass
class Staged:
    """What one build asked for: the running objects it reuses and the new ones it made."""

    clusters: dict[str, tuple[ClusterConfig, Cluster]] = field(default_factory=dict)
    providers: dict[str, tuple[ProviderKey, TokenProvider]] = field(default_factory=dict)
    new: list[Cluster | TokenProvider] = field(default_factory=list)
    tracing: Tracing | None = None       # the one the runtime uses: the running one, or new_tracing
    new_tracing: Tracing | None = None


class Resources:
    """Owns every session, pool, breaker and provider; ``close()`` releases them all."""

    def __init__(
        self,
        metrics: Metrics,
        hooks: Hooks | None = None,
        commlog: CommunicationLog | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.metrics = metrics
        self.hooks = hooks or Hooks()
        self.commlog = commlog or CommunicationLog()
        self.request_metrics = RequestMetrics(metrics)
        self._clusters: dict[str, tuple[ClusterConfig, Cluster]] = {}
        self._providers: dict[str, tuple[ProviderKey, TokenProvider]] = {}
        self._stores: dict[TokenCacheConfig, RedisTokenStore | None] = {}
        self._token_session: aiohttp.ClientSession | None = None
        self._retired: list[Cluster | TokenProvider | RedisTokenStore] = []
        self._closing: set[asyncio.Task[None]] = set()
        # Tracing: the OTEL_* variables are read once (they are the process's); a reload changes
        # only the tracing: block. Providers and breakers trace through the ref, which commit
        # points at the running Tracing.
        self._tracing_base = settings_from(dict(os.environ) if env is None else env, TracingConfig(), package_version())
        self._tracing: Tracing | None = None
        self.tracing_ref = TracingRef(Tracing.disabled())

    @property
    def token_session(self) -> aiohttp.ClientSession:
        # Token fetches go on their own session: never through the partner chain or its pool cap.
        if self._token_session is None:
            self._token_session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), connector=aiohttp.TCPConnector(limit=10)
            )
        return self._token_session

    def _store(self, config: TokenCacheConfig) -> RedisTokenStore | None:
        if config not in self._stores:
            self._stores[config] = RedisTokenStore.from_config(config, self.metrics)
        return self._stores[config]

    async def prepare_store(self, config: TokenCacheConfig) -> None:
        """Build the store of a ``token_cache`` the running set does not have, in a thread, before
        a build asks for it: parsing a TLS URL stats its files, and the client's TLS context reads
        the CA bundle and the client certificate (milliseconds the loop must not stop for). A
        build that is then discarded leaves it unused: the next commit drops it, as any other."""
        if config not in self._stores:
            store = await asyncio.to_thread(RedisTokenStore.from_config, config, self.metrics)
            self._stores.setdefault(config, store)

    def cluster(self, config: ClusterConfig, staged: Staged) -> Cluster:
        known = self._clusters.get(config.name)
        if known is not None and known[0] == config:
            staged.clusters[config.name] = known
            return known[1]
        breaker = BreakerGuard(config.name, config.circuit_breaker, self.metrics, self.hooks.breaker_opened, tracing=self.tracing_ref)
        cluster = Cluster(config, self.metrics, breaker)
        staged.clusters[config.name] = (config, cluster)
        staged.new.append(cluster)
        return cluster

    def tracing(self, config: TracingConfig, staged: Staged) -> Tracing:
        """The running Tracing when its settings are unchanged, else a new one (staged)."""
        settings = dataclasses.replace(self._tracing_base, config=config)
        known = self._tracing
        if known is not None and (known.settings == settings or not (known.enabled or settings.enabled)):
            staged.tracing = known
            return known
        tracing = Tracing.from_settings(settings, metrics=self.metrics)
        staged.tracing = staged.new_tracing = tracing
        return tracing

    def provider(self, config: CredentialsConfig, cache: TokenCacheConfig, staged: Staged) -> TokenProvider:
        key = (config, cache)
        known = self._providers.get(config.name)
        if known is not None and known[0] == key:
            staged.providers[config.name] = known
            return known[1]
        provider = TokenProvider(
            config,
            session=self.token_session,
            store=self._store(cache),
            metrics=self.metrics,
            on_fetch_failure=self.hooks.token_fetch_failed,
            tracing=self.tracing_ref,
        )
        staged.providers[config.name] = (key, provider)
        staged.new.append(provider)
        return provider

    def commit(self, staged: Staged) -> None:
        """Make the staged set the running one; what it no longer uses is retired (closed later)."""
        running: list[Cluster | TokenProvider] = [c for _, c in self._clusters.values()]
        running += [p for _, p in self._providers.values()]
        used = {id(c) for _, c in staged.clusters.values()} | {id(p) for _, p in staged.providers.values()}
        self._retired += [obj for obj in running if id(obj) not in used]
        self._clusters, self._providers = dict(staged.clusters), dict(staged.providers)
        self._retired += self._drop_unused_stores()
        if staged.tracing is not None and staged.tracing is not self._tracing:
            old, self._tracing = self._tracing, staged.tracing
            self.tracing_ref.tracing = staged.tracing
            if old is not None:
                self._close_tracing_in_background(old)
        self.retire_in_background()

    def _drop_unused_stores(self) -> list[RedisTokenStore]:
        """Stores no running provider uses any more (a reload changed ``token_cache``, or a build
        that was discarded made one): closed with the retired providers, after their grace, since
        a request that started on the old runtime may still renew a token through them. Kept
        open, each would hold its Redis connections and its TLS file watch until shutdown."""
        wanted = {cache for (_, cache), _ in self._providers.values()}
        unused = [config for config in self._stores if config not in wanted]
        return [store for store in (self._stores.pop(config) for config in unused) if store is not None]

    @property
    def running_tracing(self) -> Tracing | None:
        return self._tracing

    def _close_tracing_in_background(self, old: Tracing) -> None:
        """The replaced tracer: flush what it holds (bounded by its shutdown_timeout, in a thread)
        and stop its export thread. Spans of requests still in flight on it are counted as dropped
        (``shutdown``)."""
        task = asyncio.get_running_loop().create_task(old.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def discard(self, staged: Staged) -> None:
        """A build that failed: close only what it made; the running objects stay untouched."""
        for obj in staged.new:
            await obj.close()
        if staged.new_tracing is not None:
            await staged.new_tracing.aclose()

    def retire_in_background(self) -> None:
        """Close what a reload replaced once requests that started on the old runtime are done.

        Those requests may still retry or renew a token through the old cluster and provider, so
        they are closed after the longest a request can take (every attempt timing out, plus
        backoff and a token fetch), not at the moment of the swap.
        """
        retired, self._retired = self._retired, []
        if not retired:
            return
        grace = RETIRE_MARGIN + max(
            # each attempt may first wait for a pooled connection, then time out
            ((c.config.timeout + c.config.pending_timeout) * (1 + c.config.retry.attempts) for c in retired if isinstance(c, Cluster)),
            default=0.0,
        )
        task = asyncio.get_running_loop().create_task(self._close_later(retired, grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_later(self, items: list[Cluster | TokenProvider | RedisTokenStore], grace: float) -> None:
        try:
            await asyncio.sleep(grace)
        finally:  # also on shutdown (cancelled): nothing is left open
            for item in items:
                await item.close()

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        # Ask for the last spans first: the flush (bounded) runs in a thread while the rest closes.
        tracing, self._tracing = self._tracing, None
        flush = asyncio.ensure_future(tracing.aclose()) if tracing is not None else None
        retired, self._retired = self._retired, []
        for item in retired:
            await item.close()
        for _, cluster in self._clusters.values():
            await cluster.close()
        for _, provider in self._providers.values():
            await provider.close()
        for store in self._stores.values():
            if store is not None:
                await store.close()
        if self._token_session is not None:
            await self._token_session.close()
        if flush is not None:
            await flush
