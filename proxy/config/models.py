"""Frozen, typed config objects. The loader builds them once; the hot path reads only these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


class Secret:
    """A string that never prints itself: repr, str and format all give ``***``.

    Secrets flow from env or files into config; this wrapper keeps them out of logs, exception
    text and the ``/config`` dump by construction. Call ``reveal()`` only where the wire needs it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "***" if self._value else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: ListenAddress


@dataclass(frozen=True, slots=True)
class TokenCacheConfig:
    redis_url: Secret                    # may embed a password: redacted like any secret
    key_prefix: str = "partner-proxy:token:"
    socket_timeout: float = 0.25         # redis-py waits forever by default; a token lookup must not
    connect_timeout: float = 0.25
    lock_ttl: float = 10.0               # the cross-replica fetch lock expires by itself after this
    lock_wait: float = 5.0               # how long a replica waits for another's fetch before fetching itself


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    name: str
    type: str                            # only "oauth2_client_credentials" today
    token_url: str
    client_id: str
    client_secret: Secret
    refresh_before: float                # seconds before expiry to refresh in the background
    timeout: float = 5.0                 # whole token request
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    fail_max: int = 5
    reset_timeout: float = 30.0
    half_open_max_calls: int = 1
    failures: tuple[str, ...] = ("connect_failure", "timeout", "5xx")


@dataclass(frozen=True, slots=True)
class RetryConfig:
    attempts: int = 1                    # extra tries after the first; 0 disables
    on: tuple[str, ...] = ("connect_failure", "5xx")
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    budget_ratio: float = 0.2            # retries never exceed this share of requests...
    budget_min_per_second: float = 3.0   # ...except this floor, so low traffic can still retry


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    base_url: str
    credentials: str | None
    errors: str
    timeout: float = 10.0
    connect_timeout: float = 2.0
    max_connections: int = 100          # pool size: attempts on the wire at once (Envoy's max_connections)
    max_pending_requests: int = 1000     # attempts that may wait for a pooled connection...
    pending_timeout: float = 5.0         # ...each for at most this long; past either: 503 ClusterOverflow
    max_requests: int = 1000             # requests in the cluster at once (waiting or in flight)
    idle_timeout: float = 30.0           # an idle pooled connection older than this is never reused
    max_connection_duration: float = 0.0 # a connection older than this is closed after its answer; 0: off
    circuit_breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    max_response_bytes: int = 8 * 1024 * 1024
    client: str = "http11"               # "http11" (lean pool, proxy/upstream/http11.py) or "aiohttp"


@dataclass(frozen=True, slots=True)
class RequireConfig:
    content_type: str | None = None
    headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamRef:
    cluster: str
    path: str
    query: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    path: str
    methods: tuple[str, ...]
    require: RequireConfig
    upstream: UpstreamRef


@dataclass(frozen=True, slots=True)
class SinkConfig:
    url: Secret                          # a Slack webhook URL is itself a credential
    api_key: Secret = Secret("")

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True, slots=True)
class NotificationsConfig:
    dedup_window: float = 60.0
    timeout: float = 5.0
    queue_size: int = 1000
    token_failure_threshold: int = 3     # consecutive token-fetch failures before notifying
    slack: SinkConfig = SinkConfig(Secret(""))
    datadog: SinkConfig = SinkConfig(Secret(""))
    newrelic: SinkConfig = SinkConfig(Secret(""))


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    capture_bodies: bool = False
    max_body_bytes: int = 2048
    redact_fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: ListenAddress
    admin: AdminConfig
    token_cache: TokenCacheConfig
    credentials: Mapping[str, CredentialsConfig]
    clusters: Mapping[str, ClusterConfig]
    routes: tuple[RouteConfig, ...]
    notifications: NotificationsConfig = NotificationsConfig()
    log: LogConfig = LogConfig()
    drain_timeout: float = 5.0
    source: str = ""
