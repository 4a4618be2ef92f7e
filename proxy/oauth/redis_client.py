"""redis.asyncio clients for each ``REDIS_URL`` topology, and what a Redis failure means, in words.

``build_client`` turns a parsed ``RedisTarget`` (``proxy.config.redis_url``) into one client:

- ``redis://`` / ``rediss://``: a ``BlockingConnectionPool`` of ``POOL_SIZE`` connections;
- ``redis+sentinel://``: ``Sentinel(...).master_for(service)``; every new connection asks the
  sentinels where the master is, and a connection to a demoted master (READONLY) is dropped, so a
  failover is followed without a restart;
- ``redis+cluster://``: ``RedisCluster`` with the seed nodes; the slot map is loaded lazily on the
  first command and reloaded when a node moves or is lost. ``require_full_coverage=False``: losing
  one master only affects the providers whose slot it held.

TLS (``rediss://``, ``rediss+sentinel://``, ``rediss+cluster://``): ``build_client`` builds one
``ssl.SSLContext`` from the URL (CERT_REQUIRED, host-name check on, ``ssl_ca_certs`` or the system
CA bundle, the client certificate), and every connection of the client uses that one object:
sentinel connections, master connections, every cluster node. Left to itself, redis-py builds a
context per connection object, reading the CA bundle and the certificate files from disk on the
event loop each time (``RedisSSLContext.get``); it has no parameter for a ready context, so the
connection classes here are ``SSLConnection`` subclasses whose ``RedisSSLContext`` holds the
shared context (a class attribute, ``shared_ssl_context``), which ``get`` then returns as is. The
files are read when the client is built (at start-up; on a reload only when ``token_cache``
changed, since the stores are kept per ``TokenCacheConfig``), and again when they change on disk:
``TlsFiles.watch`` (run by the token store while it is open) stats the files (``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``; not the system CA bundle) every
``TLS_POLL_INTERVAL`` seconds in a thread, following symlinks (a Kubernetes Secret volume swaps
a symlink), and on a change builds a new context in a thread and puts it in the client's
connection classes. Every connect from then on uses it (a pooled connection object that
reconnects too); a connection already open keeps its TLS session until it is closed. Files that
cannot be used (half-written, a key of another certificate) leave the current context in place,
with one warning naming the file and what is wrong, and are tried again on every poll.

Apart from the TLS files (read as above), no I/O happens here. Timeouts are explicit (redis-py waits 5 s
or forever by default), timeouts are never retried, and one immediate retry on a dropped connection is allowed (it hides a stale pooled
connection after a restart or a failover).

``failure_reason`` maps an exception to a fixed phrase for the one log line per outage; redis-py's
own error text is never logged because it can echo hosts and, in some versions, the URL.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final

import redis
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelManagedSSLConnection
from redis.backoff import NoBackoff

from proxy.config.models import TokenCacheConfig
from proxy.config.redis_url import RedisTarget
from proxy.filestate import FileFingerprint, fingerprint

# Token lookups are short and mostly served from process memory; a handful of connections covers
# the lookups, the lock and the pollers. When all are busy a caller waits at most the connect
# timeout for one, then treats Redis as unavailable.
POOL_SIZE: Final = 8

# How often a TLS client's files (CA, client certificate, key) are checked for a replacement on
# disk. A stat of each file, in a thread; a rotation is picked up within this many seconds.
TLS_POLL_INTERVAL: Final = 5.0

RedisClient = aioredis.Redis | RedisCluster

log = logging.getLogger("proxy.oauth")


def build_client(target: RedisTarget, config: TokenCacheConfig) -> RedisClient:
    """One client for ``target``. With TLS, reads the CA and client certificate files (once)."""
    return build_client_and_tls(target, config)[0]


def build_client_and_tls(target: RedisTarget, config: TokenCacheConfig) -> tuple[RedisClient, TlsFiles | None]:
    """One client for ``target``, and with TLS the ``TlsFiles`` that can swap its context when
    the files change on disk (``TlsFiles.watch``; nothing watches until that runs)."""
    tls = TlsFiles.load(target) if target.tls else None
    return _build(target, config, tls), tls


def _build(target: RedisTarget, config: TokenCacheConfig, tls: TlsFiles | None) -> RedisClient:
    common: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "username": target.username,
        "password": target.password,
        **_driver_info(),
    }
    if target.mode == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            require_full_coverage=False,
            max_connections=POOL_SIZE,
            # One retry: the first failure on a lost node makes the client reload the slot map.
            retry=Retry(NoBackoff(), 1),
            **common,
            **_tls(target),
        )
        if tls is not None:
            _share_context_in_cluster(cluster, tls)
        return cluster
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
        master_kwargs: dict[str, Any] = {}
        if tls is not None:
            # The sentinels: redis.asyncio.Redis takes no connection class, so the pools of the
            # clients Sentinel made (each with ssl=True: SSLConnection) get the shared-context
            # subclass. Nothing has connected yet: Sentinel does no I/O when built.
            sentinel_class = tls.connection_class(SSLConnection)
            for client in sentinel.sentinels:
                _expect(client.connection_pool.connection_class is SSLConnection, "how Redis picks its TLS connection class")
                client.connection_pool.connection_class = sentinel_class
            # The master: SentinelConnectionPool takes connection_class.
            master_kwargs["connection_class"] = tls.connection_class(SentinelManagedSSLConnection)
        # SentinelConnectionPool is not a blocking pool: allow more connections than the plain
        # pool so a short burst does not hit "Too many connections" (which would still only be
        # a counted miss).
        return sentinel.master_for(target.service, max_connections=POOL_SIZE * 4, **master_kwargs)
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
    ssl_kwargs: dict[str, Any] = {}
    if tls is not None:
        connection["connection_class"] = tls.connection_class(SSLConnection)
        ssl_kwargs = _tls_kwargs(target)
    pool = aioredis.BlockingConnectionPool(
        host=host,
        port=port,
        max_connections=POOL_SIZE,
        timeout=config.connect_timeout,
        **connection,
        **ssl_kwargs,
    )
    return aioredis.Redis.from_pool(pool)


def tls_context(target: RedisTarget) -> ssl.SSLContext:
    """The one client-side context of a TLS target: what redis-py's ``RedisSSLContext.get`` would
    build for ``_tls(target)`` (CERT_REQUIRED, host-name check, the CA, the client certificate)."""
    context = ssl.create_default_context()  # the system CA bundle, TLS 1.2+, CERT_REQUIRED
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if target.ssl_certfile or target.ssl_keyfile:
        context.load_cert_chain(certfile=target.ssl_certfile, keyfile=target.ssl_keyfile)  # type: ignore[arg-type]
    if target.ssl_ca_certs:
        context.load_verify_locations(cafile=target.ssl_ca_certs)
    return context


class _SharedContext:
    """Mixin for a redis-py ``SSLConnection`` class: its ``RedisSSLContext`` holds the shared
    context, so ``get()`` returns it instead of building (and reading files for) a new one.

    The class attribute is the client's current context (``TlsFiles`` replaces it when the files
    change on disk); each connect, a pooled connection object reconnecting included, takes the
    current one. A connection already open keeps the TLS session it has.

    Host-name verification is the context's (``check_hostname``): asyncio passes the host the
    connection dials as ``server_hostname``, so each connection checks its own server's name."""

    shared_ssl_context: ssl.SSLContext

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context.context = self.shared_ssl_context  # type: ignore[attr-defined]

    def _connection_arguments(self) -> Any:
        self.ssl_context.context = self.shared_ssl_context  # type: ignore[attr-defined]
        return super()._connection_arguments()  # type: ignore[misc]


