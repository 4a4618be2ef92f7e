"""Frozen, typed config objects. The loader builds them once; the hot path reads only these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Annotated, Any

# Markers the JSON Schema (``partner-proxy schema``) reads off the field types; to Python they are
# plain floats and strings.
Duration = Annotated[float, "duration"]  # "500ms", "30s", "10m", or a bare number of seconds
Url = Annotated[str, "url"]


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


def defaults(cls: type) -> Mapping[str, Any]:
    """A model's defaults by field name: the one place a default is written is the model itself;
    the loader and ``partner-proxy schema`` both read them from here."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


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
    socket_timeout: Duration = 0.25         # redis-py waits forever by default; a token lookup must not
    connect_timeout: Duration = 0.25
    lock_ttl: Duration = 10.0               # the cross-replica fetch lock expires by itself after this
    lock_wait: Duration = 5.0               # how long a replica waits for another's fetch before fetching itself


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    name: str
    token_url: Url
    client_id: str
    client_secret: Secret
    type: str = "oauth2_client_credentials"  # the only type today
    refresh_before: Duration = 600.0        # seconds before expiry to refresh in the background
    timeout: Duration = 5.0                 # whole token request
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    fail_max: int = 5
    reset_timeout: Duration = 30.0
    half_open_max_calls: int = 1
    failures: tuple[str, ...] = ("connect_failure", "timeout", "5xx")


@dataclass(frozen=True, slots=True)
class RetryConfig:
    attempts: int = 1                    # extra tries after the first; 0 disables
    retry_on: tuple[str, ...] = ("connect_failure", "5xx")
    backoff_base: Duration = 0.025
    backoff_max: Duration = 0.25
    budget_ratio: float = 0.2            # retries never exceed this share of requests...
    budget_min_per_second: float = 3.0   # ...except this floor, so low traffic can still retry


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    base_url: Url
    errors: str
    credentials: str | None = None
    timeout: Duration = 10.0
    connect_timeout: Duration = 2.0
    max_connections: int = 100          # pool size: attempts on the wire at once (Envoy's max_connections)
    max_pending_requests: int = 1000     # attempts that may wait for a pooled connection...
    pending_timeout: Duration = 5.0      # ...each for at most this long; past either: 503 ClusterOverflow
    max_requests: int = 1000             # requests in the cluster at once (waiting or in flight)
    idle_timeout: Duration = 30.0        # an idle pooled connection older than this is never reused
    max_connection_duration: Duration = 0.0  # a connection older than this is closed after its answer; 0: off
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
    path: str                                 # may name the match's {params}: /v2/order/{request_id}
    query: tuple[str, ...] = ()               # allow-listed query parameters forwarded
    headers: tuple[tuple[str, str], ...] = () # set on every upstream request (e.g. Accept), replacing the app's
    date: bool = False                        # a fresh RFC 1123 Date header per request
    pass_back: tuple[str, ...] = ()           # partner response headers handed to the app besides Content-Type


@dataclass(frozen=True, slots=True)
class BodyConfig:
    """The request body a route accepts: at most ``max_bytes``, JSON, of ``schema`` (JSON Schema)."""

    max_bytes: int = 65536
    schema: Mapping[str, Any] | None = None


SIGN_SCHEMES = ("pss", "pkcs1v15")


@dataclass(frozen=True, slots=True)
class SignConfig:
    """Sign the exact body bytes sent with the partner account's RSA key (``proxy.signing``)."""

    private_key: Secret                       # PEM, PKCS#1 or PKCS#8; from env or a *_FILE
    scheme: str = "pss"                       # RSA-PSS SHA-256 max salt, or pkcs1v15
    header: str = "Signature"


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    """A 200 must carry ``header``, a signature over the raw body by the partner's key."""

    public_key: Secret                        # not secret, but kept out of dumps all the same
    scheme: str = "pss"                       # any PSS salt length, or pkcs1v15
    header: str = "Signature"


# The filter registry's names (proxy.filters.FILTERS; a test keeps the two equal) and a route's
# default chain, today's order: existing files without ``filters:`` keep working.
# body/sign/verify apply only to routes that configure them (their factory returns None otherwise).
FILTER_NAMES = ("validate", "body", "credentials", "sign", "error_rewrite", "verify")
DEFAULT_FILTERS = ("validate", "body", "credentials", "sign", "error_rewrite", "verify")


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    path: str
    upstream: UpstreamRef
    methods: tuple[str, ...] = ("GET",)
    require: RequireConfig = RequireConfig()
    filters: tuple[str, ...] = DEFAULT_FILTERS
    body: BodyConfig | None = None
    sign: SignConfig | None = None
    verify: VerifyConfig | None = None


@dataclass(frozen=True, slots=True)
class SinkConfig:
    url: Secret                          # a Slack webhook URL is itself a credential
    api_key: Secret = Secret("")

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True, slots=True)
class NotificationsConfig:
    dedup_window: Duration = 60.0
    timeout: Duration = 5.0
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
class TracingConfig:
    """The ``tracing:`` block: what the ``OTEL_*`` variables do not cover (they say where spans go
    and which are kept; see ``proxy.otel.config``). Every field has its default here, and only here."""

    enabled: bool = True              # false turns tracing off even when an endpoint is set
    max_queue_size: int = 2048        # ended spans waiting for export; past it spans are dropped (counted)
    max_export_batch_size: int = 512  # spans per OTLP request
    schedule_delay: Duration = 1.0    # between exports when the batch is not full
    export_timeout: Duration = 5.0    # one OTLP request, retries included
    shutdown_timeout: Duration = 2.0  # how long a shutdown (or a reload's swap) waits for the last export


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """The ``listener:`` block: the data listener's safety limits, what a client may send and how long
    it may take (``proxy.h1``, where it is ``H1Limits``). Sizes are bytes; defaults in the spirit of
    nginx's and Envoy's: a few KiB per line, about a hundred headers, seconds for a head."""

    max_request_line: int = 8190        # target bytes; over it: 414 (the contract allows 4xx before the envelope)
    max_field_size: int = 8190          # one header line (name + value); over it: 431
    max_headers: int = 100              # header lines; over it: 431
    max_head_bytes: int = 64 * 1024     # the whole head, counted as bytes arrive (a dripping client too): 431
    max_body_buffer: int = 1024 * 1024  # body bytes buffered per request; the route's own limit is smaller (413)
    max_pipelined: int = 16             # parsed requests waiting behind the one in flight; more: stop reading
    header_timeout: Duration = 10.0     # first byte of a request to the end of its head; then 408 and close
    body_timeout: Duration = 30.0       # end of the head to the end of the body; then close
    keepalive_timeout: Duration = 60.0  # an idle keep-alive connection is closed after this
    linger_timeout: Duration = 2.0      # after an early answer (413, 405 on a body), discard the rest this long
    write_buffer_high: int = 64 * 1024  # transport write buffer above this: stop reading (the client reads slowly)
    write_buffer_low: int = 16 * 1024   # ...resume below this


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: ListenAddress = ListenAddress("127.0.0.1", 8080)
    admin: AdminConfig = AdminConfig(ListenAddress("0.0.0.0", 9901))
    token_cache: TokenCacheConfig = TokenCacheConfig(Secret(""))
    credentials: Mapping[str, CredentialsConfig] = field(default_factory=dict)
    clusters: Mapping[str, ClusterConfig] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    notifications: NotificationsConfig = NotificationsConfig()
    log: LogConfig = LogConfig()
    drain_timeout: Duration = 5.0
    tracing: TracingConfig = TracingConfig()
    listener: ListenerConfig = ListenerConfig()
