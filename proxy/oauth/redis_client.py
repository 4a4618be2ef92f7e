"""redis.asyncio clients for each ``REDIS_URL`` topology, and what a Redis failure means, in words.

``build_client`` turns a parsed ``RedisTarget`` (``proxy.config.redis_url``) into one client:

- ``redis://`` / ``rediss://``: a ``BlockingConnectionPool`` of ``POOL_SIZE`` connections;
- ``redis+sentinel://``: ``Sentinel(...).master_for(service)``; every new connection asks the
  sentinels where the master is, and a connection to a demoted master (READONLY) is dropped, so a
  failover is followed without a restart;
- ``redis+cluster://``: ``RedisCluster`` with the seed nodes; the slot map is loaded lazily on the
  first command and reloaded when a node moves or is lost. ``require_full_coverage=False``: losing
  one master only affects the providers whose slot it held.

No I/O happens here. Timeouts are explicit (redis-py waits 5 s or forever by default), timeouts are
never retried, and one immediate retry on a dropped connection is allowed (it hides a stale pooled
connection after a restart or a failover).

``failure_reason`` maps an exception to a fixed phrase for the one log line per outage; redis-py's
own error text is never logged because it can echo hosts and, in some versions, the URL.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff

from proxy.config.models import TokenCacheConfig
from proxy.config.redis_url import RedisTarget

# Token lookups are short and mostly served from process memory; a handful of connections covers
# the lookups, the lock and the pollers. When all are busy a caller waits at most the connect
# timeout for one, then treats Redis as unavailable.
POOL_SIZE: Final = 8

RedisClient = aioredis.Redis | RedisCluster


def build_client(target: RedisTarget, config: TokenCacheConfig) -> RedisClient:
    common: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "username": target.username,
        "password": target.password,
        **_driver_info(),
    }
    if target.mode == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            require_full_coverage=False,
            max_connections=POOL_SIZE,
            # One retry: the first failure on a lost node makes the client reload the slot map.
            retry=Retry(NoBackoff(), 1),
            **common,
            **_tls(target),
        )
    connection: dict[str, Any] = {
        **common,
        "db": target.db,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 1, supported_errors=(rx.ConnectionError,)),
    }
    if target.mode == "sentinel":
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": config.socket_timeout,
            "socket_connect_timeout": config.connect_timeout,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
            **_driver_info(),
            **_tls(target),
        }
        sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs, **connection, **_tls(target))
        # SentinelConnectionPool is not a blocking pool: allow more connections than the plain
        # pool so a short burst does not hit "Too many connections" (which would still only be
        # a counted miss).
        return sentinel.master_for(target.service, max_connections=POOL_SIZE * 4)
    if target.mode == "unix":
        pool = aioredis.BlockingConnectionPool(
            connection_class=aioredis.UnixDomainSocketConnection,
            path=target.path,
            max_connections=POOL_SIZE,
            timeout=config.connect_timeout,
            **connection,
        )
        return aioredis.Redis.from_pool(pool)
    host, port = target.nodes[0]
    tls = _tls(target)
    if tls.pop("ssl", False):
        connection["connection_class"] = aioredis.SSLConnection
    pool = aioredis.BlockingConnectionPool(
        host=host,
        port=port,
        max_connections=POOL_SIZE,
        timeout=config.connect_timeout,
        **connection,
        **tls,
    )
    return aioredis.Redis.from_pool(pool)


def _tls(target: RedisTarget) -> dict[str, Any]:
    if not target.tls:
        return {}
    out: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        value = getattr(target, key)
        if value:
            out[key] = value
    return out


def failure_reason(exc: BaseException) -> str:
    """A fixed phrase for the log: what kind of failure, and what to check. Never the error text."""
    if isinstance(exc, rx.AuthenticationError | rx.AuthenticationWrongNumberOfArgsError):
        return "authentication rejected: check the user and password in REDIS_URL"
    if isinstance(exc, rx.NoPermissionError):
        return "the ACL user may not run a command the token cache needs: see docs/deploy.md, minimal ACL"
    if isinstance(exc, rx.ResponseError) and "NOAUTH" in str(exc)[:16]:
        return "authentication required: REDIS_URL has no password (user:password@)"
    if _tls_failure(exc):
        return "TLS handshake failed: check ssl_ca_certs (the CA that signed the server certificate), the host name, and the client certificate"
    if isinstance(exc, MasterNotFoundError):
        return "the sentinels know no healthy master for the service (failover in progress, or a wrong service name)"
    if isinstance(exc, rx.ClusterDownError | rx.SlotNotCoveredError):
        return "the cluster does not serve this key's slot (a master is down)"
    if isinstance(exc, rx.ReadOnlyError):
        return "connected to a replica (read-only), not a master"
    if isinstance(exc, rx.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, rx.ConnectionError | OSError):
        return "connection failed"
    if isinstance(exc, rx.RedisClusterException):
        return "cluster unreachable or misconfigured"
    return type(exc).__name__


def _tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError):
            return True
        cur = cur.__cause__ or cur.__context__
    if isinstance(exc, rx.ConnectionError):
        text = str(exc)
        return "SSL" in text or "CERTIFICATE" in text or "certificate" in text
    return False


def _driver_info() -> dict[str, object]:
    """Resolve redis-py's CLIENT SETINFO metadata once, here, at startup.

    Left to itself, redis-py looks its own version up in the installed package metadata (disk
    reads) for every new connection, which happens on the event loop: blockbuster caught it on the
    request path of the first token lookup (tests/test_nonblocking.py).
    """
    try:
        from redis.driver_info import DriverInfo
        from redis.utils import get_lib_version
    except ImportError:  # older redis-py without driver_info: nothing to pre-resolve
        return {}
    return {"driver_info": DriverInfo(name="redis-py", lib_version=get_lib_version())}
