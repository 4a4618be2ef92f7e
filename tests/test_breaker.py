"""Circuit breaker, cap, retries and their metrics: units on BreakerGuard, then the whole app."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.config.models import BreakerConfig
from proxy.errors import CircuitOpen, UpstreamTimeout
from proxy.metrics import Metrics
from tests.helpers import Rig, make_rig, patched_routes, sandbox_app, shipped_config


# --- BreakerGuard units ------------------------------------------------------------------------

async def _failing_call() -> None:
    await asyncio.sleep(0)
    raise UpstreamTimeout("boom")


async def test_awaited_failures_open_the_breaker() -> None:
    """The reason for our own guard: pybreaker's call() would count these coroutines as successes."""
    from proxy.upstream.breaker import BreakerGuard

    guard = BreakerGuard("c", BreakerConfig(fail_max=3, reset_timeout=30), Metrics())
    for _ in range(3):
        with pytest.raises(UpstreamTimeout):
            async with guard.attempt():
                await _failing_call()
    assert guard.state == "open"
    with pytest.raises(CircuitOpen) as info:
        async with guard.attempt():
            raise AssertionError("must not be admitted")
    assert 1 <= int(info.value.headers["Retry-After"]) <= 30


async def test_cancellation_is_not_a_failure() -> None:
    from proxy.upstream.breaker import BreakerGuard

    guard = BreakerGuard("c", BreakerConfig(fail_max=1, reset_timeout=30), Metrics())

    async def slow() -> None:
        async with guard.attempt():
            await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guard.state == "closed"


async def test_success_resets_the_failure_count() -> None:
    from proxy.upstream.breaker import BreakerGuard

    guard = BreakerGuard("c", BreakerConfig(fail_max=2, reset_timeout=30), Metrics())
    for _ in range(5):
        with pytest.raises(UpstreamTimeout):
            async with guard.attempt():
                await _failing_call()
        async with guard.attempt():
            pass
    assert guard.state == "closed"


# --- the whole app -------------------------------------------------------------------------------

@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


def base(sandbox: TestServer) -> str:
    return str(sandbox.make_url("")).rstrip("/")


