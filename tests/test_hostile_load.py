"""Hostile conditions, load: 2,000 requests at concurrency 50 against one cold sidecar subprocess.

Redis on, metrics read from the admin listener, the sandbox in this process. Nothing may be lost or
double-counted: every request answered 200, ``partner_proxy_requests_total`` sums to what was sent,
the partner saw one product call per success and exactly one token fetch (single flight across 50
concurrent cold callers). Bounded: a fixed request count, a fixed worker count and a time budget.
Timings are printed (``-s``), never asserted.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.sandbox import SANDBOX_STATE
from tests.helpers import JSON_HEADERS, sandbox_app
from tests.hostile import base, running, total

pytestmark = [pytest.mark.process]

REQUESTS = 2000
CONCURRENCY = 50
TIME_BUDGET = 90.0  # seconds for the whole load phase; far above what 2 cores need


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as s:
        yield s


@pytest.mark.timeout(180)
async def test_2000_requests_at_concurrency_50_lose_nothing(sandbox: TestServer, session: aiohttp.ClientSession, redis_url: str) -> None:
    partner = sandbox.app[SANDBOX_STATE]
    async with running(base(sandbox), redis_url) as sidecar:
        statuses: Counter[int] = Counter()
        failures: Counter[str] = Counter()
        latencies: list[float] = []
        next_index = 0
        loop = asyncio.get_running_loop()

        async def worker() -> None:
            nonlocal next_index
            while next_index < REQUESTS:  # bounded: each index is taken once
                next_index += 1
                started = loop.time()
                try:
                    async with session.get(sidecar.url, headers=JSON_HEADERS) as r:
                        await r.read()
                        statuses[r.status] += 1
                except aiohttp.ClientError as exc:
                    failures[type(exc).__name__] += 1
                latencies.append(loop.time() - started)

        started = loop.time()
        async with asyncio.timeout(TIME_BUDGET):
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = loop.time() - started

        text = await sidecar.metrics(session)
        answered = sum(statuses.values())
        latencies.sort()
        print(
            f"\nload: sent={next_index} answered={answered} ok={statuses[200]} lost={sum(failures.values())} "
            f"statuses={dict(statuses)} failures={dict(failures)} in {elapsed:.2f}s ({REQUESTS / elapsed:.0f} req/s); "
            f"latency p50={statistics.median(latencies) * 1000:.1f}ms p99={latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f}ms "
            f"max={latencies[-1] * 1000:.1f}ms; partner product calls={len(partner.product_calls)} token fetches={partner.token_requests}"
        )
        assert next_index == REQUESTS
        assert not failures, failures
        assert statuses == Counter({200: REQUESTS}), statuses
        assert total(text, "partner_proxy_requests_total") == REQUESTS
        assert total(text, "partner_proxy_requests_total", route="get_products", status="200") == REQUESTS
        assert len(partner.product_calls) == statuses[200]
        assert partner.token_requests == 1
        assert total(text, "partner_proxy_token_fetches_total", result="success") == 1
        assert total(text, "partner_proxy_upstream_retries_total") == 0
        assert total(text, "partner_proxy_upstream_overflow_total") == 0
