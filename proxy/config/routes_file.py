"""routes.yaml as a whole: listeners (and the data listener's limits), token cache, credentials, clusters (breaker, retry, limits),
notifications, log, tracing and drain timeout around the ``routes[]`` entries (``route_entries``)."""

from __future__ import annotations

from proxy.config.models import (
    AdminConfig,
    BreakerConfig,
    ClusterConfig,
    CredentialsConfig,
    ListenerConfig,
    LogConfig,
    NotificationsConfig,
    ProxyConfig,
    RetryConfig,
    RouteConfig,
    Secret,
    SinkConfig,
    TokenCacheConfig,
    TracingConfig,
    defaults,
)
from proxy.config.reader import Ctx, Section, http_url, listen_address, named
from proxy.config.redis_url import redis_url_problem
from proxy.config.route_entries import route_entry
from proxy.config.source import LineDict, LineList

RETRY_ON = ("connect_failure", "timeout", "5xx")
BREAKER_FAILURES = ("connect_failure", "timeout", "5xx")
CLIENTS = ("http11", "aiohttp")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _credentials(ctx: Ctx, name: str, s: Section) -> CredentialsConfig:
    d = defaults(CredentialsConfig)
    ctype = s.string("type", d["type"])
    if ctype != d["type"]:
        ctx.error(s.line_of("type"), s.key_path("type"), f"{ctype!r} is not supported; use {d['type']}")
    cfg = CredentialsConfig(
        name=name,
        type=ctype,
        token_url=http_url(s, "token_url", required=True),
        client_id=s.string("client_id", required=True),
        client_secret=Secret(s.string("client_secret", required=True)),
        refresh_before=s.duration("refresh_before", d["refresh_before"]),
        timeout=s.duration("timeout", d["timeout"]),
        scope=s.string("scope") or d["scope"],
    )
    s.finish()
    return cfg


def _retry_on(ctx: Ctx, rs: Section, default: tuple[str, ...]) -> tuple[str, ...]:
    """``retry_on`` (Envoy's word). The old ``on`` still loads, with a warning: under YAML 1.1 (PyYAML
    dumps, Helm's toYaml, yq, older Go libraries) the key ``on`` turns into the boolean true."""
    new = rs.string_list("retry_on", RETRY_ON)
    if rs.has("on"):
        old = rs.string_list("on", RETRY_ON)
        if new is not None:
            ctx.error(rs.line_of("on"), rs.key_path("on"), "both on and retry_on are set; keep retry_on only")
        else:
            ctx.warn(rs.line_of("on"), rs.key_path("on"), "is the old name of retry_on (YAML 1.1 tools turn the key on into true); write retry_on instead")
            new = old
    return new or default


def _cluster(ctx: Ctx, name: str, s: Section) -> ClusterConfig:
    d = defaults(ClusterConfig)
    cb = s.section("circuit_breaker")
    db = defaults(BreakerConfig)
    breaker = BreakerConfig(
        fail_max=cb.integer("fail_max", db["fail_max"], minimum=1),
        reset_timeout=cb.duration("reset_timeout", db["reset_timeout"]),
        half_open_max_calls=cb.integer("half_open_max_calls", db["half_open_max_calls"], minimum=1),
        failures=cb.string_list("failures", BREAKER_FAILURES) or db["failures"],
    )
    cb.finish()
    rs = s.section("retry")
    dr = defaults(RetryConfig)
    retry = RetryConfig(
        attempts=rs.integer("attempts", dr["attempts"], minimum=0),
        retry_on=_retry_on(ctx, rs, dr["retry_on"]),
        backoff_base=rs.duration("backoff_base", dr["backoff_base"]),
        backoff_max=rs.duration("backoff_max", dr["backoff_max"]),
        budget_ratio=rs.number("budget_ratio", dr["budget_ratio"]),
        budget_min_per_second=rs.number("budget_min_per_second", dr["budget_min_per_second"]),
    )
    rs.finish()
    base_url = http_url(s, "base_url", required=True).rstrip("/")
    cfg = ClusterConfig(
        name=name,
        base_url=base_url,
        credentials=s.string("credentials") or d["credentials"],
        errors=s.string("errors", required=True),
        timeout=s.duration("timeout", d["timeout"]),
        connect_timeout=s.duration("connect_timeout", d["connect_timeout"]),
        max_connections=s.integer("max_connections", d["max_connections"], minimum=1),
        max_pending_requests=s.integer("max_pending_requests", d["max_pending_requests"], minimum=1),
        pending_timeout=s.duration("pending_timeout", d["pending_timeout"]),
        max_requests=s.integer("max_requests", d["max_requests"], minimum=1),
        idle_timeout=s.duration("idle_timeout", d["idle_timeout"]),
        max_connection_duration=s.duration("max_connection_duration", d["max_connection_duration"]),
        circuit_breaker=breaker,
        retry=retry,
        max_response_bytes=s.integer("max_response_bytes", d["max_response_bytes"], minimum=1024),
        client=s.string("client", d["client"]) or d["client"],
    )
    for key in ("pending_timeout", "idle_timeout"):
        if getattr(cfg, key) <= 0:
            ctx.error(s.line_of(key), s.key_path(key), f"must be a positive duration such as 5s or 500ms, not {getattr(cfg, key):g}s")
    if cfg.client not in CLIENTS:
        ctx.error(s.line_of("client"), s.key_path("client"), f"{cfg.client!r} is not one of {', '.join(CLIENTS)}")
    s.finish()
    return cfg


