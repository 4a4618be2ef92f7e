"""Hostile conditions, faults: a real `partner-proxy serve` subprocess while its dependencies misbehave.

Redis paused past its timeouts, a token endpoint that is down, slow, failing or lying, a partner that
storms 5xx, hangs, resets, drips, floods, or redirects elsewhere, and SIGTERM in the middle of traffic.
Each test asserts what the app sees (status and envelope ``type``) and that the process is healthy
afterwards (``/healthz`` 200 and a normal request served once the fault is gone).

Redis killed and restarted during traffic is covered by ``test_process.py`` and not repeated here.
Everything listens on loopback; every traffic loop is bounded in count and time. All tests here are
process level (``-m process``) except one in-process reproduction of a breaker-contract defect.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from proxy.sandbox import SANDBOX_STATE, SandboxState
from tests.helpers import make_rig, patched_routes, sandbox_app, shipped_config
from tests.hostile import (
    Answer,
    FakePartner,
    Trap,
    assert_healthy,
    base,
    call,
    running,
    total,
    until,
)
from tests.process import Sidecar

# Unique fragments of the shipped routes.yaml, for patched_routes().
TOKEN_TIMEOUT = "\n    timeout: 5s "
CLUSTER_TIMEOUT = "\n    timeout: 10s "
MAX_CONNECTIONS = "\n    max_connections: 100 "


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as s:
        yield s


@pytest.fixture
async def fake() -> AsyncIterator[FakePartner]:
    partner = await FakePartner().start()
    yield partner
    await partner.close()


@pytest.fixture
async def trap() -> AsyncIterator[Trap]:
    t = await Trap().start()
    yield t
    await t.close()


def partner(sandbox: TestServer) -> SandboxState:
    return sandbox.app[SANDBOX_STATE]


def retry_after(answer: Answer) -> int:
    value = answer.headers.get("Retry-After", "")
    assert value.isdigit() and int(value) >= 1, answer.headers
    return int(value)


async def metrics(session: aiohttp.ClientSession, sidecar: Sidecar) -> str:
    return await sidecar.metrics(session)


# --- Redis ------------------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_redis_paused_past_its_timeouts_while_tokens_must_be_fetched_and_renewed(
    sandbox: TestServer, session: aiohttp.ClientSession, redis_url: str
) -> None:
    """CLIENT PAUSE 3000 ALL: every Redis command hangs for 3 s, far past the 250 ms socket timeout.

    One sidecar holds a token the partner has just revoked (so it must renew: compare-and-delete,
    fetch, store), the other is cold (so it must fetch: get, lock, store). Both must answer 200.
    """
    async with running(base(sandbox), redis_url) as warm, running(base(sandbox), redis_url) as cold:
        assert (await call(session, warm)).status == 200  # token in memory and in Redis
        partner(sandbox).revoke_all()  # the warm token now gets 403 P08: it must be renewed
        admin = aioredis.from_url(redis_url)
        try:
            assert await admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
            first = await asyncio.gather(call(session, warm), call(session, cold))
            more = [await call(session, s) for s in (warm, cold) * 5]
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
            await admin.aclose()
        answers = [*first, *more]
        print(f"\nredis-pause: answers={len(answers)} statuses={Counter(a.status for a in answers)} token_fetches={partner(sandbox).token_requests}")
        assert [a.status for a in answers] == [200] * len(answers), [a.body for a in answers if a.status != 200]
        for s in (warm, cold):  # the pause was really hit: Redis calls failed and were counted
            assert total(await metrics(session, s), "partner_proxy_redis_errors_total") >= 1
        # one fetch at start, one renewal, one cold fetch: Redis being stuck caused no storm
        assert partner(sandbox).token_requests == 3
        await assert_healthy(session, warm)
        await assert_healthy(session, cold)


# --- the token endpoint -----------------------------------------------------------------------------

# fault -> (sandbox token mode, its delay, the token_fetches_total result it must be counted as)
TOKEN_FAULTS = {
    "down": ("down", None, "connect_error"),
    "slow": ("slow", 3.0, "timeout"),  # 3 s against a token timeout patched to 500 ms
    "5xx": ("500", None, "http_error"),
    "garbage": ("garbage", None, "bad_response"),
}


@pytest.mark.process
@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", list(TOKEN_FAULTS))
async def test_cold_sidecar_with_a_failing_token_endpoint_fails_fast_and_backs_off(
    fault: str, sandbox: TestServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    mode, delay, reason = TOKEN_FAULTS[fault]
    routes = patched_routes(tmp_path, {TOKEN_TIMEOUT: "\n    timeout: 500ms "})
    partner(sandbox).set_token_mode(mode, delay)
    async with running(base(sandbox), routes=routes) as sidecar:
        answers: list[Answer] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.5
        while loop.time() < end and len(answers) < 100:
            answers.append(await call(session, sidecar))
            await asyncio.sleep(0.02)
        for a in answers:
            assert a.status == 503, (a.status, a.body)
            error = a.error
            assert (error["type"], error["code"], error["partner_code"]) == ("AuthenticationFailure", "TOKEN_UNAVAILABLE", None)
            assert retry_after(a) <= 30
        # fast: at most one token timeout (500 ms) per answer, never the 5 s default or a hang
        assert max(a.elapsed for a in answers) < 2.0, [round(a.elapsed, 2) for a in answers]
        fetches = partner(sandbox).token_requests
        print(f"\ntoken-{fault}: answers={len(answers)} all 503, max {max(a.elapsed for a in answers) * 1000:.0f} ms; token endpoint calls={fetches}")
        assert len(answers) >= 15 and 1 <= fetches <= 5, (len(answers), fetches)  # backoff, not a storm
        text = await metrics(session, sidecar)
        assert total(text, "partner_proxy_token_fetches_total", result=reason) == fetches
        assert total(text, "partner_proxy_token_fetches_total", result="success") == 0
        assert partner(sandbox).product_calls == []  # no token, no partner call

        partner(sandbox).set_token_mode("ok")  # the fault is removed: served again after the backoff

        async def served() -> bool:
            return (await call(session, sidecar)).status == 200

        assert await until(served, timeout=15, interval=0.2)
        await assert_healthy(session, sidecar)


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_token_endpoint_redirect_is_not_followed(
    sandbox: TestServer, fake: FakePartner, trap: Trap, session: aiohttp.ClientSession
) -> None:
    """A token endpoint answering 302 elsewhere must not get our Basic credentials replayed there."""
    fake.mode, fake.redirect_to = "redirect", trap.url + "/token"
    async with running(base(sandbox), TOKOPEDIA_TOKEN_URL=fake.url + "/token") as sidecar:
        a = await call(session, sidecar)
        assert a.status == 503 and a.error["type"] == "AuthenticationFailure"
        assert [s.method for s in fake.seen] == ["POST"]
        assert fake.seen[0].headers["authorization"].startswith("Basic ")
        assert trap.connections == 0 and trap.received == b""
        text = await metrics(session, sidecar)
        assert total(text, "partner_proxy_token_fetches_total", result="http_error") == 1
        async with session.get(sidecar.admin + "/healthz") as r:
            assert r.status == 200


# --- the partner ------------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_partner_5xx_storm_opens_the_breaker_and_it_closes_again(
    sandbox: TestServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    routes = patched_routes(tmp_path, {"reset_timeout: 30s": "reset_timeout: 2s"})
    async with running(base(sandbox), routes=routes) as sidecar:
        assert (await call(session, sidecar)).status == 200  # token cached
        calls_before = len(partner(sandbox).product_calls)
        storm: list[Answer] = []
        for _ in range(10):  # bounded: the breaker must open well before
            a = await call(session, sidecar, "?product_code=status-500")
            storm.append(a)
            if a.status == 503:
                break
        types = [(a.status, a.error["type"]) for a in storm]
        print(f"\nstorm: {types}; partner calls={len(partner(sandbox).product_calls) - calls_before}")
        assert types[-1] == (503, "CircuitBreakerError"), types
        # before it opened: the HTML 500 page is an unmapped partner error
        assert set(types[:-1]) == {(502, "PartnerError")}, types
        # fail_max 5 counts every failed attempt, retries included: exactly 5 reached the partner
        assert len(partner(sandbox).product_calls) - calls_before == 5

        calls_open = len(partner(sandbox).product_calls)
        refused = await asyncio.gather(*(call(session, sidecar, q) for q in ("?product_code=status-500", "") * 10))
        for a in refused:
            assert a.status == 503 and a.error["type"] == "CircuitBreakerError" and a.error["code"] == "CIRCUIT_OPEN"
            assert retry_after(a) <= 2  # whole seconds, at most reset_timeout
        assert len(partner(sandbox).product_calls) == calls_open  # refused without a partner call

        async def served() -> bool:  # after reset_timeout the half-open trial succeeds and closes it
            return (await call(session, sidecar)).status == 200

        assert await until(served, timeout=10, interval=0.25)
        text = await metrics(session, sidecar)
        assert total(text, "partner_proxy_circuit_breaker_state", cluster="tokopedia", state="closed") == 1
        assert total(text, "partner_proxy_circuit_breaker_transitions_total", **{"from": "closed", "to": "open"}) == 1
        assert total(text, "partner_proxy_circuit_breaker_transitions_total", **{"from": "half_open", "to": "closed"}) == 1
        await assert_healthy(session, sidecar)


# fault -> (sandbox fault token, app status, envelope type, envelope code, partner attempts)
SANDBOX_FAULTS = {
    "hang": ("hang", 504, "GatewayTimeout", "UPSTREAM_TIMEOUT", 1),  # timeouts are not retried
    "reset": ("reset", 502, "BadGateway", "UPSTREAM_UNREACHABLE", 2),  # connect_failure: one retry
    "html-503": ("status-503", 502, "PartnerError", "PARTNER_ERROR", 2),  # non-JSON error page, 5xx: one retry
    "garbled-json-500": ("garbage", 502, "PartnerError", "PARTNER_ERROR", 2),
}
# Regression test for a fixed defect: aiohttp's ClientSession silently retries an idempotent request
# once on ClientOSError/ServerDisconnectedError (session._retry_connection, default True), so with
# retry.attempts: 1 a resetting partner gets 4 requests per app request instead of 2, outside the
# retry budget and with only 2 failures counted by the breaker


@pytest.mark.process
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "fault",
    list(SANDBOX_FAULTS),
)
async def test_partner_fault_from_the_sandbox(
    fault: str, sandbox: TestServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token, status, type_, code, attempts = SANDBOX_FAULTS[fault]
    routes = patched_routes(tmp_path, {CLUSTER_TIMEOUT: "\n    timeout: 1s "})
    async with running(base(sandbox), routes=routes) as sidecar:
        assert (await call(session, sidecar)).status == 200
        calls_before = len(partner(sandbox).product_calls)
        a = await call(session, sidecar, f"?product_code={token}")
        assert a.status == status, a.body
        error = a.error
        assert (error["type"], error["code"], error["partner_code"]) == (type_, code, None)
        assert a.elapsed < 5  # the 1 s cluster timeout bounds it (shipped default: 10 s)
        assert len(partner(sandbox).product_calls) - calls_before == attempts
        await assert_healthy(session, sidecar)  # normal requests are served right after


@pytest.mark.timeout(30)
async def test_the_request_that_trips_the_breaker_gets_its_own_failure(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    """In process (cheap): fail_max 5 and one retry on 5xx, so request 3's first attempt is failure 5."""
    rig = await make_rig(aiohttp_client, sandbox, shipped_config(base(sandbox), routes=patched_routes(tmp_path, {})))
    answers = []
    for _ in range(4):
        r = await rig.get("?product_code=status-500")
        answers.append((r.status, (await r.json())["error"]["type"]))
    assert len(rig.partner.product_calls) == 5
    assert answers == [(502, "PartnerError")] * 3 + [(503, "CircuitBreakerError")], answers


