"""The shared token cache in Redis, plus the cross-replica fetch lock.

Redis is an optimisation here, never a dependency: every method catches every Redis failure
(connection refused, timeout, protocol error, OS error), counts it in
``partner_proxy_redis_errors_total{op}`` and answers as if the key were absent. The client is built
with short socket timeouts and no retry on timeouts, so a slow Redis costs a request at most a few
hundred milliseconds; redis-py reconnects per command, so nothing here has to notice Redis coming
back.

Layout (prefix from ``TokenCacheConfig.key_prefix``)::

    <prefix><provider>        {"access_token": ..., "expires_at": <epoch s>, "issued_at": <epoch s>}  PX = ms to expiry
    <prefix><provider>:lock   <owner uuid>  NX PX lock_ttl

With Redis Cluster (``redis+cluster://``) the provider is a hash tag, ``<prefix>{<provider>}`` and
``<prefix>{<provider>}:lock``, so one provider's token and lock live in one slot (the Lua scripts
touch one key each, but a future script may touch both). Single-node and Sentinel keep the plain
layout, which is what operators ``GET``/``DEL`` by hand (docs/deploy.md).

Which server(s) the client talks to, TLS and ACL users: ``proxy.oauth.redis_client``. With TLS,
the store watches the client's certificate files from its first command until ``close``
(``TlsFiles.watch``): a replaced CA or client certificate is used by the connections opened after
it, without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from typing import Final, Literal, NamedTuple

from redis.asyncio.cluster import RedisCluster

from proxy.config.models import TokenCacheConfig
from proxy.config.redis_url import parse_redis_url
from proxy.metrics import Metrics
from proxy.oauth.redis_client import RedisClient, TlsFiles, build_client_and_tls, failure_reason
from proxy.oauth.token import Grant

# Every way a Redis call can fail: any exception from the client. The token cache is optional, so
# a request never fails because of it, and the try blocks hold only the client call. Not only
# RedisError and OSError (asyncio's TimeoutError in 3.11): redis-py's asyncio connection raises
# AttributeError ('NoneType' object has no attribute 'writelines') when a connection is torn down
# during its handshake (seen with Cluster and TLS under concurrent commands, redis-py 8.1).
_REDIS_FAILURES: Final = (Exception,)

# Write only if nothing newer is stored: two replicas finishing fetches in either order, or a slow
# fetch finishing late, must not replace a later token with an earlier one.
_SET_IF_NEWER: Final = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and type(doc) == 'table' then
    local exp = tonumber(doc['expires_at'])
    if exp and exp >= tonumber(ARGV[2]) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""

# Delete the token only if it is the rejected one; otherwise hand back what is there (another
# replica's newer token), atomically, so a late 401 never throws away a newer token.
_DISCARD_IF_EQUAL: Final = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  return false
end
local ok, doc = pcall(cjson.decode, cur)
if ok and type(doc) == 'table' and doc['access_token'] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return false
end
return cur
"""

# Release the fetch lock only if we still own it (it may have expired and been taken by another).
_RELEASE_IF_OWNER: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Read(NamedTuple):
    """A lookup result: the stored grant (or None), and whether Redis answered at all."""

    grant: Grant | None
    ok: bool


class Lock(NamedTuple):
    """Outcome of a lock attempt: ``acquired`` (``owner`` releases it), ``busy`` or ``unavailable``."""

    status: Literal["acquired", "busy", "unavailable"]
    owner: str = ""