def _sink(s: Section, url_key: str, *, keyed: bool = True) -> SinkConfig:
    url = http_url(s, url_key)
    key = Secret(s.string("api_key")) if keyed else Secret("")
    s.finish()
    # A sink needs both parts where the API needs a key; half-configured means off.
    if not url or (keyed and not key):
        return SinkConfig(Secret(""))
    return SinkConfig(url=Secret(url), api_key=key)


def _notifications(s: Section) -> NotificationsConfig:
    d = defaults(NotificationsConfig)
    slack = _sink(s.section("slack"), "webhook_url", keyed=False)
    datadog = _sink(s.section("datadog"), "api_url")
    newrelic = _sink(s.section("newrelic"), "api_url")
    cfg = NotificationsConfig(
        dedup_window=s.duration("dedup_window", d["dedup_window"]),
        timeout=s.duration("timeout", d["timeout"]),
        queue_size=s.integer("queue_size", d["queue_size"], minimum=1),
        token_failure_threshold=s.integer("token_failure_threshold", d["token_failure_threshold"], minimum=1),
        slack=slack,
        datadog=datadog,
        newrelic=newrelic,
    )
    s.finish()
    return cfg


def _log(s: Section) -> LogConfig:
    d = defaults(LogConfig)
    cfg = LogConfig(
        level=s.string("level", d["level"]).lower(),
        capture_bodies=s.boolean("capture_bodies", d["capture_bodies"]),
        max_body_bytes=s.integer("max_body_bytes", d["max_body_bytes"], minimum=0),
        redact_fields=s.string_list("redact_fields") or d["redact_fields"],
    )
    if cfg.level not in LOG_LEVELS:
        s.ctx.error(s.line_of("level"), s.key_path("level"), f"{cfg.level!r} is not one of {', '.join(LOG_LEVELS)}")
    s.finish()
    return cfg


def _tracing(s: Section) -> TracingConfig:
    """The ``tracing:`` block; where spans go and which are kept come from ``OTEL_*`` (``proxy.otel``)."""
    d = defaults(TracingConfig)
    cfg = TracingConfig(
        enabled=s.boolean("enabled", d["enabled"]),
        max_queue_size=s.integer("max_queue_size", d["max_queue_size"], minimum=1),
        max_export_batch_size=s.integer("max_export_batch_size", d["max_export_batch_size"], minimum=1),
        schedule_delay=s.duration("schedule_delay", d["schedule_delay"]),
        export_timeout=s.duration("export_timeout", d["export_timeout"]),
        shutdown_timeout=s.duration("shutdown_timeout", d["shutdown_timeout"]),
    )
    for key in ("schedule_delay", "export_timeout", "shutdown_timeout"):
        if getattr(cfg, key) <= 0:
            s.ctx.error(s.line_of(key), s.key_path(key), f"must be more than 0, not {getattr(cfg, key):g}s; write e.g. 500ms or 5s")
    if cfg.max_export_batch_size > cfg.max_queue_size:
        key = "max_export_batch_size" if s.has("max_export_batch_size") else "max_queue_size"
        s.ctx.error(
            s.line_of(key), s.key_path(key),
            f"{cfg.max_export_batch_size} is above max_queue_size {cfg.max_queue_size}; lower it or raise max_queue_size",
        )
    s.finish()
    return cfg


LISTENER_SIZES = (
    "max_request_line", "max_field_size", "max_headers", "max_head_bytes", "max_body_buffer",
    "max_pipelined", "write_buffer_high", "write_buffer_low",
)
LISTENER_TIMEOUTS = ("header_timeout", "body_timeout", "keepalive_timeout", "linger_timeout")