# fault -> (fake partner mode, app status, envelope type, envelope code, partner attempts)
FAKE_FAULTS = {
    "drip": ("drip", 504, "GatewayTimeout", "UPSTREAM_TIMEOUT", 1),
    "oversized-content-length": ("oversized-cl", 502, "BadGateway", "UPSTREAM_PROTOCOL_ERROR", 2),
    "oversized-chunked": ("oversized-chunked", 502, "BadGateway", "UPSTREAM_PROTOCOL_ERROR", 2),
    "redirect": ("redirect", 502, "PartnerError", "PARTNER_ERROR", 1),
}


@pytest.mark.process
@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", list(FAKE_FAULTS))
async def test_partner_fault_from_a_scripted_partner(
    fault: str, sandbox: TestServer, fake: FakePartner, trap: Trap, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Faults the sandbox cannot make: the token still comes from the sandbox, products from ``fake``."""
    mode, status, type_, code, attempts = FAKE_FAULTS[fault]
    routes = patched_routes(
        tmp_path,
        {CLUSTER_TIMEOUT: "\n    timeout: 1s ", MAX_CONNECTIONS: "\n    max_response_bytes: 65536\n    max_connections: 100 "},
    )
    fake.redirect_to = trap.url + "/steal"
    async with running(base(sandbox), routes=routes, TOKOPEDIA_BASE_URL=fake.url) as sidecar:
        assert (await call(session, sidecar)).status == 200  # token cached, the fake partner answers
        fake.seen.clear()
        fake.mode = mode
        a = await call(session, sidecar)
        assert a.status == status, a.body
        error = a.error
        assert (error["type"], error["code"], error["partner_code"]) == (type_, code, None)
        assert "Location" not in a.headers
        assert a.elapsed < 5
        assert len(fake.seen) == attempts
        assert trap.connections == 0  # a redirect is never followed
        if mode == "drip":
            assert 0 < fake.drips < 60  # the body was still arriving when the sidecar gave up
        fake.mode = "ok"
        await assert_healthy(session, sidecar)


# --- shutdown ---------------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_sigterm_during_traffic_answers_every_request_and_exits_0(
    sandbox: TestServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Ten clients keep calling (a third of the calls take 200 ms) while SIGTERM arrives.

    During the drain the listener still serves (the app may call while the pod terminates);
    the clients stop issuing 0.8 s into the 2 s drain, as they would once the Service drops the pod.
    """
    routes = patched_routes(tmp_path, {"drain_timeout: 5s": "drain_timeout: 2s"})
    sidecar = Sidecar(base(sandbox), routes=routes)
    await sidecar.start()
    try:
        assert (await call(session, sidecar)).status == 200
        sent = answered = after_signal = 0
        statuses: Counter[int] = Counter()
        stop = asyncio.Event()
        signalled = asyncio.Event()

        async def client(i: int) -> None:
            nonlocal sent, answered, after_signal
            for n in range(500):  # bounded; the stop event ends it much sooner
                if stop.is_set():
                    return
                sent += 1
                after_signal += signalled.is_set()
                a = await call(session, sidecar, "?product_code=delay-200" if (i + n) % 3 == 0 else "")
                answered += 1
                statuses[a.status] += 1

        clients = [asyncio.create_task(client(i)) for i in range(10)]
        await asyncio.sleep(0.5)
        sidecar.signal(signal.SIGTERM)
        signalled.set()
        await asyncio.sleep(0.3)
        async with session.get(sidecar.admin + "/readyz") as r:
            assert r.status == 503 and (await r.json())["draining"] is True
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), 10)
        assert await sidecar.wait(10) == 0
        print(f"\nsigterm: sent={sent} answered={answered} after_signal={after_signal} statuses={dict(statuses)}")
        assert after_signal > 0
        assert sent == answered and statuses == Counter({200: sent}), (sent, answered, statuses)
    finally:
        sidecar.kill()
        shutil.rmtree(sidecar.dir, ignore_errors=True)
