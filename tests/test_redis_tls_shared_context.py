"""One TLS context per Redis client, built at start-up, for every topology over TLS: real servers.

redis-py builds an ``ssl.SSLContext`` per connection object by default, reading the system CA
bundle, the CA file and the client certificate on the event loop for each new connection.
``proxy.oauth.redis_client`` builds one context when the client is built and every connection
uses it. Proved here, against a TLS-only server, a TLS Sentinel set-up (sentinels, master and
replica, replication and sentinel links over TLS) and a TLS Cluster (``tls-cluster yes``):

- nothing on the event loop reads a TLS file (blockbuster, extended to the C-level reads) while
  the token cache works through the topology;
- every connection, sentinel connections included, holds the very same context object, with
  CERT_REQUIRED and the host-name check on;
- new connections after the CA and client certificate files were deleted still connect (nothing
  reads them per connection);
- a wrong CA, and a certificate for another host name, are refused with the clear reason;
- a CA file replaced on disk (a Secret-volume symlink swap) reaches every connection class of the
  topology: connections made after the swap to sentinels, master or cluster nodes hold the new
  context (failed and broken replacements: tests/test_redis_tls_rotation.py).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from proxy.config.models import Secret, TokenCacheConfig
from proxy.config.redis_url import parse_redis_url
from proxy.metrics import Metrics
from proxy.oauth import redis_client
from proxy.oauth.redis_client import RedisClient, build_client, failure_reason
from proxy.oauth.store import RedisTokenStore
from tests.blocking import no_blocking_calls
from tests.redis_topologies import (
    SIDECAR_PASSWORD,
    SIDECAR_USER,
    Pki,
    RedisProc,
    SecretVolume,
    Topology,
    make_pki,
    make_server_cert,
    start_cluster_topology,
    start_sentinel_topology,
    start_tls,
    temp_root,
    tls_query,
)
from tests.test_oauth import Clock, Issuer, fetches, harness_on, sample, serve_issuer

pytestmark = [pytest.mark.redis_topology, pytest.mark.timeout(90)]

TLS_REASON = "TLS handshake failed"
REDIS_OPS = ("get", "set", "delete", "lock", "unlock")


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = temp_root("pp-tls-ctx-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(root: Path) -> Pki:
    return make_pki(root)


@pytest.fixture(scope="module")
def single(root: Path, pki: Pki) -> Iterator[Topology]:
    node = start_tls(root, pki)
    url = f"rediss://{SIDECAR_USER}:{SIDECAR_PASSWORD}@127.0.0.1:{node.port}/0" + tls_query(pki)
    yield Topology(url, [node], root, pki)
    node.stop()


@pytest.fixture(scope="module")
def sentinel(pki: Pki) -> Iterator[Topology]:
    topo = start_sentinel_topology(tls=pki)
    yield topo
    topo.cleanup()


@pytest.fixture(scope="module")
def cluster(pki: Pki) -> Iterator[Topology]:
    topo = start_cluster_topology(tls=pki)
    yield topo
    topo.cleanup()


@pytest.fixture(params=["single", "sentinel", "cluster"])
def topo(request: pytest.FixtureRequest) -> Topology:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def with_files(url: str, ca: Path, cert: Path, key: Path) -> str:
    """``url`` with its TLS query replaced."""
    return url.split("?", 1)[0] + f"?ssl_ca_certs={ca}&ssl_certfile={cert}&ssl_keyfile={key}"


def client_for(url: str) -> RedisClient:
    return build_client(parse_redis_url(url), TokenCacheConfig(redis_url=Secret(url), connect_timeout=2.0, socket_timeout=2.0))


def tls_connections(client: RedisClient) -> list[Any]:
    """Every connection object the client made: data connections, and the sentinels' too."""
    if isinstance(client, RedisCluster):
        return [c for node in client.get_nodes() for c in node._connections]
    pools = [client.connection_pool]
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    if manager is not None:
        pools += [s.connection_pool for s in manager.sentinels]
    return [c for p in pools for c in (*p._available_connections, *p._in_use_connections)]