async def breaker_rig(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path, *, fail_max: int = 3, reset: str = "30s", half_open: int = 1, attempts: int = 0, max_connections: int = 100, limits: str = "") -> Rig:
    routes = patched_routes(
        tmp_path,
        {
            "circuit_breaker: {fail_max: 5, reset_timeout: 30s, half_open_max_calls: 1}": f"circuit_breaker: {{fail_max: {fail_max}, reset_timeout: {reset}, half_open_max_calls: {half_open}}}",
            "retry: {attempts: 1, retry_on: [connect_failure, 5xx]}": f"retry: {{attempts: {attempts}, retry_on: [connect_failure, 5xx]}}",
            "max_connections: 100": f"max_connections: {max_connections}" + "".join(f"\n    {kv.strip()}" for kv in limits.split(",") if kv.strip()),
        },
    )
    return await make_rig(aiohttp_client, sandbox, shipped_config(base(sandbox), routes=routes))


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_three_500s_open_the_breaker_and_the_next_request_short_circuits(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    rig = await breaker_rig(aiohttp_client, sandbox, tmp_path, fail_max=3)
    statuses = []
    for _ in range(3):
        resp = await rig.get("?product_code=error-S00")  # partner HTTP 500 with S00
        statuses.append(resp.status)
        assert (await resp.json())["error"]["type"] == "ProductClosedException"
    assert statuses == [503, 503, 503]  # the mapped 5xx, including the one that tripped it
    calls = len(rig.partner.product_calls)
    resp = await rig.get()
    assert resp.status == 503
    body = await resp.json()
    assert body["error"]["type"] == "CircuitBreakerError"
    assert 1 <= int(resp.headers["Retry-After"]) <= 30
    assert len(rig.partner.product_calls) == calls  # the partner saw no call
    assert (await (await rig.admin.get("/breakers")).json()) == {"tokopedia": "open"}
    ready = await rig.admin.get("/readyz")
    assert ready.status == 200  # partner health is not readiness


async def test_partner_business_errors_never_open_the_breaker(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    rig = await breaker_rig(aiohttp_client, sandbox, tmp_path, fail_max=3)
    for _ in range(20):
        resp = await rig.get("?product_code=not-exists")
        assert (await resp.json())["error"]["partner_code"] == "P04"
    assert rig.state.current().clusters["tokopedia"].breaker.state == "closed"
    assert (await rig.get()).status == 200


async def test_half_open_admits_exactly_the_trial_budget_then_closes(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    rig = await breaker_rig(aiohttp_client, sandbox, tmp_path, fail_max=1, reset="200ms", half_open=2)
    assert (await rig.get("?product_code=status-500")).status == 502
    assert rig.state.current().clusters["tokopedia"].breaker.state == "open"
    await asyncio.sleep(0.3)  # let reset_timeout pass (not a timing assertion)
    before = len(rig.partner.product_calls)
    responses = await asyncio.gather(*(rig.get("?product_code=delay-200") for _ in range(20)))
    statuses = sorted(r.status for r in responses)
    assert len(rig.partner.product_calls) - before == 2
    assert statuses == [200, 200] + [503] * 18
    assert rig.state.current().clusters["tokopedia"].breaker.state == "closed"
    text = await rig.metrics()
    for frm, to in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
        assert metric(text, f'partner_proxy_circuit_breaker_transitions_total{{cluster="tokopedia",from="{frm}",to="{to}"}}') == 1.0
    assert metric(text, 'partner_proxy_circuit_breaker_state{cluster="tokopedia",state="closed"}') == 1.0
    assert metric(text, 'partner_proxy_circuit_breaker_state{cluster="tokopedia",state="open"}') == 0.0
    assert metric(text, 'partner_proxy_circuit_breaker_state{cluster="tokopedia",state="half_open"}') == 0.0


async def test_failed_trial_reopens(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    rig = await breaker_rig(aiohttp_client, sandbox, tmp_path, fail_max=1, reset="200ms")
    await rig.get("?product_code=status-500")
    await asyncio.sleep(0.3)
    assert (await rig.get("?product_code=status-503")).status == 502
    assert rig.state.current().clusters["tokopedia"].breaker.state == "open"
    gauge = await rig.metrics()
    assert metric(gauge, 'partner_proxy_circuit_breaker_state{cluster="tokopedia",state="open"}') == 1.0
    assert metric(gauge, 'partner_proxy_circuit_breaker_transitions_total{cluster="tokopedia",from="half_open",to="open"}') == 1.0


async def test_retries_count_toward_fail_max(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    rig = await breaker_rig(aiohttp_client, sandbox, tmp_path, fail_max=2, attempts=1)
    resp = await rig.get("?product_code=status-500")
    assert resp.status == 502  # both attempts failed: that request tripped it and gets its own answer
    assert rig.state.current().clusters["tokopedia"].breaker.state == "open"
    text = await rig.metrics()
    assert metric(text, 'partner_proxy_upstream_retries_total{cluster="tokopedia",reason="5xx"}') == 1.0


async def test_past_the_pool_requests_wait_and_past_the_pending_bound_answer_503_at_once(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    # Envoy's thresholds: 2 connections, 2 may wait for one; the other 2 of 6 are refused at once.
    rig = await breaker_rig(aiohttp_client, sandbox, tmp_path, max_connections=2, limits="max_pending_requests: 2")
    assert (await rig.get()).status == 200  # warm the token so requests race only for slots
    responses = await asyncio.gather(*(rig.get("?product_code=delay-300") for _ in range(6)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200, 200, 200, 200, 503, 503]
    overflow = [r for r in responses if r.status == 503]
    for r in overflow:
        assert (await r.json())["error"]["type"] == "ClusterOverflow" and r.headers["Retry-After"] == "1"
    text = await rig.metrics()
    assert metric(text, 'partner_proxy_upstream_overflow_total{cluster="tokopedia"}') == 2.0  # every threshold, as before
    assert metric(text, 'partner_proxy_cluster_overflow_total{cluster="tokopedia",threshold="max_pending_requests"}') == 2.0


async def test_a_wait_past_pending_timeout_and_a_request_past_max_requests_are_503(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    rig = await breaker_rig(aiohttp_client, sandbox, tmp_path, max_connections=1, limits="pending_timeout: 100ms, max_requests: 3")
    assert (await rig.get()).status == 200
    responses = await asyncio.gather(*(rig.get("?product_code=delay-400") for _ in range(4)))
    assert sorted(r.status for r in responses) == [200, 503, 503, 503]
    text = await rig.metrics()
    assert metric(text, 'partner_proxy_cluster_overflow_total{cluster="tokopedia",threshold="max_requests"}') == 1.0
    assert metric(text, 'partner_proxy_cluster_overflow_total{cluster="tokopedia",threshold="pending_timeout"}') == 2.0
    assert rig.state.current().clusters["tokopedia"].limits.pending == 0  # nothing left waiting


async def test_retry_budget_bounds_retries(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    rig = await breaker_rig(aiohttp_client, sandbox, tmp_path, fail_max=1000, attempts=3)
    for _ in range(20):
        await rig.get("?product_code=status-500")
    # floor: 3/s over a 10 s window = 30 retries; 20 requests x 3 extra attempts would be 60
    retries = metric(await rig.metrics(), 'partner_proxy_upstream_retries_total{cluster="tokopedia",reason="5xx"}')
    assert 0 < retries <= 30
    assert len(rig.partner.product_calls) == 20 + retries


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus; .ci/run installs it)")
async def test_metrics_pass_promtool_after_traffic_that_touches_every_metric(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    rig = await breaker_rig(aiohttp_client, sandbox, tmp_path, fail_max=2, reset="100ms", attempts=1, max_connections=1)
    await rig.get()
    await rig.get("?product_code=error-X42")
    await rig.get("?product_code=error-S03")
    await asyncio.gather(rig.get("?product_code=delay-100"), rig.get("?product_code=delay-100"))
    await rig.get("?product_code=status-500")
    await rig.get()
    await asyncio.sleep(0.15)
    await rig.get()
    text = await rig.metrics()
    for name in (
        "partner_proxy_requests_total", "partner_proxy_request_duration_seconds_bucket",
        "partner_proxy_upstream_request_duration_seconds_bucket", "partner_proxy_circuit_breaker_state",
        "partner_proxy_circuit_breaker_transitions_total", "partner_proxy_token_fetches_total",
        "partner_proxy_token_cache_lookups_total", "partner_proxy_partner_errors_total",
        "partner_proxy_upstream_retries_total", "partner_proxy_upstream_overflow_total",
        "partner_proxy_token_expires_in_seconds",
    ):
        assert f"\n{name}{{" in text, name
    result = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
