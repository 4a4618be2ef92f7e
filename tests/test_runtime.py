"""Resources across reloads: unchanged clusters are kept, replaced ones are closed only after a grace period."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.config import LoadedConfig
from proxy.metrics import Metrics
from proxy.oauth.store import RedisTokenStore
from proxy.resources import Resources, Staged
from proxy.runtime import Runtime, compile_runtime
from proxy.upstream.cluster import Cluster
from tests.helpers import patched_routes, shipped_config


def closed(cluster: Cluster) -> bool:
    return bool(getattr(cluster.transport, "_closed"))


def build(resources: Resources, loaded: LoadedConfig) -> Runtime:
    staged = Staged()
    runtime = compile_runtime(loaded, resources, staged)
    resources.commit(staged)
    return runtime


async def test_replaced_cluster_stays_open_for_requests_in_flight_then_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.resources.RETIRE_MARGIN", 0.2)
    resources = Resources(Metrics())
    short = patched_routes(tmp_path, {"timeout: 10s": "timeout: 100ms", "max_connections: 100": "max_connections: 100\n    pending_timeout: 100ms"})
    first = build(resources, shipped_config("http://127.0.0.1:1", routes=short))
    same = build(resources, shipped_config("http://127.0.0.1:1", routes=short))
    assert same.clusters["tokopedia"] is first.clusters["tokopedia"]  # unchanged config: same pool and breaker
    second = build(resources, shipped_config("http://127.0.0.1:1"))  # the cluster's timeout changed
    old, new = first.clusters["tokopedia"], second.clusters["tokopedia"]
    assert old is not new
    assert not closed(old)  # a request that started on it may still retry
    for _ in range(100):
        if closed(old):
            break
        await asyncio.sleep(0.02)
    assert closed(old)  # closed after the longest such request could take (2 x (100 ms wait + 100 ms attempt) + margin)
    assert not closed(new)
    await resources.close()
    assert closed(new)


async def test_a_build_that_is_discarded_leaves_the_running_objects_alone(tmp_path: Path) -> None:
    resources = Resources(Metrics())
    running = build(resources, shipped_config("http://127.0.0.1:1"))
    short = patched_routes(tmp_path, {"timeout: 10s": "timeout: 100ms"})
    staged = Staged()
    candidate = compile_runtime(shipped_config("http://127.0.0.1:1", routes=short), resources, staged)
    await resources.discard(staged)  # e.g. the notifier could not be started: nothing is applied
    assert closed(candidate.clusters["tokopedia"])
    again = build(resources, shipped_config("http://127.0.0.1:1"))
    assert again.clusters["tokopedia"] is running.clusters["tokopedia"]  # still the running one
    assert not closed(running.clusters["tokopedia"])
    await resources.close()


async def test_a_store_no_provider_uses_after_a_reload_is_closed_after_the_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload that changes token_cache makes a new store; the old one (its Redis connections, its
    TLS file watch) is closed once requests that started before the reload are past, not kept
    until shutdown. Nothing connects here: building a store does no I/O."""
    monkeypatch.setattr("proxy.resources.RETIRE_MARGIN", 0.1)
    closes: list[str] = []
    real_close = RedisTokenStore.close

    async def close(self: RedisTokenStore) -> None:  # the real close, seen from outside
        closes.append(self._prefix)
        await real_close(self)

    monkeypatch.setattr(RedisTokenStore, "close", close)
    resources = Resources(Metrics())
    other = patched_routes(tmp_path, {"token_cache: {redis_url: \"${REDIS_URL:-}\"}": "token_cache: {redis_url: \"${REDIS_URL:-}\", key_prefix: \"other:\"}"})
    first = build(resources, shipped_config("http://127.0.0.1:1", redis_url="redis://127.0.0.1:1/0"))
    again = build(resources, shipped_config("http://127.0.0.1:1", redis_url="redis://127.0.0.1:1/0"))
    assert again.providers["tokopedia"] is first.providers["tokopedia"]  # unchanged: same provider, same store
    build(resources, shipped_config("http://127.0.0.1:1", redis_url="redis://127.0.0.1:1/0", routes=other))
    assert closes == []  # a request that started on the old runtime may still renew through it
    for _ in range(100):
        if closes:
            break
        await asyncio.sleep(0.02)
    assert closes == ["partner-proxy:token:"]  # the old store, once; the new one is running
    await resources.close()
    assert closes == ["partner-proxy:token:", "other:"]