def _shared_context_class(base: type[SSLConnection], context: ssl.SSLContext) -> type[SSLConnection]:
    """``base`` with every instance on ``context`` (a class per client: redis-py makes connections
    from a class and keyword arguments, and not every topology passes arbitrary arguments on)."""
    return type(f"SharedContext{base.__name__}", (_SharedContext, base), {"shared_ssl_context": context})


def _share_context_in_cluster(cluster: RedisCluster, tls: TlsFiles) -> None:
    """RedisCluster hard-codes ``SSLConnection`` for ``ssl=True`` and takes no connection class.

    Every node it will ever make (the slot map, a MOVED redirect) is built from
    ``cluster.connection_kwargs``, the dict the NodesManager shares; the seed nodes were built
    before this and hold their own copy of the class. Nothing has connected yet."""
    shared = tls.connection_class(SSLConnection)
    _expect(cluster.connection_kwargs["connection_class"] is SSLConnection, "how RedisCluster picks its TLS connection class")
    cluster.connection_kwargs["connection_class"] = shared
    _expect(cluster.nodes_manager.connection_kwargs is cluster.connection_kwargs, "how RedisCluster builds its nodes")
    for node in [*cluster.startup_nodes, *cluster.nodes_manager.startup_nodes.values()]:
        node.connection_class = shared


# --- TLS files replaced on disk -------------------------------------------------------------------

