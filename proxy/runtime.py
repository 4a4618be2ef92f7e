"""A compiled config ready to serve (``Runtime``) and the long-lived resources it uses (``Resources``).

A reload builds a whole new Runtime and the listener swaps it in with one assignment; requests in
flight finish on the Runtime they started with. Clusters (connection pools, breakers) and token
providers whose config did not change are reused, so a reload keeps the token cache and breaker
state of everything it did not touch.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from proxy.chain import build_chain
from proxy.config import LoadedConfig
from proxy.config.models import ClusterConfig, CredentialsConfig, TokenCacheConfig
from proxy.filters import Filter
from proxy.filters.credentials import InjectCredentials
from proxy.filters.error_rewrite import RewriteErrors
from proxy.filters.validate import ValidateRequest
from proxy.metrics import Metrics
from proxy.notify import Event
from proxy.oauth import RedisTokenStore, TokenProvider
from proxy.routing import CompiledRoute, RouteTable
from proxy.tracing import LanguagePicker
from proxy.upstream.breaker import BreakerGuard
from proxy.upstream.cluster import Cluster
from proxy.upstream.forwarder import Forwarder

log = logging.getLogger("proxy.runtime")

# Seconds added to the longest a request can take before replaced clusters/providers are closed.
RETIRE_MARGIN = 5.0


@dataclass(frozen=True)
class Runtime:
    loaded: LoadedConfig
    routes: RouteTable
    clusters: dict[str, Cluster]
    providers: dict[str, TokenProvider]


@dataclass
class Hooks:
    """Callbacks into notifications. They must stay valid across reloads (breakers and providers
    outlive a config), so app assembly passes functions that look up the current notifier."""

    breaker_opened: Callable[[str], None] = lambda cluster: None
    token_fetch_failed: Callable[[str, str, int], None] = lambda provider, reason, n: None
    partner_error: Callable[[Event], None] = lambda event: None


class Resources:
    """Owns every session, pool, breaker and provider; ``close()`` releases them all."""

    def __init__(self, metrics: Metrics, hooks: Hooks | None = None) -> None:
        self.metrics = metrics
        self.hooks = hooks or Hooks()
        self._clusters: dict[str, tuple[ClusterConfig, Cluster]] = {}
        self._providers: dict[str, tuple[tuple[CredentialsConfig, TokenCacheConfig], TokenProvider]] = {}
        self._stores: dict[TokenCacheConfig, RedisTokenStore | None] = {}
        self._token_session: aiohttp.ClientSession | None = None
        self._retired: list[Cluster | TokenProvider] = []
        self._closing: set[asyncio.Task[None]] = set()

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

    def cluster(self, config: ClusterConfig) -> Cluster:
        known = self._clusters.get(config.name)
        if known is not None and known[0] == config:
            return known[1]
        if known is not None:
            self._retired.append(known[1])
        breaker = BreakerGuard(config.name, config.circuit_breaker, self.metrics, self.hooks.breaker_opened)
        cluster = Cluster(config, self.metrics, breaker)
        self._clusters[config.name] = (config, cluster)
        return cluster

    def provider(self, config: CredentialsConfig, cache: TokenCacheConfig) -> TokenProvider:
        key = (config, cache)
        known = self._providers.get(config.name)
        if known is not None and known[0] == key:
            return known[1]
        if known is not None:
            self._retired.append(known[1])
        provider = TokenProvider(
            config,
            session=self.token_session,
            store=self._store(cache),
            metrics=self.metrics,
            on_fetch_failure=self.hooks.token_fetch_failed,
        )
        self._providers[config.name] = (key, provider)
        return provider

    def build(self, loaded: LoadedConfig) -> Runtime:
        cfg = loaded.proxy
        clusters = {name: self.cluster(c) for name, c in cfg.clusters.items()}
        providers = {
            name: self.provider(c, cfg.token_cache)
            for name, c in cfg.credentials.items()
            if any(cl.credentials == name for cl in cfg.clusters.values())
        }
        routes = []
        for r in cfg.routes:
            cluster = clusters[r.upstream.cluster]
            table = loaded.errors[cluster.config.errors]
            filters: list[Filter] = [ValidateRequest(r.methods, r.require)]
            if cluster.config.credentials:
                filters.append(InjectCredentials(providers[cluster.config.credentials]))
            filters.append(RewriteErrors(cluster.name, table, self.metrics, self.hooks.partner_error))
            url = URL(cluster.config.base_url + r.upstream.path, encoded=False)
            chain = build_chain(filters, Forwarder(cluster, url))
            routes.append(
                CompiledRoute(
                    name=r.name,
                    path=r.path,
                    cluster=cluster.name,
                    upstream_path=r.upstream.path,
                    query=r.upstream.query,
                    table=table,
                    languages=frozenset(table.languages()),
                    chain=chain,
                    language=LanguagePicker(frozenset(table.languages()), table.default_language),
                    log_route=json.dumps(r.name),
                    log_cluster=json.dumps(cluster.name),
                    log_upstream_path=json.dumps(r.upstream.path),
                )
            )
        return Runtime(loaded, RouteTable(routes), clusters, providers)

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
            ((c.config.timeout + c.config.pending_timeout) * (1 + c.config.retry.attempts) for c in retired if isinstance(c, Cluster)),  # each attempt may first wait for a connection
            default=0.0,
        )
        task = asyncio.get_running_loop().create_task(self._close_later(retired, grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_later(self, items: list[Cluster | TokenProvider], grace: float) -> None:
        try:
            await asyncio.sleep(grace)
        finally:  # also on shutdown (cancelled): nothing is left open
            for item in items:
                await item.close()

    async def close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for item in retired:
            await item.close()

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.close_retired()
        for _, cluster in self._clusters.values():
            await cluster.close()
        for _, provider in self._providers.values():
            await provider.close()
        for store in self._stores.values():
            if store is not None:
                await store.close()
        if self._token_session is not None:
            await self._token_session.close()
