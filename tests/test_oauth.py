"""The OAuth2 token provider against a real token endpoint (aiohttp on loopback) and a real Redis.

Time travel uses an injectable clock shared by the provider and the test issuer (so ``expires_in``
and ``expires_at`` agree); nothing here sleeps for long. aioresponses is used only for the client
edge cases a real server cannot produce on demand (connect error, timeout at the socket).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aioresponses import aioresponses

from proxy.config.models import CredentialsConfig, Secret, TokenCacheConfig
from proxy.errors import TokenUnavailable
from proxy.metrics import Metrics
from proxy.oauth import RedisTokenStore, Token, TokenFetchError, TokenProvider
from proxy.oauth.client import TokenClient
from proxy.oauth.token import Grant
from tests.redis_server import RedisServer

PROVIDER = "tokopedia"
CLIENT_ID = "client-42"
SECRET = "s3cr3t-Value-xyz"
BASIC = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
KEY = "partner-proxy:token:" + PROVIDER

pytestmark = pytest.mark.timeout(20)


class Clock:
    """A wall clock the test moves by hand; starts at real time so Redis TTLs are sensible."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Issuer:
    """A tiny OAuth2 token endpoint with switchable behaviour; counts calls."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls = 0
        self.redirected = 0
        self.mode = "ok"
        self.expires_in: float = 3600.0
        self.delay = 0.0
        self.gate: asyncio.Event | None = None
        self.requests: list[dict[str, Any]] = []
        self.same_expires_at: float | None = None
        self.url = ""

    async def token(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        form = await request.post()
        self.requests.append(
            {
                "authorization": request.headers.get("Authorization"),
                "accept": request.headers.get("Accept"),
                "content_type": request.content_type,
                "form": dict(form),
            }
        )
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        mode = self.mode
        if mode == "ok":
            return web.json_response(
                {"access_token": f"tok-{self.calls}", "expires_in": self.expires_in, "token_type": "Bearer"}
            )
        if mode == "same":  # the same token and the same absolute expiry, whenever asked
            if self.same_expires_at is None:
                self.same_expires_at = self.clock() + self.expires_in
            return web.json_response({"access_token": "tok-same", "expires_in": self.same_expires_at - self.clock()})
        if mode == "500":
            return web.json_response({"error": "server_error"}, status=500)
        if mode == "401":
            return web.json_response({"error": "invalid_client"}, status=401)
        if mode == "redirect":
            raise web.HTTPFound("/elsewhere")
        if mode == "garbage":
            return web.Response(text="<html>gateway says hi</html>", content_type="text/html")
        if mode == "empty":
            return web.Response(body=b"", content_type="application/json")
        if mode == "no_expires_in":
            return web.json_response({"access_token": "tok-x", "token_type": "Bearer"})
        if mode == "zero_expires_in":
            return web.json_response({"access_token": "tok-x", "expires_in": 0})
        if mode == "empty_token":
            return web.json_response({"access_token": "", "expires_in": 3600})
        if mode == "list":
            return web.json_response([{"access_token": "tok-x", "expires_in": 3600}])
        if mode == "quoted":
            return web.json_response({"access_token": "c:abc", "expires_in": "86400"})
        if mode == "huge":
            return web.json_response({"access_token": "tok-x", "expires_in": 3600, "pad": " " * 100_000})
        if mode == "slow":
            await asyncio.sleep(1.0)
            return web.json_response({"access_token": "tok-slow", "expires_in": 3600})
        raise AssertionError(f"unknown mode {mode}")

    async def elsewhere(self, request: web.Request) -> web.StreamResponse:
        self.redirected += 1
        return web.json_response({"access_token": "tok-redirected", "expires_in": 3600})


@dataclass
class Harness:
    """Builds "replicas": each provider gets its own session and its own Redis store."""

    issuer: Issuer
    clock: Clock
    redis_url: str
    metrics: Metrics = field(default_factory=Metrics)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def provider(
        self,
        *,
        redis: bool = True,
        metrics: Metrics | None = None,
        refresh_before: float = 600.0,
        timeout: float = 2.0,
        lock_wait: float = 5.0,
        scope: str | None = None,
        token_url: str | None = None,
        on_fetch_failure: Callable[[str, str, int], None] | None = None,
    ) -> TokenProvider:
        metrics = metrics or self.metrics
        session = aiohttp.ClientSession()
        store = RedisTokenStore.from_config(
            TokenCacheConfig(redis_url=Secret(self.redis_url if redis else ""), lock_wait=lock_wait), metrics
        )
        provider = TokenProvider(
            credentials(token_url or self.issuer.url, refresh_before=refresh_before, timeout=timeout, scope=scope),
            session=session,
            store=store,
            metrics=metrics,
            clock=self.clock,
            on_fetch_failure=on_fetch_failure,
        )
        self.closers.append(session.close)
        if store is not None:
            self.closers.append(store.close)
        self.closers.append(provider.close)
        return provider


def credentials(
    url: str, *, refresh_before: float = 600.0, timeout: float = 2.0, scope: str | None = None
) -> CredentialsConfig:
    return CredentialsConfig(
        name=PROVIDER,
        type="oauth2_client_credentials",
        token_url=url,
        client_id=CLIENT_ID,
        client_secret=Secret(SECRET),
        refresh_before=refresh_before,
        timeout=timeout,
        scope=scope,
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def fetches(metrics: Metrics, result: str) -> float:
    return sample(metrics, "partner_proxy_token_fetches_total", provider=PROVIDER, result=result)


def lookups(metrics: Metrics, layer: str) -> float:
    return sample(metrics, "partner_proxy_token_cache_lookups_total", provider=PROVIDER, layer=layer)


async def stored(rc: aioredis.Redis) -> dict[str, Any]:
    """The token document in Redis for PROVIDER."""
    raw = await rc.get(KEY)
    assert raw is not None, "no token stored in Redis"
    doc: dict[str, Any] = json.loads(raw)
    return doc


async def eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def serve_issuer(aiohttp_server: Any, clock: Clock) -> Issuer:
    """The loopback token endpoint, also used by the Redis topology tests."""
    iss = Issuer(clock)
    app = web.Application()
    app.router.add_post("/token", iss.token)
    app.router.add_post("/elsewhere", iss.elsewhere)
    app.router.add_get("/elsewhere", iss.elsewhere)
    server = await aiohttp_server(app)
    iss.url = str(server.make_url("/token"))
    return iss


async def harness_on(issuer: Issuer, clock: Clock, redis_url: str) -> AsyncIterator[Harness]:
    """Providers on one Redis URL (any topology), closed at the end."""
    harness = Harness(issuer, clock, redis_url)
    yield harness
    for close in reversed(harness.closers):
        await close()


@pytest.fixture
async def issuer(aiohttp_server: Any, clock: Clock) -> Issuer:
    return await serve_issuer(aiohttp_server, clock)


@pytest.fixture
async def h(issuer: Issuer, clock: Clock, redis_url: str) -> AsyncIterator[Harness]:
    async for harness in harness_on(issuer, clock, redis_url):
        yield harness


@pytest.fixture
async def rc(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


# --- the token request -----------------------------------------------------------------------------


async def test_token_request_shape_and_expiry_from_send_time(h: Harness) -> None:
    p = await h.provider(scope="digital-goods")
    sent_at = h.clock.now
    token = await p.get()
    assert token.value == "tok-1" and token.source == "fetch"
    assert token.expires_at == sent_at + 3600
    [req] = h.issuer.requests
    assert req["authorization"] == "Basic " + BASIC
    assert req["accept"] == "application/json"
    assert req["content_type"] == "application/x-www-form-urlencoded"
    assert req["form"] == {"grant_type": "client_credentials", "scope": "digital-goods"}
    assert fetches(h.metrics, "success") == 1
    assert lookups(h.metrics, "miss") == 1
    left = sample(h.metrics, "partner_proxy_token_expires_in_seconds", provider=PROVIDER)
    assert left == pytest.approx(3600)
    assert p.expires_in() == pytest.approx(3600)


async def test_token_is_stored_in_redis_with_ttl(h: Harness, rc: aioredis.Redis) -> None:
    p = await h.provider()
    await p.get()
    doc = await stored(rc)
    assert doc["access_token"] == "tok-1"
    assert doc["expires_at"] == pytest.approx(h.clock.now + 3600)
    ttl_ms = await rc.pttl(KEY)
    assert 3_590_000 < ttl_ms <= 3_600_000
    assert await rc.exists(KEY + ":lock") == 0  # released after the write


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("500", "http_error"),
        ("401", "http_error"),
        ("redirect", "http_error"),
        ("garbage", "bad_response"),
        ("empty", "bad_response"),
        ("no_expires_in", "bad_response"),
        ("zero_expires_in", "bad_response"),
        ("empty_token", "bad_response"),
        ("list", "bad_response"),
        ("slow", "timeout"),
    ],
)
async def test_each_failure_is_labelled(h: Harness, mode: str, reason: str) -> None:
    h.issuer.mode = mode
    seen: list[tuple[str, str, int]] = []
    p = await h.provider(timeout=0.2, on_fetch_failure=lambda *a: seen.append(a))
    with pytest.raises(TokenUnavailable) as info:
        await p.get()
    assert info.value.reason == reason
    assert fetches(h.metrics, reason) == 1
    assert fetches(h.metrics, "success") == 0
    assert seen == [(PROVIDER, reason, 1)]
    assert h.issuer.redirected == 0  # redirects are never followed


async def test_connect_error_is_labelled(h: Harness) -> None:
    from tests.redis_server import free_port

    p = await h.provider(token_url=f"http://127.0.0.1:{free_port()}/token")  # nothing listens there
    with pytest.raises(TokenUnavailable) as info:
        await p.get()
    assert info.value.reason == "connect_error"
    assert fetches(h.metrics, "connect_error") == 1


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (aiohttp.ClientConnectorError(aiohttp.client_reqrep.ConnectionKey("t", 443, True, True, None, None, None), OSError(111, "refused")), "connect_error"),
        (aiohttp.ServerDisconnectedError(), "connect_error"),
        (asyncio.TimeoutError(), "timeout"),
        (aiohttp.ServerTimeoutError("read timeout"), "timeout"),
        (aiohttp.ClientPayloadError("truncated"), "bad_response"),
    ],
)
async def test_client_maps_aiohttp_errors(exc: Exception, reason: str) -> None:
    url = "https://accounts.example.test/token"
    async with aiohttp.ClientSession() as session:
        client = TokenClient(credentials(url), session=session, clock=time.time)
        with aioresponses() as mocked:
            mocked.post(url, exception=exc)
            with pytest.raises(TokenFetchError) as info:
                await client.fetch()
    assert info.value.reason == reason
    assert info.value.__cause__ is exc  # mapped at the boundary, original kept


async def test_client_accepts_quoted_expires_in(h: Harness) -> None:
    # (aioresponses 0.7.9 cannot build responses on aiohttp 3.14; the real endpoint serves these.)
    h.issuer.mode = "quoted"
    p = await h.provider()
    token = await p.get()
    assert token.value == "c:abc" and token.expires_at == pytest.approx(h.clock.now + 86400)


async def test_client_rejects_oversized_body(h: Harness) -> None:
    h.issuer.mode = "huge"
    p = await h.provider()
    with pytest.raises(TokenUnavailable) as info:
        await p.get()
    assert info.value.reason == "bad_response"


# --- lookup order ----------------------------------------------------------------------------------


async def commandstats(rc: aioredis.Redis) -> int:
    """Commands executed so far, not counting INFO itself."""
    stats = await rc.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


async def test_memory_hit_makes_zero_redis_commands(h: Harness, rc: aioredis.Redis) -> None:
    p = await h.provider()
    first = await p.get()
    before = await commandstats(rc)
    tokens = [await p.get() for _ in range(200)]
    after = await commandstats(rc)
    assert after == before
    assert all(t.value == first.value and t.source == "memory" for t in tokens)
    assert lookups(h.metrics, "memory") == 200
    assert h.issuer.calls == 1


async def test_redis_hit_from_another_replica_makes_no_endpoint_call(h: Harness) -> None:
    a = await h.provider()
    b = await h.provider()
    ta = await a.get()
    tb = await b.get()
    assert (tb.value, tb.source, tb.expires_at) == (ta.value, "redis", ta.expires_at)
    assert h.issuer.calls == 1
    assert lookups(h.metrics, "redis") == 1
    assert (await b.get()).source == "memory"


async def test_without_redis_fetches_once_then_memory(h: Harness) -> None:
    p = await h.provider(redis=False)
    assert (await p.get()).source == "fetch"
    assert (await p.get()).source == "memory"
    assert h.issuer.calls == 1


# --- single flight ---------------------------------------------------------------------------------


async def test_fifty_concurrent_cold_gets_make_one_call(h: Harness) -> None:
    h.issuer.delay = 0.05
    p = await h.provider()
    tokens = await asyncio.gather(*(p.get() for _ in range(50)))
    assert h.issuer.calls == 1
    assert {t.value for t in tokens} == {"tok-1"}


async def test_two_cold_replicas_make_one_call_thanks_to_the_lock(h: Harness) -> None:
    h.issuer.delay = 0.1
    a = await h.provider()
    b = await h.provider()
    tokens = await asyncio.gather(*(a.get() for _ in range(10)), *(b.get() for _ in range(10)))
    assert h.issuer.calls == 1
    assert {t.value for t in tokens} == {"tok-1"}
    assert sorted({t.source for t in tokens}) == ["fetch", "redis"]


async def test_lock_holder_that_never_writes_is_waited_for_bounded(h: Harness, rc: aioredis.Redis) -> None:
    await rc.set(KEY + ":lock", "another-replica", px=10_000)  # a replica that hangs with the lock
    p = await h.provider(lock_wait=0.2)
    started = time.monotonic()
    token = await p.get()
    assert token.source == "fetch" and h.issuer.calls == 1
    assert time.monotonic() - started < 2.0
    assert await rc.get(KEY + ":lock") == "another-replica"  # not ours: left alone


async def test_cancelling_the_first_waiter_does_not_cancel_the_fetch(h: Harness) -> None:
    h.issuer.gate = asyncio.Event()
    p = await h.provider()
    first = asyncio.create_task(p.get())
    await eventually(lambda: h.issuer.calls == 1)
    second = asyncio.create_task(p.get())
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)
    h.issuer.gate.set()
    token = await second
    assert token.value == "tok-1"
    assert first.cancelled()
    assert h.issuer.calls == 1
    assert (await p.get()).source == "memory"


# --- expiry and refresh ahead ----------------------------------------------------------------------


async def test_expired_token_is_never_returned(h: Harness) -> None:
    h.issuer.expires_in = 100  # skew = min(5, 10) = 5
    p = await h.provider(redis=False, refresh_before=0)
    t1 = await p.get()
    h.clock.now = t1.expires_at - 5.0001
    assert (await p.get()).value == "tok-1"
    h.clock.now = t1.expires_at - 5
    t2 = await p.get()
    assert t2.value == "tok-2" and t2.source == "fetch"
    h.issuer.mode = "500"
    h.clock.now = t2.expires_at + 1
    with pytest.raises(TokenUnavailable):
        await p.get()


async def test_refresh_ahead_serves_old_token_and_fetches_once_in_background(h: Harness) -> None:
    h.issuer.expires_in = 3600
    p = await h.provider(refresh_before=1.0)  # jitter <= 0.1 s
    t1 = await p.get()
    h.issuer.gate = asyncio.Event()
    h.clock.now = t1.expires_at - 5 - 0.5  # inside the refresh window, still usable
    served = [await p.get() for _ in range(20)]
    assert all(t.value == "tok-1" and t.source == "memory" for t in served)
    await eventually(lambda: h.issuer.calls == 2)
    assert (await p.get()).value == "tok-1"  # still served while the refresh is in flight
    h.issuer.gate.set()
    await eventually(lambda: p.expires_in() is not None and p.expires_in() > 3000)  # type: ignore[operator]
    served = [await p.get() for _ in range(20)]
    assert all(t.value == "tok-2" for t in served)
    assert h.issuer.calls == 2


async def test_refresh_before_longer_than_lifetime_is_clamped(h: Harness) -> None:
    h.issuer.expires_in = 20  # skew 2 s
    p = await h.provider(refresh_before=600)  # clamped to 10 s, jitter <= 1 s
    t1 = await p.get()
    h.clock.advance(7)  # would be "within refresh_before" unclamped
    for _ in range(20):
        assert (await p.get()).value == "tok-1"
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert h.issuer.calls == 1
    h.clock.now = t1.expires_at - 2 - 10 + 0.1  # inside the clamped window
    assert (await p.get()).value == "tok-1"
    await eventually(lambda: h.issuer.calls == 2)


async def test_refresh_rereads_redis_before_fetching(h: Harness) -> None:
    a = await h.provider(refresh_before=1.0)
    b = await h.provider(refresh_before=1.0)
    t1 = await a.get()
    assert (await b.get()).source == "redis"
    h.clock.now = t1.expires_at - 5 - 0.5
    await a.get()
    await eventually(lambda: h.issuer.calls == 2)
    await eventually(lambda: (a.expires_in() or 0) > 3000)
    await b.get()  # b's refresh finds a's newer token in Redis
    await eventually(lambda: (b.expires_in() or 0) > 3000)
    assert (await b.get()).value == "tok-2"
    assert h.issuer.calls == 2


async def test_same_token_issuer_causes_no_refresh_loop(h: Harness) -> None:
    h.issuer.mode = "same"
    h.issuer.expires_in = 3600
    p = await h.provider(refresh_before=2.0)
    t1 = await p.get()
    h.clock.now = t1.expires_at - 5 - 2  # refresh window opens
    for _ in range(150):
        token = await p.get()
        assert token.value == "tok-same"
        await asyncio.sleep(0.005)
        h.clock.advance(0.01)  # 1.5 s of token time in ~1 s
    # Without backoff this would refresh after every attempt (dozens of calls).
    assert 2 <= h.issuer.calls <= 6


# --- renew after a partner rejection ---------------------------------------------------------------


async def test_renew_fetches_a_new_token_and_replaces_it_in_redis(h: Harness, rc: aioredis.Redis) -> None:
    p = await h.provider()
    t1 = await p.get()
    t2 = await p.renew(t1.value)
    assert (t2.value, t2.source) == ("tok-2", "fetch")
    assert (await stored(rc))["access_token"] == "tok-2"
    assert (await p.get()).value == "tok-2"


async def test_late_renew_keeps_the_newer_token(h: Harness, rc: aioredis.Redis) -> None:
    a = await h.provider()
    b = await h.provider()
    t1 = await a.get()
    assert (await b.get()).value == t1.value
    t2 = await a.renew(t1.value)  # replica a saw a P08 first
    assert t2.value == "tok-2"
    late = await b.renew(t1.value)  # replica b's 401 with the old token arrives late
    assert (late.value, late.source) == ("tok-2", "redis")
    assert (await stored(rc))["access_token"] == "tok-2"  # the newer token was not deleted
    assert h.issuer.calls == 2
    # A third late rejection of the old token on a is answered from memory, no I/O.
    again = await a.renew(t1.value)
    assert (again.value, again.source) == ("tok-2", "memory")
    assert h.issuer.calls == 2


async def test_concurrent_renews_make_one_call(h: Harness) -> None:
    p = await h.provider()
    t1 = await p.get()
    h.issuer.delay = 0.05
    tokens = await asyncio.gather(*(p.renew(t1.value) for _ in range(20)), *(p.get() for _ in range(20)))
    assert {t.value for t in tokens} == {"tok-2"}
    assert h.issuer.calls == 2


async def test_renew_with_reissuing_issuer_does_not_storm(h: Harness) -> None:
    h.issuer.mode = "same"
    p = await h.provider()
    t1 = await p.get()
    for _ in range(30):
        assert (await p.renew(t1.value)).value == "tok-same"
    assert h.issuer.calls <= 3


# --- Redis trouble ---------------------------------------------------------------------------------


async def test_redis_down_then_back(h: Harness, redis_server: RedisServer, rc: aioredis.Redis) -> None:
    a = await h.provider()
    await a.get()
    try:
        redis_server.stop()
        b = await h.provider()  # a cold replica while Redis is down
        token = await b.get()
        assert token.source == "fetch" and h.issuer.calls == 2
        assert sample(h.metrics, "partner_proxy_redis_errors_total", op="get") >= 1
        assert (await b.get()).source == "memory"  # memory keeps serving
        assert (await b.renew(token.value)).source == "fetch"  # renew works without Redis too
        assert sample(h.metrics, "partner_proxy_redis_errors_total", op="delete") >= 1
    finally:
        redis_server.start()
    errors_before = sum(
        sample(h.metrics, "partner_proxy_redis_errors_total", op=op) for op in ("get", "set", "delete", "lock", "unlock")
    )
    # b's pool held connections to the dead server: the next commands reconnect by themselves.
    t = await b.renew((await b.get()).value)
    assert t.source == "fetch"
    assert (await stored(rc))["access_token"] == t.value
    c = await h.provider()
    assert (await c.get()).value == t.value and h.issuer.calls == 4
    errors_after = sum(
        sample(h.metrics, "partner_proxy_redis_errors_total", op=op) for op in ("get", "set", "delete", "lock", "unlock")
    )
    assert errors_after == errors_before


async def test_unreachable_redis_is_a_miss_not_a_failure(h: Harness) -> None:
    from tests.redis_server import free_port

    h.redis_url = f"redis://127.0.0.1:{free_port()}/0"
    p = await h.provider()
    token = await p.get()
    assert token.source == "fetch"
    assert sample(h.metrics, "partner_proxy_redis_errors_total", op="get") == 1
    assert sample(h.metrics, "partner_proxy_redis_errors_total", op="set") == 1


# --- token endpoint trouble ------------------------------------------------------------------------


async def test_endpoint_failure_backs_off_and_fails_fast(h: Harness) -> None:
    h.issuer.mode = "500"
    seen: list[tuple[str, str, int]] = []

    def hook(provider: str, reason: str, consecutive: int) -> None:
        seen.append((provider, reason, consecutive))
        raise RuntimeError("notifier broken")  # swallowed

    p = await h.provider(on_fetch_failure=hook)
    with pytest.raises(TokenUnavailable) as info:
        await p.get()
    assert 0 < float(info.value.headers["Retry-After"]) <= 1
    started = time.monotonic()
    for _ in range(200):
        with pytest.raises(TokenUnavailable) as info:
            await p.get()
        assert info.value.reason == "http_error"
    assert time.monotonic() - started < 1.0
    assert h.issuer.calls == 1
    h.clock.advance(0.6)  # first backoff is 0.25..0.5 s
    with pytest.raises(TokenUnavailable):
        await p.get()
    assert h.issuer.calls == 2
    assert seen == [(PROVIDER, "http_error", 1), (PROVIDER, "http_error", 2)]
    for _ in range(10):  # backoff grows: still only a handful of calls over 10 s of failures
        h.clock.advance(1.0)
        for _ in range(20):
            with pytest.raises(TokenUnavailable):
                await p.get()
    assert h.issuer.calls <= 8
    h.issuer.mode = "ok"
    h.clock.advance(31)
    assert (await p.get()).source == "fetch"


async def test_valid_token_is_served_while_endpoint_is_down(h: Harness) -> None:
    h.issuer.expires_in = 3600
    p = await h.provider(refresh_before=1.0)
    t1 = await p.get()
    h.issuer.mode = "500"
    h.clock.now = t1.expires_at - 5 - 0.9  # refresh window
    for _ in range(100):
        assert (await p.get()).value == "tok-1"
        await asyncio.sleep(0.002)
        h.clock.advance(0.008)
    assert 2 <= h.issuer.calls <= 6  # background refresh attempts, backed off
    h.clock.now = t1.expires_at - 5  # no longer usable, endpoint still down
    with pytest.raises(TokenUnavailable):
        await p.get()


# --- secrets ---------------------------------------------------------------------------------------


async def test_secrets_never_appear_in_errors_reprs_or_logs(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="proxy.oauth")
    p = await h.provider()
    token = await p.get()
    h.issuer.mode = "garbage"
    h.clock.advance(3600)
    with pytest.raises(TokenUnavailable) as info:
        await p.get()
    texts = [repr(token), str(token), repr(p), repr(Grant(token.value, 0.0, 1.0))]
    exc: BaseException | None = info.value
    while exc is not None:
        texts += [str(exc), repr(exc), getattr(exc, "detail", "")]
        exc = exc.__cause__
    client = TokenClient(credentials(h.issuer.url), session=aiohttp.ClientSession(), clock=time.time)
    texts.append(repr(client))
    texts.append(repr(vars(client)) if hasattr(client, "__dict__") else "")
    await client._session.close()  # noqa: SLF001
    texts += [r.getMessage() for r in caplog.records]
    blob = "\n".join(texts)
    assert "tok-1" not in blob
    assert SECRET not in blob
    assert BASIC not in blob
    assert caplog.records  # the failure was logged, just without secrets


def test_token_repr_hides_value() -> None:
    t = Token("super-secret-token", 123.0, "fetch")
    assert "super-secret-token" not in repr(t)
    assert "super-secret-token" not in str(t)
    assert "123.0" in repr(t) and "fetch" in repr(t)


class _TornDownClient:
    """A client whose every command fails as redis-py's asyncio connection does when it is torn
    down during its handshake: an AttributeError, not a RedisError."""

    def register_script(self, script: str) -> Callable[..., Any]:
        return self._fail

    async def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    get = set = delete = _fail

    async def aclose(self) -> None:
        return None


async def test_a_client_library_error_is_a_redis_failure_not_a_request_failure() -> None:
    metrics = Metrics()
    store = RedisTokenStore(_TornDownClient(), TokenCacheConfig(redis_url=Secret("redis://127.0.0.1:1")), metrics, where="redis://127.0.0.1:1")  # type: ignore[arg-type]
    read = await store.get("tokopedia", 100.0)
    assert read.grant is None and not read.ok
    await store.set("tokopedia", Grant("t", 100.0, 3700.0), 100.0)  # swallowed, counted
    assert sample(metrics, "partner_proxy_redis_errors_total", op="get") == 1
    assert sample(metrics, "partner_proxy_redis_errors_total", op="set") == 1