async def burst(client: RedisClient, n: int = 8) -> None:
    """Concurrent commands on keys the sidecar's ACL allows: the pool opens several connections
    (and Cluster one per node the keys' slots live on). At most ``POOL_SIZE``: a cluster node
    refuses more than that at once (MaxConnectionsError) instead of waiting."""
    keys = [f"partner-proxy:token:tls-ctx-{i}" for i in range(n)]
    await asyncio.gather(*(_once_more(partial(client.set, k, "v", px=60_000)) for k in keys))
    assert await asyncio.gather(*(_once_more(partial(client.get, k)) for k in keys)) == [b"v"] * n


async def _once_more(command: Callable[[], Awaitable[Any]]) -> Any:
    """One more try after redis-py's own race: its asyncio connection raises AttributeError
    ('NoneType' object has no attribute 'writelines') when a connection is torn down during its
    handshake (about 1 run in 30 of the Cluster case, redis-py 8.1). The sidecar's token store
    counts that as a Redis failure (tests/test_oauth.py); these tests are about TLS contexts."""
    try:
        return await command()
    except AttributeError:
        return await command()


def assert_one_context(conns: list[Any], at_least: int) -> ssl.SSLContext:
    assert len(conns) >= at_least, f"only {len(conns)} connections: the test proves nothing"
    contexts = {id(c.ssl_context.context) for c in conns}
    assert len(contexts) == 1, f"{len(contexts)} TLS contexts for {len(conns)} connections"
    context: ssl.SSLContext = conns[0].ssl_context.context
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    return context


@pytest.fixture
async def issuer(aiohttp_server: Any) -> Issuer:
    return await serve_issuer(aiohttp_server, Clock())


# --- the token cache through each TLS topology, with no file read on the loop ------------------


async def test_token_cache_over_tls_reads_no_file_on_the_loop_and_shares_one_context(topo: Topology, issuer: Issuer) -> None:
    async for h in harness_on(issuer, issuer.clock, topo.url):
        replicas = [await h.provider() for _ in range(3)]  # built here, at "start-up": the context is built here
        issuer.delay = 0.1  # the fetch is in flight while the other replicas look
        with no_blocking_calls(["proxy"]):
            # Cold: lock, fetch, write; the other replicas poll and read: many new TLS connections.
            tokens = await asyncio.gather(*(p.get() for p in replicas for _ in range(10)))
            renewed = await replicas[0].renew(tokens[0].value)
        assert issuer.calls == 2, "the replicas did not share the fetch through Redis"
        assert sorted({t.source for t in tokens}) == ["fetch", "redis"]
        assert renewed.source == "fetch"
        # A blocking call inside redis-py surfaces as a Redis error (the token is then fetched
        # directly); there must be none.
        assert sum(sample(h.metrics, "partner_proxy_redis_errors_total", op=op) for op in REDIS_OPS) == 0
        assert fetches(h.metrics, "success") == 2
        contexts = set()
        for p in replicas:
            client = p._store._redis  # type: ignore[union-attr]
            contexts.add(id(assert_one_context(tls_connections(client), at_least=1)))
        assert len(contexts) == 3  # one per client (per replica here), not one per connection


async def test_every_connection_of_a_client_holds_the_one_context(topo: Topology) -> None:
    client = client_for(topo.url)
    try:
        await burst(client)
        conns = tls_connections(client)
        # Cluster: one or more per node; Sentinel: master connections and sentinel connections.
        assert_one_context(conns, at_least=3)
        if topo is not None and "sentinel" in topo.url:
            assert any(type(c).__name__.startswith("SharedContextSentinelManaged") for c in conns)
            assert any(type(c).__name__ == "SharedContextSSLConnection" for c in conns), "no sentinel connection"
    finally:
        await client.aclose()


async def test_new_connections_after_the_tls_files_are_deleted_still_connect(topo: Topology, tmp_path: Path) -> None:
    pki = topo.tls
    assert pki is not None
    copies = [shutil.copy(f, tmp_path / f.name) for f in (pki.ca, pki.client_cert, pki.client_key)]
    client = client_for(with_files(topo.url, *(Path(c) for c in copies)))  # reads the files, once
    for c in copies:
        Path(c).unlink()
    try:
        await burst(client)  # every connection is new, made after the files are gone
        assert_one_context(tls_connections(client), at_least=3)
    finally:
        await client.aclose()


# --- refusals: a wrong CA, a certificate for another host ---------------------------------------