def _listener(s: Section) -> ListenerConfig:
    """The ``listener:`` block: the data listener's limits (``proxy.h1``); a missing key keeps its default."""
    d = defaults(ListenerConfig)
    values: dict[str, int | float] = {key: s.integer(key, d[key], minimum=1) for key in LISTENER_SIZES}
    for key in LISTENER_TIMEOUTS:
        values[key] = s.duration(key, d[key])
        if values[key] <= 0:
            s.ctx.error(s.line_of(key), s.key_path(key), f"must be more than 0, not {values[key]:g}s; write e.g. 500ms or 10s")
            values[key] = d[key]
    cfg = ListenerConfig(**values)  # type: ignore[arg-type]
    pairs = (
        ("write_buffer_low", "write_buffer_high", cfg.write_buffer_low >= cfg.write_buffer_high, "not below"),
        ("max_field_size", "max_head_bytes", cfg.max_field_size > cfg.max_head_bytes, "above"),
        ("max_request_line", "max_head_bytes", cfg.max_request_line > cfg.max_head_bytes, "above"),
    )
    for low, high, wrong, how in pairs:
        if wrong:
            key = high if s.has(high) and not s.has(low) else low  # the line of the key that was written
            s.ctx.error(
                s.line_of(key), s.key_path(key),
                f"{low} {getattr(cfg, low)} is {how} {high} {getattr(cfg, high)}; lower {low} or raise {high}",
            )
    s.finish()
    return cfg


def parse_routes(ctx: Ctx, data: LineDict) -> ProxyConfig | None:
    d = defaults(ProxyConfig)
    top = Section(ctx, data, "", 1)
    listen = listen_address(top, "listen", str(d["listen"]))
    admin_s = top.section("admin")
    admin = AdminConfig(listen=listen_address(admin_s, "listen", str(d["admin"].listen)))
    admin_s.finish()
    tc = top.section("token_cache")
    dt = defaults(TokenCacheConfig)
    redis_url = tc.string("redis_url")
    redis_problem = redis_url_problem(redis_url)  # scheme, hosts, Sentinel service, TLS files; never the password
    if redis_problem:
        ctx.error(tc.line_of("redis_url"), tc.key_path("redis_url"), redis_problem)
    token_cache = TokenCacheConfig(
        redis_url=Secret(redis_url),
        key_prefix=tc.string("key_prefix", dt["key_prefix"]) or dt["key_prefix"],
        socket_timeout=tc.duration("socket_timeout", dt["socket_timeout"]),
        connect_timeout=tc.duration("connect_timeout", dt["connect_timeout"]),
        lock_ttl=tc.duration("lock_ttl", dt["lock_ttl"]),
        lock_wait=tc.duration("lock_wait", dt["lock_wait"]),
    )
    tc.finish()
    credentials = {name: _credentials(ctx, name, s) for name, s in named(ctx, top, "credentials")}
    cluster_secs = named(ctx, top, "clusters")
    clusters = {name: _cluster(ctx, name, s) for name, s in cluster_secs}
    for (name, s) in cluster_secs:
        ctx.lines[f"clusters.{name}.errors"] = s.line_of("errors")
        cref = clusters[name].credentials
        if cref is not None and cref not in credentials:
            ctx.error(s.line_of("credentials"), s.key_path("credentials"), f"no credentials entry named {cref!r}; define credentials.{cref} or use one of: {', '.join(credentials) or 'none'}")
    routes_raw = top.raw("routes")
    routes: list[RouteConfig] = []
    if not isinstance(routes_raw, list) or not routes_raw:
        ctx.error(top.line_of("routes"), "routes", "must be a non-empty list of routes")
    else:
        seen: dict[str, int] = {}
        paths: dict[str, int] = {}
        for i, item in enumerate(routes_raw):
            line = routes_raw.line_of(i) if isinstance(routes_raw, LineList) else top.line_of("routes")
            rs = Section(ctx, item, f"routes[{i}]", line)
            route = route_entry(ctx, i, rs)
            if route is None:
                continue
            if route.name in seen:
                ctx.error(line, f"routes[{i}].name", f"{route.name!r} is already used by the route at line {seen[route.name]}; names must be unique")
            seen[route.name] = line
            if route.path in paths:
                ctx.error(line, f"routes[{i}].match.path", f"{route.path} is already matched by the route at line {paths[route.path]}; give each path one route")
            paths[route.path] = line
            if route.upstream.cluster and route.upstream.cluster not in clusters:
                ctx.error(rs.section("upstream").line_of("cluster"), f"routes[{i}].upstream.cluster", f"no cluster named {route.upstream.cluster!r}; define clusters.{route.upstream.cluster} or use one of: {', '.join(clusters) or 'none'}")
            routes.append(route)
    notifications = _notifications(top.section("notifications"))
    log = _log(top.section("log"))
    drain = top.duration("drain_timeout", d["drain_timeout"])
    tracing = _tracing(top.section("tracing"))
    listener = _listener(top.section("listener"))
    top.finish()
    return ProxyConfig(
        listen=listen,
        admin=admin,
        token_cache=token_cache,
        credentials=credentials,
        clusters=clusters,
        routes=tuple(routes),
        notifications=notifications,
        log=log,
        drain_timeout=drain,
        tracing=tracing,
        listener=listener,
    )
