"""The shared token cache on Redis Cluster: three masters, no replicas, the minimal ACL (+ slot map).

One provider's token and fetch lock carry the hash tag ``{provider}``, so they live in one slot on
one master. Losing that master (no replica to promote) costs no request: tokens are served from
memory or fetched directly, and the failures are counted. The cluster is started per test (about
two seconds) because the second test kills a node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from proxy.errors import TokenUnavailable
from tests.redis_topologies import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    Topology,
    acl_log,
    cluster_node_for_key,
    data_node,
    start_cluster_topology,
)
from tests.test_oauth import PROVIDER, Clock, Harness, Issuer, harness_on, serve_issuer, fetches, sample

pytestmark = [pytest.mark.redis_topology, pytest.mark.timeout(60)]

KEY = "partner-proxy:token:{" + PROVIDER + "}"
REDIS_OPS = ("get", "set", "delete", "lock", "unlock")


@pytest.fixture
def cluster() -> Iterator[Topology]:
    topo = start_cluster_topology()
    yield topo
    topo.cleanup()


@pytest.fixture
async def admin(cluster: Topology) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", p.port) for p in cluster.procs],
        username=ADMIN_USER, password=ADMIN_PASSWORD, decode_responses=True, require_full_coverage=False,
    )
    yield client
    await client.aclose()


@pytest.fixture
async def issuer(aiohttp_server: Any) -> Issuer:
    return await serve_issuer(aiohttp_server, Clock())


@pytest.fixture
async def h(issuer: Issuer, cluster: Topology) -> AsyncIterator[Harness]:
    async for harness in harness_on(issuer, issuer.clock, cluster.url):  # type: ignore[arg-type]
        yield harness


def redis_errors(h: Harness) -> float:
    return sum(sample(h.metrics, "partner_proxy_redis_errors_total", op=op) for op in REDIS_OPS)


async def test_three_cold_replicas_share_one_fetch_and_the_keys_share_a_slot(
    h: Harness, cluster: Topology, admin: RedisCluster
) -> None:
    h.issuer.delay = 0.1
    replicas = [await h.provider() for _ in range(3)]
    tokens = await asyncio.gather(*(p.get() for p in replicas for _ in range(20)))
    assert h.issuer.calls == 1
    assert {t.value for t in tokens} == {"tok-1"}
    assert sorted({t.source for t in tokens}) == ["fetch", "redis"]
    # The token is in the cluster under the hash-tagged key, and the lock key maps to the same slot.
    stored = await admin.get(KEY)
    assert stored is not None and "tok-1" in stored
    assert await admin.cluster_keyslot(KEY) == await admin.cluster_keyslot(KEY + ":lock")
    assert await admin.cluster_keyslot(KEY) == await admin.cluster_keyslot(PROVIDER)
    # A renewal goes through the compare-and-delete and set-if-newer scripts in that slot.
    renewed = await replicas[0].renew("tok-1")
    assert renewed.value == "tok-2" and renewed.source == "fetch"
    assert "tok-2" in (await admin.get(KEY) or "")
    assert (await replicas[1].renew("tok-1")).value == "tok-2"  # another replica's newer token, no fetch
    assert h.issuer.calls == 2
    assert redis_errors(h) == 0
    for p in cluster.procs:
        assert acl_log(p.port).strip() == "", f"the minimal ACL refused a command on {p.port}"


async def test_the_master_of_the_token_slot_killed_costs_no_request(h: Harness, cluster: Topology) -> None:
    a = await h.provider()
    b = await h.provider()
    assert (await a.get()).source == "fetch"
    assert (await b.get()).source == "redis"
    data_node(cluster, cluster_node_for_key(cluster, KEY)).kill()
    # Memory keeps serving without touching Redis.
    assert {(await a.get()).source for _ in range(20)} == {"memory"}
    # A renewal and a cold replica meet the dead node: counted, then fetched directly.
    renewed = await a.renew("tok-1")
    assert renewed.source == "fetch"
    c = await h.provider()
    try:
        cold = await c.get()
    except TokenUnavailable as exc:  # pragma: no cover - the assertion below explains it
        raise AssertionError("a lost cluster node turned into a token failure") from exc
    assert cold.source == "fetch"
    assert redis_errors(h) >= 2
    assert fetches(h.metrics, "success") == 3
    # And it stays that way while the node is gone: every lookup answered, none from Redis.
    more = await asyncio.gather(*(c.get() for _ in range(20)), *(b.get() for _ in range(20)))
    assert {t.source for t in more} == {"memory"}