class TlsFiles:
    """The TLS files of one client, the context built from them, and the connection classes that
    hand it to every new connection.

    ``check`` (a poll: ``watch`` runs it every ``TLS_POLL_INTERVAL``) stats the files in a thread;
    when one changed it builds a new context, in a thread too, and on success puts it in the
    classes: connections opened from then on use it, open ones keep theirs. A context that cannot
    be built (a half-written file, a key of another certificate) leaves the current one in place,
    is logged once with the file and the reason, and is tried again on every poll."""

    def __init__(self, target: RedisTarget, context: ssl.SSLContext, seen: tuple[FileFingerprint, ...]) -> None:
        self.target = target
        self.context = context
        self.files: dict[str, str] = {
            key: path for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") if (path := getattr(target, key))
        }
        self.classes: list[type[SSLConnection]] = []
        self._seen = seen  # the fingerprints of the files ``context`` was built from
        self._problem = ""  # what is wrong with the files on disk now, once logged

    @classmethod
    def load(cls, target: RedisTarget) -> TlsFiles:
        """Read the files and build the context, in the calling thread. The fingerprints are taken
        first: a change made while the context is built is seen by the next check."""
        files = [getattr(target, key) for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") if getattr(target, key)]
        seen = tuple(fingerprint(f) for f in files)
        return cls(target, tls_context(target), seen)

    def connection_class(self, base: type[SSLConnection]) -> type[SSLConnection]:
        shared = _shared_context_class(base, self.context)
        self.classes.append(shared)
        return shared

    def fingerprints(self) -> tuple[FileFingerprint, ...]:
        """Blocking (a stat per file): call in a thread."""
        return tuple(fingerprint(path) for path in self.files.values())

    async def check(self) -> str:
        """One poll: ``unchanged``; ``reloaded`` (new connections use the new context); ``failed``
        (the current context stays, the problem is logged) or ``still_failing`` (the same problem,
        not logged again). Blocking work runs in a thread."""
        now = await asyncio.to_thread(self.fingerprints)
        if now == self._seen:
            if self._problem:
                self._problem = ""
                log.info("Redis TLS files for %s are back to the ones in use", self.target.describe())
            return "unchanged"
        built = await asyncio.to_thread(_build_or_explain, self.target, self.files)
        if isinstance(built, str):
            if built == self._problem:
                return "still_failing"
            self._problem = built
            log.warning(
                "Redis TLS files for %s changed but cannot be used, new connections keep the previous certificate: %s; trying again every %g s",
                self.target.describe(), built, TLS_POLL_INTERVAL,
            )
            return "failed"
        self.context, self._seen, self._problem = built, now, ""
        for shared in self.classes:
            shared.shared_ssl_context = built  # type: ignore[attr-defined]
        log.info("Redis TLS files for %s changed: new connections use the new certificate", self.target.describe())
        return "reloaded"

    async def watch(self, on_result: Callable[[str], None] | None = None) -> None:
        """``check`` every ``TLS_POLL_INTERVAL`` until cancelled; ``on_result`` gets ``reloaded`` and
        ``failed`` (once per problem)."""
        while True:
            await asyncio.sleep(TLS_POLL_INTERVAL)
            try:
                result = await self.check()
            except Exception:  # never stop watching; the next poll tries again
                log.exception("Redis TLS file check for %s failed", self.target.describe())
                continue
            if on_result is not None and result in ("reloaded", "failed"):
                on_result(result)


def _build_or_explain(target: RedisTarget, files: dict[str, str]) -> ssl.SSLContext | str:
    """A new context from the files, or what is wrong with them, in words (blocking: a thread)."""
    try:
        return tls_context(target)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        return _what_is_wrong(files, exc)


def _what_is_wrong(files: dict[str, str], exc: BaseException) -> str:
    """Which file(s) cannot be used and why: fixed phrases and the paths, never the contents nor
    OpenSSL's text. Each file is loaded alone to find the culprit (blocking: a thread)."""
    problems: list[str] = []
    for key, path in files.items():
        name = f"{key}={path}"
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            problems.append(f"{name}: no such file")
            continue
        except OSError:
            problems.append(f"{name}: cannot be read (permissions, or not a file)")
            continue
        if key in ("ssl_ca_certs", "ssl_certfile"):
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
            except (OSError, ValueError):
                what = "CA certificate" if key == "ssl_ca_certs" else "certificate"
                problems.append(f"{name}: no complete PEM {what} in it (empty, half-written or another kind of file)")
    if problems:
        return "; ".join(problems)
    certfile, keyfile = files.get("ssl_certfile"), files.get("ssl_keyfile")
    if certfile and keyfile:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(certfile=certfile, keyfile=keyfile)
        except ssl.SSLError as chain_exc:
            if chain_exc.reason == "KEY_VALUES_MISMATCH":
                return f"ssl_keyfile={keyfile} is not the key of ssl_certfile={certfile}"
            return f"ssl_keyfile={keyfile}: no complete PEM private key in it (empty, half-written, encrypted or another kind of file)"
        except (OSError, ValueError):
            return f"ssl_keyfile={keyfile}: cannot be loaded with ssl_certfile={certfile}"
    return f"the TLS context cannot be built ({type(exc).__name__})"


def _tls(target: RedisTarget) -> dict[str, Any]:
    if not target.tls:
        return {}
    out: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        value = getattr(target, key)
        if value:
            out[key] = value
    return out


def _expect(condition: bool, what: str) -> None:
    """A start-up error, not silently per-connection contexts again, if a redis-py upgrade moves a hook."""
    if not condition:
        raise RuntimeError(f"redis-py {redis.__version__} changed {what}: proxy/oauth/redis_client.py cannot share the TLS context")


def _tls_kwargs(target: RedisTarget) -> dict[str, Any]:
    """The ``ssl_*`` connection arguments (``_tls`` without ``ssl``), for the shared-context classes:
    the context does the work, these keep a connection's ``ca_certs`` etc. telling the truth."""
    out = _tls(target)
    out.pop("ssl", None)
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