async def test_a_wrong_ca_is_refused_with_the_tls_reason(topo: Topology) -> None:
    pki = topo.tls
    assert pki is not None
    client = client_for(with_files(topo.url, pki.other_ca, pki.client_cert, pki.client_key))
    try:
        with pytest.raises(Exception) as info:
            await client.get("partner-proxy:token:tls-ctx-0")
        assert failure_reason(info.value).startswith(TLS_REASON), (type(info.value), info.value)
    finally:
        await client.aclose()


async def test_a_certificate_for_another_host_is_refused(root: Path, pki: Pki) -> None:
    """Same CA, valid certificate, but for cache.other.example: connecting to 127.0.0.1 must fail
    the host-name check (the shared context still checks each connection's own host)."""
    cert = make_server_cert(pki, "other-host", "DNS:cache.other.example")
    node: RedisProc = start_tls(root, pki, cert=cert)
    try:
        client = client_for(f"rediss://{SIDECAR_USER}:{SIDECAR_PASSWORD}@127.0.0.1:{node.port}/0" + tls_query(pki))
        try:
            with pytest.raises(Exception) as info:
                await client.get("partner-proxy:token:tls-ctx-0")
            assert failure_reason(info.value).startswith(TLS_REASON)
            chain: list[BaseException] = []
            cur: BaseException | None = info.value
            while cur is not None and len(chain) < 10:
                chain.append(cur)
                cur = cur.__cause__ or cur.__context__
            mismatch = [e for e in chain if isinstance(e, ssl.SSLCertVerificationError)]
            assert mismatch and "mismatch" in str(mismatch[0]), chain
        finally:
            await client.aclose()
    finally:
        node.stop()


# --- rotation: a CA file replaced on disk reaches every connection class ---------------------------


async def disconnect_all(client: RedisClient) -> None:
    """Close every open connection (the objects stay in their pools and reconnect on demand)."""
    if isinstance(client, RedisCluster):
        for node in client.get_nodes():
            await node.disconnect()
        return
    await client.connection_pool.disconnect()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel_client in manager.sentinels if manager is not None else []:
        await sentinel_client.connection_pool.disconnect()


async def test_a_replaced_ca_file_reaches_every_connection_of_the_topology(topo: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CA file is swapped (Secret-volume symlink) for a bundle that also verifies the servers:
    the context is rebuilt off the loop, and every connection made after the swap, to a sentinel,
    the master or a cluster node, holds the new one."""
    pki = topo.tls
    assert pki is not None
    monkeypatch.setattr(redis_client, "TLS_POLL_INTERVAL", 0.05)
    vol = SecretVolume(tmp_path / "redis-tls", {"ca.crt": pki.ca, "tls.crt": pki.client_cert, "tls.key": pki.client_key})
    url = with_files(topo.url, vol.path("ca.crt"), vol.path("tls.crt"), vol.path("tls.key"))
    metrics = Metrics()
    store = RedisTokenStore.from_config(TokenCacheConfig(redis_url=Secret(url), connect_timeout=2.0, socket_timeout=2.0), metrics)
    assert store is not None and store._tls is not None
    try:
        with no_blocking_calls(["proxy"]):
            assert (await store.get("tls-rotation", 0.0)).ok
            old = assert_one_context(tls_connections(store._redis), at_least=1)
            vol.update({"ca.crt": pki.other_ca.read_bytes() + pki.ca.read_bytes(), "tls.crt": pki.client_cert, "tls.key": pki.client_key})
            for _ in range(100):
                await asyncio.sleep(0.05)
                if store._tls.context is not old:
                    break
            else:
                raise AssertionError("the replaced CA file was not put in use")
            await disconnect_all(store._redis)
            assert (await store.get("tls-rotation", 0.0)).ok
            await burst(store._redis)
        assert metrics.registry.get_sample_value("partner_proxy_redis_tls_reloads_total", {"result": "success"}) == 1
        assert {id(c.shared_ssl_context) for c in store._tls.classes} == {id(store._tls.context)}  # type: ignore[attr-defined]
        connected = [c for c in tls_connections(store._redis) if c.is_connected]
        assert assert_one_context(connected, at_least=3) is store._tls.context
        if "sentinel" in topo.url:
            assert any(type(c).__name__ == "SharedContextSSLConnection" for c in connected), "no sentinel connection made after the swap"
    finally:
        await store.close()
