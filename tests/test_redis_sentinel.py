"""The shared token cache behind Redis Sentinel: one master, one replica, three sentinels (quorum 2).

The topology is started once for the module (a few seconds: the sentinels must find each other);
the failover test kills the master and therefore runs last. Everything connects as the
``partner-proxy`` ACL user with the minimal ACL.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.sandbox import SANDBOX_STATE, SandboxState
from tests.helpers import sandbox_app
from tests.process import Sidecar, get_products, metric_value
from tests.redis_topologies import Topology, acl_log, data_node, sentinel_master_port, start_sentinel_topology
from tests.test_oauth import Clock, Harness, Issuer, fetches, harness_on, serve_issuer

pytestmark = [pytest.mark.redis_topology, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def sentinel() -> Iterator[Topology]:
    topo = start_sentinel_topology()
    yield topo
    topo.cleanup()


@pytest.fixture
async def issuer(aiohttp_server: Any) -> Issuer:
    return await serve_issuer(aiohttp_server, Clock())


@pytest.fixture
async def h(issuer: Issuer, sentinel: Topology) -> AsyncIterator[Harness]:
    async for harness in harness_on(issuer, issuer.clock, sentinel.url):  # type: ignore[arg-type]
        yield harness


async def test_three_cold_replicas_share_one_fetch_through_sentinel(h: Harness, sentinel: Topology) -> None:
    h.issuer.delay = 0.1  # the fetch is in flight while the other replicas look
    replicas = [await h.provider() for _ in range(3)]
    tokens = await asyncio.gather(*(p.get() for p in replicas for _ in range(20)))
    assert h.issuer.calls == 1
    assert {t.value for t in tokens} == {"tok-1"}
    assert sorted({t.source for t in tokens}) == ["fetch", "redis"]
    assert fetches(h.metrics, "success") == 1
    master = sentinel_master_port(sentinel)
    assert acl_log(master).strip() == "", "the minimal ACL refused a command"


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


def partner(sandbox: TestServer) -> SandboxState:
    return sandbox.app[SANDBOX_STATE]


@pytest.fixture
async def started(sandbox: TestServer) -> AsyncIterator[list[Sidecar]]:
    out: list[Sidecar] = []
    yield out
    for s in out:
        try:
            await s.stop()
        finally:
            s.kill()
            shutil.rmtree(s.dir, ignore_errors=True)


async def start(out: list[Sidecar], sandbox: TestServer, url: str) -> Sidecar:
    sidecar = Sidecar(str(sandbox.make_url("")).rstrip("/"), url)
    out.append(sidecar)
    return await sidecar.start()


@pytest.mark.process
async def test_master_killed_mid_traffic_costs_no_request_and_a_late_replica_reads_the_new_master(
    sentinel: Topology, sandbox: TestServer, started: list[Sidecar]
) -> None:
    # Runs last in this module: it kills the master.
    async with aiohttp.ClientSession() as session:
        warm = await asyncio.gather(*(start(started, sandbox, sentinel.url) for _ in range(2)))
        cold = await start(started, sandbox, sentinel.url)  # no request yet: its first lookup meets the outage
        assert [(await get_products(session, s))[0] for s in warm] == [200, 200]
        assert partner(sandbox).token_requests == 1
        stop = asyncio.Event()
        statuses: list[int] = []

        async def traffic() -> None:
            while not stop.is_set():
                for s in warm:
                    statuses.append((await get_products(session, s))[0])
                await asyncio.sleep(0.01)

        task = asyncio.create_task(traffic())
        old_master = sentinel_master_port(sentinel)
        await asyncio.sleep(0.3)
        data_node(sentinel, old_master).kill()
        # Before the sentinels notice (down-after 1 s): the cold sidecar's Redis lookup fails, is
        # counted, and it fetches directly.
        statuses.append((await get_products(session, cold))[0])
        # Sentinel promotes the replica: wait, bounded, for it.
        for _ in range(300):
            await asyncio.sleep(0.05)
            if sentinel_master_port(sentinel) != old_master:
                break
        else:
            raise AssertionError("no failover within 15 s")
        await asyncio.sleep(0.5)
        statuses.append((await get_products(session, cold))[0])
        stop.set()
        await task
        assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        assert metric_value(await cold.metrics(session), "partner_proxy_redis_errors_total") >= 1
        fetched = partner(sandbox).token_requests
        assert fetched == 2  # the first token, and the cold sidecar's direct fetch during the outage

        late = await start(started, sandbox, sentinel.url)  # cold, after the failover
        assert (await get_products(session, late))[0] == 200
        assert partner(sandbox).token_requests == fetched  # no new fetch: the token came from the new master
        text = await late.metrics(session)
        assert metric_value(text, 'partner_proxy_token_cache_lookups_total{layer="redis"') == 1
        assert metric_value(text, "partner_proxy_redis_errors_total") == 0
