"""One provider's access token: where to look, when to fetch, and how not to stampede.

Lookup order (DESIGN.md section 3, "Tokens")::

    memory (no I/O) ──valid──▶ token          (refresh-ahead starts in the background when due)
       │ missing / past usable
       ▼
    flight (one task per process) ─▶ Redis GET ─valid──▶ token
                                       │ miss
                                       ▼
                                     SET lock NX PX ─busy─▶ poll Redis (bounded) ─▶ token, or fetch ourselves
                                       │ acquired / Redis down
                                       ▼
                                     token endpoint ─▶ Redis SET (if newer) ─▶ release lock ─▶ token

Every process-level fetch goes through one shared task (the "flight"); callers await it through
``asyncio.shield`` so a cancelled caller never cancels the fetch the others wait for. Failures back
off exponentially with jitter; while backing off without a usable token, lookups fail at once with
``TokenUnavailable`` instead of calling the endpoint again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp

from proxy.config.models import CredentialsConfig
from proxy.errors import TokenUnavailable
from proxy.metrics import Metrics
from proxy.oauth.client import REASONS, TokenClient, TokenFetchError
from proxy.oauth.store import RedisTokenStore
from proxy.oauth.token import Grant, Token
from proxy.otel import Tracing, TracingRef

# Backoff after a failed fetch, or after a background refresh that produced nothing newer.
BACKOFF_BASE: Final = 0.5
BACKOFF_CAP: Final = 30.0
# Refresh-ahead start is spread over this share of the refresh window (capped) so that replicas
# that got the same token from Redis do not all refresh in the same instant.
REFRESH_JITTER_RATIO: Final = 0.1
REFRESH_JITTER_CAP: Final = 5.0
# How often a replica that lost the fetch lock looks for the winner's token.
LOCK_POLL_INTERVAL: Final = 0.05

Want = Callable[[Grant], bool]
FetchFailureHook = Callable[[str, str, int], None]


@dataclass(slots=True)
class _Held:
    """The in-process token and when it may next be refreshed in the background."""

    grant: Grant
    token: Token  # the same token with source "memory": the hot path returns it without allocating
    usable_until: float
    refresh_before: float  # config value clamped to half the lifetime
    refresh_at: float  # moves later (backoff) when a refresh yields nothing newer


class TokenProvider:
    """OAuth2 client-credentials tokens for one provider (``CredentialsConfig.name``).

    ``get()`` for every partner call, ``renew(rejected)`` after the partner rejected a token
    (401/P08), ``close()`` at shutdown. ``session`` is a dedicated ClientSession for token calls
    (never the partner chain's); ``store`` is shared by all providers and closed by its owner.
    """

    def __init__(
        self,
        config: CredentialsConfig,
        *,
        session: aiohttp.ClientSession,
        store: RedisTokenStore | None,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        on_fetch_failure: FetchFailureHook | None = None,
        tracing: Tracing | TracingRef | None = None,
    ) -> None:
        self._name = config.name
        # A CLIENT span per call to the token endpoint, child of the request span that started the
        # flight (the flight task copies that request's context). Redis reads are span events, not
        # spans: they are sub-millisecond and usually absent (memory hits), so events keep traces cheap.
        self._tracing: Tracing | TracingRef = tracing if tracing is not None else Tracing.disabled()
        self._token_host, self._token_port = _host_port(config.token_url)
        self._refresh_before = max(0.0, config.refresh_before)
        self._client = TokenClient(config, session=session, clock=clock)
        self._store = store
        self._clock = clock
        self._on_fetch_failure = on_fetch_failure
        self._rng = random.Random()
        self._log = logging.getLogger("proxy.oauth")

        self._held: _Held | None = None
        self._flight: asyncio.Task[tuple[Grant, str]] | None = None
        self._flight_rejected: str | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._closed = False
        # Endpoint failures: consecutive count, the reason of the last one, next attempt allowed at.
        self._failures = 0
        self._last_reason = ""
        self._retry_at = 0.0
        # Background refreshes in a row that produced nothing newer (same token, or a failure).
        self._refresh_misses = 0
        # The issuer handed back the very token the partner had rejected: (token, not before, count).
        self._reissued: tuple[str, float, int] | None = None

        name = self._name
        self._lookups = {layer: metrics.token_lookups.labels(name, layer) for layer in ("memory", "redis", "miss")}
        self._hit_memory = metrics.hot_counter(metrics.token_lookups, name, "memory")  # the per-request one: lock-free
        self._layer_of = {"memory": "memory", "redis": "redis", "fetch": "miss"}
        self._fetches = {r: metrics.token_fetches.labels(name, r) for r in ("success", *REASONS)}
        # Live at scrape time (not a value set now and stale later); weak so the registry does not
        # keep a closed provider alive.
        ref = weakref.ref(self)

        def seconds_left() -> float:
            provider = ref()
            left = provider.expires_in() if provider is not None else None
            return left if left is not None else 0.0

        metrics.track_token_expiry(name, seconds_left)

    def __repr__(self) -> str:
        return f"TokenProvider(name={self._name!r})"

    # --- public ----------------------------------------------------------------------------------

    def peek(self) -> Token | None:
        """The in-process token if it is usable now (counted as a memory hit), else None: a plain
        call for the callback path, which takes the coroutine path when this says None."""
        held = self._held
        if held is not None:
            now = self._clock()
            if now < held.usable_until:
                self._hit_memory.inc()
                if now >= held.refresh_at and self._refresh_task is None and not self._closed:
                    self._start_refresh(held)
                return held.token
        return None

    async def get(self) -> Token:
        """A usable token. The hot path (a valid in-process token) does no I/O and never suspends."""
        token = self.peek()
        if token is not None:
            return token
        return await self._lookup(None)

    async def renew(self, rejected: str) -> Token:
        """A token other than ``rejected``, which the partner just refused (401/P08).

        Only the rejected token is dropped, in memory and (compare-and-delete) in Redis: a newer
        token another request or replica already got is used as is, never thrown away.
        """
        # On the rejecting request's span (this runs in its task, the flight may be another's).
        self._tracing.event("token.invalidated", {"partner_proxy.provider": self._name})
        now = self._clock()
        held = self._held
        if held is not None:
            if held.grant.value != rejected:
                if now < held.usable_until:  # already renewed by a concurrent request
                    self._hit_memory.inc()
                    return held.token
            else:
                reissued = self._reissued
                if reissued is not None and reissued[0] == rejected and now < reissued[1] and now < held.usable_until:
                    # The issuer just gave this same token back; asking again right away would
                    # give it back again. Serve it; the caller's retry decides.
                    self._hit_memory.inc()
                    return held.token
                self._held = None
        return await self._lookup(rejected)

    def expires_in(self) -> float | None:
        """Seconds until the in-process token really expires (0 when past), None without one."""
        held = self._held
        if held is None:
            return None
        return max(0.0, held.grant.expires_at - self._clock())

    async def close(self) -> None:
        """Cancel the background refresh and any fetch in flight; the store is closed by its owner."""
        self._closed = True
        tasks = [t for t in (self._refresh_task, self._flight) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- lookup through the single flight --------------------------------------------------------

    async def _lookup(self, rejected: str | None) -> Token:
        try:
            grant, source = await self._join_flight(rejected)
        except TokenUnavailable:
            self._lookups["miss"].inc()
            raise
        now = self._clock()
        if not grant.usable(now):
            # A flight can end with a token that is not usable (e.g. a background refresh whose
            # issuer returned the same, nearly expired token). Never hand one out.
            self._lookups["miss"].inc()
            raise TokenUnavailable(self._name, "expired", retry_after=max(self._retry_at - now, 1.0))
        self._lookups[self._layer_of[source]].inc()
        return grant.as_token(source)

    async def _join_flight(self, rejected: str | None) -> tuple[Grant, str]:
        """Wait for the process's one fetch; start it if none runs (unless backing off).

        For a renewal, a flight that was already running may come back with the rejected token
        (it read Redis before the compare-and-delete); then one more, forced, flight runs.
        """
        result: tuple[Grant, str] | None = None
        for _ in range(2):
            task = self._flight
            if task is None or task.done():
                now = self._clock()
                if now < self._retry_at:
                    raise TokenUnavailable(self._name, self._last_reason, retry_after=self._retry_at - now)
                task = self._start_flight(self._want(rejected), rejected)
            forced_for_us = rejected is not None and self._flight_rejected == rejected
            result = await asyncio.shield(task)
            if rejected is None or result[0].value != rejected or forced_for_us:
                return result
        assert result is not None
        return result

    def _want(self, rejected: str | None) -> Want:
        clock = self._clock
        if rejected is None:
            return lambda g: g.usable(clock())
        return lambda g: g.value != rejected and g.usable(clock())

    def _start_flight(self, want: Want, rejected: str | None) -> asyncio.Task[tuple[Grant, str]]:
        task = asyncio.get_running_loop().create_task(self._obtain(want, rejected), name=f"token-fetch:{self._name}")
        self._flight = task
        self._flight_rejected = rejected
        task.add_done_callback(self._flight_done)
        return task

    def _flight_done(self, task: asyncio.Task[tuple[Grant, str]]) -> None:
        if self._flight is task:
            self._flight = None
            self._flight_rejected = None
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have been cancelled

    # --- the flight: Redis, lock, endpoint --------------------------------------------------------

    async def _obtain(self, want: Want, rejected: str | None) -> tuple[Grant, str]:
        """Runs as the single flight. Returns the grant and where it came from."""
        store = self._store
        if store is None:
            return self._adopt(await self._fetch(rejected), "fetch")
        now = self._clock()
        if rejected is not None:
            read = await store.discard(self._name, rejected, now)
        else:
            read = await store.get(self._name, now)
        if self._tracing.enabled:
            hit = read.grant is not None and want(read.grant)
            result = "error" if not read.ok else "hit" if hit else "stale" if read.grant is not None else "miss"
            self._tracing.event("token.redis_lookup", {"partner_proxy.provider": self._name, "partner_proxy.redis_result": result})
        if read.grant is not None and want(read.grant):
            return self._adopt(read.grant, "redis")
        if not read.ok:  # Redis is down or slow: do not spend more time on it for this fetch
            return await self._fetch_and_store(store, rejected)
        return await self._obtain_locked(store, want, rejected)

    async def _obtain_locked(self, store: RedisTokenStore, want: Want, rejected: str | None) -> tuple[Grant, str]:
        """Fetch under the cross-replica lock, or wait (bounded) for the replica holding it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + store.lock_wait
        lock = await store.acquire_lock(self._name)
        while lock.status == "busy" and loop.time() < deadline:
            await asyncio.sleep(LOCK_POLL_INTERVAL)
            read = await store.get(self._name, self._clock())
            if read.grant is not None and want(read.grant):
                return self._adopt(read.grant, "redis")
            if not read.ok:
                break
            # If the holder failed (or finished with nothing we want), its lock is gone: take over.
            lock = await store.acquire_lock(self._name)
        if lock.status != "acquired":
            # Waited lock_wait in vain, or Redis is unavailable: fetch ourselves rather than fail.
            return await self._fetch_and_store(store, rejected)
        try:
            # The previous holder may have written its token between our read and our lock.
            read = await store.get(self._name, self._clock())
            if read.grant is not None and want(read.grant):
                return self._adopt(read.grant, "redis")
            return await self._fetch_and_store(store, rejected)
        finally:
            await store.release_lock(self._name, lock.owner)

    async def _fetch_and_store(self, store: RedisTokenStore, rejected: str | None) -> tuple[Grant, str]:
        grant = await self._fetch(rejected)
        await store.set(self._name, grant, self._clock())
        return self._adopt(grant, "fetch")

    async def _fetch(self, rejected: str | None) -> Grant:
        """One call to the token endpoint, gated by the failure backoff."""
        now = self._clock()
        if now < self._retry_at:
            raise TokenUnavailable(self._name, self._last_reason, retry_after=self._retry_at - now)
        tracing = self._tracing
        span = (
            tracing.client_span(
                tracing.current(),
                "POST token",
                attributes={
                    "http.request.method": "POST",
                    "server.address": self._token_host,
                    "server.port": self._token_port,
                    "partner_proxy.provider": self._name,
                },
            )
            if tracing.enabled
            else None
        )
        try:
            grant = await self._client.fetch()
        except TokenFetchError as exc:
            tracing.end(span, exc.status, exc.reason)
            retry_after = self._fetch_failed(exc.reason)
            raise TokenUnavailable(self._name, exc.reason, retry_after=retry_after) from exc
        except BaseException:  # cancelled: the span still ends, as what it is
            tracing.end(span, None, "cancelled")
            raise
        tracing.end(span, 200)
        self._fetches["success"].inc()
        if self._failures:
            self._log.info("token fetch for %s succeeded after %d failures", self._name, self._failures)
        self._failures = 0
        self._retry_at = 0.0
        if rejected is not None and grant.value == rejected:
            count = self._reissued[2] + 1 if self._reissued is not None and self._reissued[0] == rejected else 1
            self._reissued = (rejected, self._clock() + self._backoff(count), count)
            self._log.warning("token endpoint for %s re-issued the token the partner rejected", self._name)
        return grant

    def _fetch_failed(self, reason: str) -> float:
        """Count the failure, schedule the next attempt; returns seconds until it."""
        self._failures += 1
        self._last_reason = reason
        delay = self._backoff(self._failures)
        self._retry_at = self._clock() + delay
        self._fetches[reason].inc()
        self._log.warning(
            "token fetch for %s failed: %s (%d in a row); next attempt in %.1fs",
            self._name,
            reason,
            self._failures,
            delay,
        )
        if self._on_fetch_failure is not None:
            try:
                self._on_fetch_failure(self._name, reason, self._failures)
            except Exception as exc:  # a notification problem must not turn into a token problem
                self._log.warning("on_fetch_failure hook failed: %s", type(exc).__name__)
        return delay

    def _backoff(self, attempt: int) -> float:
        """Exponential with "equal jitter": half fixed, half random, so retries never bunch at ~0."""
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt - 1, 32))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _adopt(self, grant: Grant, source: str) -> tuple[Grant, str]:
        """Make ``grant`` the in-process token if it expires later than the current one."""
        held = self._held
        if held is None or grant.expires_at > held.grant.expires_at:
            # Refresh-ahead is measured from the usable end (expiry minus skew), so even a
            # refresh_before shorter than the skew refreshes before the token stops being served.
            refresh_before = min(self._refresh_before, grant.lifetime / 2)
            self._held = _Held(
                grant=grant,
                token=grant.as_token("memory"),
                usable_until=grant.usable_until,
                refresh_before=refresh_before,
                refresh_at=grant.usable_until - refresh_before,
            )
            self._refresh_misses = 0
            if self._reissued is not None and self._reissued[0] != grant.value:
                self._reissued = None
            self._log.debug(
                "token for %s from %s, expires in %.0fs", self._name, source, grant.expires_at - self._clock()
            )
        elif grant.usable_until > held.usable_until and not held.grant.usable(self._clock()):
            # Not a later token, but usable where ours is not: an issuer that re-issues its current
            # token with the remaining lifetime near the end. Serve it; keep the refresh backoff
            # (this is no progress), so it cannot turn into a refresh loop.
            held.grant = grant
            held.token = grant.as_token("memory")
            held.usable_until = grant.usable_until
        return grant, source

    # --- refresh ahead ---------------------------------------------------------------------------

    def _start_refresh(self, held: _Held) -> None:
        task = asyncio.get_running_loop().create_task(self._refresh_ahead(held), name=f"token-refresh:{self._name}")
        self._refresh_task = task
        task.add_done_callback(self._refresh_done)

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        if self._refresh_task is task:
            self._refresh_task = None
        if not task.cancelled():
            task.exception()

    async def _refresh_ahead(self, held: _Held) -> None:
        """Get a newer token while ``held`` is still served; back off if none comes of it.

        Runs as a flight like any fetch, so it re-reads Redis first (another replica may have
        refreshed) and takes the cross-replica lock before calling the endpoint.
        """
        try:
            await asyncio.sleep(self._rng.uniform(0, min(REFRESH_JITTER_RATIO * held.refresh_before, REFRESH_JITTER_CAP)))
            if self._held is not held:
                return
            task = self._flight
            if task is None or task.done():
                if self._clock() < self._retry_at:
                    return
                clock = self._clock
                old_expiry = held.grant.expires_at
                task = self._start_flight(lambda g: g.expires_at > old_expiry and g.usable(clock()), None)
            await asyncio.shield(task)
        except TokenUnavailable:
            pass  # counted and logged where it happened; the current token is still served
        except Exception as exc:
            self._log.warning("background token refresh for %s failed: %s", self._name, type(exc).__name__)
        finally:
            if self._held is held:
                # Nothing newer (the issuer returned the same token, or failed): wait before trying
                # again instead of refreshing on every request until expiry.
                self._refresh_misses += 1
                held.refresh_at = max(self._retry_at, self._clock() + self._backoff(self._refresh_misses))


def _host_port(url: str) -> tuple[str | None, int | None]:
    """``server.address`` / ``server.port`` of the token endpoint (never its path or query)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None, None
    return parts.hostname, port