class RedisTokenStore:
    """Token cache and fetch lock for all providers, on one small redis.asyncio pool."""

    def __init__(
        self, client: RedisClient, config: TokenCacheConfig, metrics: Metrics, *, where: str = "", tls: TlsFiles | None = None
    ) -> None:
        self._redis = client
        self._prefix = config.key_prefix
        # Redis Cluster: the provider name is the hash tag, so a provider's keys share one slot.
        self._hash_tag = isinstance(client, RedisCluster)
        self._where = where  # for log lines: scheme, hosts and user, never the password
        self._lock_ttl_ms = max(1, int(config.lock_ttl * 1000))
        self.lock_wait: float = config.lock_wait  # how long a replica polls for another's fetch
        self._errors = {
            op: metrics.redis_errors.labels(op) for op in ("get", "set", "delete", "lock", "unlock")
        }
        self._set_if_newer = client.register_script(_SET_IF_NEWER)
        self._discard_if_equal = client.register_script(_DISCARD_IF_EQUAL)
        self._release_if_owner = client.register_script(_RELEASE_IF_OWNER)
        self._log = logging.getLogger("proxy.oauth")
        self._failing = ""  # the reason of the current outage: logs transitions, not every failed command
        # TLS: the certificate files are watched from the first command (a task needs the running
        # loop, and a store nothing uses has nothing to keep fresh) until close.
        self._tls = tls
        self._watching = tls is None  # True once started, or when there is nothing to watch
        self._watch: asyncio.Task[None] | None = None
        self._tls_reloads = metrics.redis_tls_reloads

    @classmethod
    def from_config(cls, config: TokenCacheConfig, metrics: Metrics) -> RedisTokenStore | None:
        """A store for ``config.redis_url``, or None when it is empty (in-process cache only).

        No I/O happens here: the first command connects (proxy.oauth.redis_client). The URL was
        validated by the config loader; a URL that fails here raises ``RedisUrlError``.
        """
        url = config.redis_url.reveal()
        if not url:
            return None
        target = parse_redis_url(url)
        client, tls = build_client_and_tls(target, config)
        return cls(client, config, metrics, where=target.describe(), tls=tls)

    def __repr__(self) -> str:
        return f"RedisTokenStore(prefix={self._prefix!r})"  # the URL may hold a password

    async def close(self) -> None:
        """Stop watching the TLS files and close the pool's connections. Call once at shutdown,
        after the providers are closed."""
        self._watching = True  # no watcher starts after this
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            await asyncio.wait([watch])
        try:
            await self._redis.aclose()
        except _REDIS_FAILURES:
            pass

    def _start_watching(self) -> None:
        """The TLS file watch, on the first command (the ops call this while ``_watching`` is False)."""
        self._watching = True
        assert self._tls is not None
        self._watch = asyncio.get_running_loop().create_task(
            self._tls.watch(lambda result: self._tls_reloads.labels("success" if result == "reloaded" else "failure").inc()),
            name=f"redis-tls-watch {self._where}",
        )

    def _key(self, provider: str) -> str:
        if self._hash_tag:
            return self._prefix + "{" + provider + "}"
        return self._prefix + provider

    # --- token -----------------------------------------------------------------------------------

    async def get(self, provider: str, now: float) -> Read:
        """The stored token for ``provider``; a missing, garbled or failed read is ``grant=None``."""
        if not self._watching:
            self._start_watching()
        try:
            raw = await self._redis.get(self._key(provider))
        except _REDIS_FAILURES as exc:
            self._failed("get", exc)
            return Read(None, ok=False)
        self._ok()
        return Read(_decode(raw, now), ok=True)

    async def set(self, provider: str, grant: Grant, now: float) -> None:
        """Store ``grant`` with a TTL of its remaining life, unless Redis already has a later one."""
        ttl_ms = math.ceil((grant.expires_at - now) * 1000)
        if ttl_ms <= 0:
            return
        doc = json.dumps(
            {"access_token": grant.value, "expires_at": grant.expires_at, "issued_at": grant.issued_at}
        )
        if not self._watching:
            self._start_watching()
        try:
            await self._set_if_newer(keys=[self._key(provider)], args=[doc, repr(grant.expires_at), ttl_ms])
        except _REDIS_FAILURES as exc:
            self._failed("set", exc)
            return
        self._ok()

    async def discard(self, provider: str, rejected: str, now: float) -> Read:
        """Compare-and-delete: drop the stored token only if it is ``rejected``.

        Returns what stays stored (a different token another replica put there), if anything.
        """
        if not self._watching:
            self._start_watching()
        try:
            raw = await self._discard_if_equal(keys=[self._key(provider)], args=[rejected])
        except _REDIS_FAILURES as exc:
            self._failed("delete", exc)
            return Read(None, ok=False)
        self._ok()
        return Read(_decode(raw, now), ok=True)

    # --- cross-replica fetch lock ----------------------------------------------------------------

    async def acquire_lock(self, provider: str) -> Lock:
        """``SET <key>:lock <uuid> NX PX lock_ttl``: one replica fetches, the others wait for its token."""
        owner = uuid.uuid4().hex
        if not self._watching:
            self._start_watching()
        try:
            got = await self._redis.set(self._key(provider) + ":lock", owner, nx=True, px=self._lock_ttl_ms)
        except _REDIS_FAILURES as exc:
            self._failed("lock", exc)
            return Lock("unavailable")
        self._ok()
        return Lock("acquired", owner) if got else Lock("busy")

    async def release_lock(self, provider: str, owner: str) -> None:
        """Delete the lock if we still own it; if this fails the lock expires by itself."""
        if not self._watching:
            self._start_watching()
        try:
            await self._release_if_owner(keys=[self._key(provider) + ":lock"], args=[owner])
        except _REDIS_FAILURES as exc:
            self._failed("unlock", exc)
            return
        self._ok()

    # --- bookkeeping -----------------------------------------------------------------------------

    def _failed(self, op: str, exc: BaseException) -> None:
        self._errors[op].inc()
        reason = failure_reason(exc)
        if self._failing != reason:
            # Once per outage (and again only if the cause changes), never per request. A fixed
            # phrase, not redis' error text, which can echo the URL (and its password).
            self._failing = reason
            self._log.warning(
                "redis token cache %s unavailable (%s on %s): %s; serving tokens from process memory and fetching directly",
                self._where,
                type(exc).__name__,
                op,
                reason,
            )

    def _ok(self) -> None:
        if self._failing:
            self._failing = ""
            self._log.info("redis token cache %s reachable again", self._where)


def _decode(raw: object, now: float) -> Grant | None:
    """Parse a stored token; anything malformed is a miss (it will be overwritten by the next set)."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    value = doc.get("access_token")
    expires_at = doc.get("expires_at")
    issued_at = doc.get("issued_at", now)
    if not isinstance(value, str) or not value:
        return None
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
        return None
    if isinstance(issued_at, bool) or not isinstance(issued_at, (int, float)) or issued_at > expires_at:
        issued_at = min(now, float(expires_at))
    return Grant(value=value, issued_at=float(issued_at), expires_at=float(expires_at))
