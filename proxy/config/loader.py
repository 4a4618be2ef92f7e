"""Turn routes.yaml and errors.yaml into one compiled, frozen ``LoadedConfig`` or a list of problems.

Every problem reads ``file:line: key.path: what is wrong; how to fix it``. The loader collects all
of them before failing, so one ``check`` run shows everything an operator must fix.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from proxy.config.durations import parse_duration, show
from proxy.config.errors_table import ErrorRule, ErrorTable, overlap_problems, parse_range
from proxy.config.models import (
    AdminConfig,
    BreakerConfig,
    ClusterConfig,
    DEFAULT_FILTERS,
    FILTER_NAMES,
    SIGN_SCHEMES,
    BodyConfig,
    SignConfig,
    VerifyConfig,
    CredentialsConfig,
    ListenAddress,
    LogConfig,
    NotificationsConfig,
    ProxyConfig,
    RequireConfig,
    RetryConfig,
    RouteConfig,
    Secret,
    SinkConfig,
    TokenCacheConfig,
    TracingConfig,
    UpstreamRef,
    defaults,
)
from proxy.config.redis_url import redis_url_problem
from proxy.config.templates import parse_template
from proxy.config.source import EnvResolver, LineDict, LineList, YamlError, load_yaml
from proxy.errors import ConfigError
from proxy.jsonbody import SchemaProblem, compile_schema
from proxy.signing import key_problem

T = TypeVar("T")

DEFAULT_ROUTES = Path("config/routes.yaml")
DEFAULT_ERRORS = Path("config/errors.yaml")

HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
RETRY_ON = ("connect_failure", "timeout", "5xx")
BREAKER_FAILURES = ("connect_failure", "timeout", "5xx")
CLIENTS = ("http11", "aiohttp")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class LoadedConfig:
    proxy: ProxyConfig
    errors: Mapping[str, ErrorTable]
    notes: tuple[str, ...] = ()          # non-fatal remarks (e.g. env vars that serve will need)
    routes_path: str = ""
    errors_path: str = ""


@dataclass
class _Ctx:
    file: str
    env: EnvResolver
    problems: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # cross-file references, for their line

    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)

    def error(self, line: int, path: str, message: str) -> None:
        self.problems.append(f"{self.file}:{line}: {path}: {message}" if path else f"{self.file}:{line}: {message}")

    def info(self, line: int, path: str, message: str) -> None:
        """Worth saying in ``check`` (a key that loads), not a problem."""
        self.infos.append(f"{self.file}:{line}: {path}: {message}")

    def warn(self, line: int, path: str, message: str) -> None:
        """Loads, but should be changed (an old key): ``check`` prints it, ``serve`` logs it."""
        self.warnings.append(f"{self.file}:{line}: {path}: {message}")


class _Section:
    """Reads one YAML mapping: typed getters, env expansion, and unknown-key detection."""

    def __init__(self, ctx: _Ctx, data: Any, path: str, line: int) -> None:
        self.ctx, self.path = ctx, path
        if isinstance(data, LineDict):
            self.data: LineDict = data
            self.line = data.line or line
        else:
            self.data = LineDict()
            self.data.line, self.data.key_lines = line, {}
            self.line = line
            if data is not None:
                ctx.error(line, path, f"must be a mapping of keys, not {type(data).__name__}")
        self.used: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: str) -> int:
        return self.data.line_of(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        value = self.data.get(key, default)
        if isinstance(value, str):
            value = self.ctx.env.expand(value, f"{self.ctx.file}:{self.line_of(key)}: {self.key_path(key)}")
        return value

    def get(self, key: str, kind: Callable[[Any], T], default: T, what: str) -> T:
        value = self.raw(key)
        if key not in self.data or value is None:
            return default
        try:
            return kind(value)
        except (TypeError, ValueError) as exc:
            self.ctx.error(self.line_of(key), self.key_path(key), f"{exc if str(exc) else show(value)}; expected {what}")
            return default

    def string(self, key: str, default: str = "", *, required: bool = False) -> str:
        if required and key not in self.data:
            self.ctx.error(self.line, self.key_path(key), "is required; add it")
        value = self.raw(key, default)
        if value is None:
            return default
        if isinstance(value, (dict, list)):
            self.ctx.error(self.line_of(key), self.key_path(key), "must be a string")
            return default
        return str(value)

    def duration(self, key: str, default: float) -> float:
        return self.get(key, parse_duration, default, "a duration such as 500ms, 30s or 10m")

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        def to_int(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ValueError(f"{show(v)} is not a whole number")
            n = int(v)
            if n < minimum:
                raise ValueError(f"{n} is below the minimum {minimum}")
            return n

        return self.get(key, to_int, default, f"a whole number >= {minimum}")

    def number(self, key: str, default: float) -> float:
        def to_float(v: Any) -> float:
            if isinstance(v, bool):
                raise ValueError(f"{show(v)} is not a number")
            return float(v)

        return self.get(key, to_float, default, "a number")

    def boolean(self, key: str, default: bool) -> bool:
        def to_bool(v: Any) -> bool:
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                return v.lower() in ("true", "yes", "1", "on")
            raise ValueError(f"{show(v)} is not true or false")

        return self.get(key, to_bool, default, "true or false")

    def string_list(self, key: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
        value = self.raw(key)
        if key not in self.data or value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.ctx.error(self.line_of(key), self.key_path(key), "must be a list, e.g. [a, b]")
            return None
        out = []
        for i, item in enumerate(value):
            line = value.line_of(i) if isinstance(value, LineList) else self.line_of(key)
            if isinstance(item, (dict, list)) or item is None:
                self.ctx.error(line, f"{self.key_path(key)}[{i}]", "must be a plain value")
                continue
            text = self.ctx.env.expand(str(item), f"{self.ctx.file}:{line}: {self.key_path(key)}")
            if choices is not None and text not in choices:
                self.ctx.error(line, f"{self.key_path(key)}[{i}]", f"{text!r} is not one of {', '.join(choices)}")
                continue
            out.append(text)
        return tuple(out)

    def section(self, key: str) -> _Section:
        self.used.add(key)
        return _Section(self.ctx, self.data.get(key), self.key_path(key), self.line_of(key))

    def finish(self, known: tuple[str, ...] | None = None) -> None:
        """Unknown keys are errors: a typo must not silently become a default."""
        allowed = set(known) if known is not None else self.used
        for key in self.data:
            if key not in allowed:
                hint = difflib.get_close_matches(key, sorted(allowed), n=1)
                fix = f"did you mean {hint[0]!r}?" if hint else f"remove it (known keys: {', '.join(sorted(allowed)) or 'none'})"
                self.ctx.error(self.line_of(key), self.key_path(key), f"unknown key; {fix}")


def _listen(s: _Section, key: str, default: str) -> ListenAddress:
    text = s.string(key, default) or default
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not (0 <= int(port) <= 65535):
        s.ctx.error(s.line_of(key), s.key_path(key), f"{text!r} is not host:port; write e.g. 127.0.0.1:8080")
        return ListenAddress("127.0.0.1", 8080)
    return ListenAddress(host.strip("[]") or "0.0.0.0", int(port))


def _url(s: _Section, key: str, default: str = "", *, required: bool = False) -> str:
    value = s.string(key, default, required=required)
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            s.ctx.error(s.line_of(key), s.key_path(key), f"{value!r} is not an http(s) URL; write e.g. https://host/path")
    return value


def _credentials(ctx: _Ctx, name: str, s: _Section) -> CredentialsConfig:
    d = defaults(CredentialsConfig)
    ctype = s.string("type", d["type"])
    if ctype != d["type"]:
        ctx.error(s.line_of("type"), s.key_path("type"), f"{ctype!r} is not supported; use {d['type']}")
    cfg = CredentialsConfig(
        name=name,
        type=ctype,
        token_url=_url(s, "token_url", required=True),
        client_id=s.string("client_id", required=True),
        client_secret=Secret(s.string("client_secret", required=True)),
        refresh_before=s.duration("refresh_before", d["refresh_before"]),
        timeout=s.duration("timeout", d["timeout"]),
        scope=s.string("scope") or d["scope"],
    )
    s.finish()
    return cfg


def _retry_on(ctx: _Ctx, rs: _Section, default: tuple[str, ...]) -> tuple[str, ...]:
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


def _cluster(ctx: _Ctx, name: str, s: _Section) -> ClusterConfig:
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
    base_url = _url(s, "base_url", required=True).rstrip("/")
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


def _route(ctx: _Ctx, i: int, s: _Section) -> RouteConfig | None:
    name = s.string("name", required=True) or f"route{i}"
    m = s.section("match")
    path = m.string("path", required=True)
    match_params: tuple[str, ...] = ()
    if path and not path.startswith("/"):
        ctx.error(m.line_of("path"), m.key_path("path"), f"{path!r} must start with /")
    elif path:
        try:
            match_params = parse_template(path).names
        except ValueError as exc:
            ctx.error(m.line_of("path"), m.key_path("path"), str(exc))
    methods = tuple(x.upper() for x in (m.string_list("methods") or defaults(RouteConfig)["methods"]))
    for meth in methods:
        if meth not in HTTP_METHODS:
            ctx.error(m.line_of("methods"), m.key_path("methods"), f"{meth!r} is not one of {', '.join(HTTP_METHODS)}")
    m.finish()
    rq = s.section("require")
    require = RequireConfig(content_type=rq.string("content_type") or None, headers=rq.string_list("headers") or ())
    rq.finish()
    upstream = _upstream(ctx, s.section("upstream"), match_params)
    body = _body(ctx, s.section("body")) if s.has("body") else None
    sign = _keyed(ctx, s.section("sign"), SignConfig, "private_key") if s.has("sign") else None
    verify = _keyed(ctx, s.section("verify"), VerifyConfig, "public_key") if s.has("verify") else None
    filters = s.string_list("filters", FILTER_NAMES)
    if filters is not None:
        for dup in sorted({f for f in filters if filters.count(f) > 1}):
            ctx.error(s.line_of("filters"), s.key_path("filters"), f"{dup!r} is listed twice; list each filter once")
        for block, configured in (("body", body), ("sign", sign), ("verify", verify)):
            if block in filters and configured is None:
                ctx.error(s.line_of("filters"), s.key_path("filters"), f"lists {block} but the route has no {block}: block; add one or remove {block}")
            elif configured is not None and block not in filters:
                ctx.error(s.line_of(block), s.key_path(block), f"is configured but filters does not list {block}; add it to filters")
    s.finish()
    return RouteConfig(
        name=name, path=path, methods=methods, require=require, upstream=upstream,
        filters=filters if filters is not None else DEFAULT_FILTERS, body=body, sign=sign, verify=verify,
    )


def _upstream(ctx: _Ctx, u: _Section, match_params: tuple[str, ...]) -> UpstreamRef:
    d = defaults(UpstreamRef)
    upath = u.string("path", required=True)
    if upath and not upath.startswith("/"):
        ctx.error(u.line_of("path"), u.key_path("path"), f"{upath!r} must start with /")
    elif upath:
        try:
            for name in parse_template(upath).names:
                if name not in match_params:
                    have = ", ".join("{" + p + "}" for p in match_params) or "none"
                    ctx.error(u.line_of("path"), u.key_path("path"), f"names {{{name}}}, which match.path does not have (it has: {have}); use one of those")
        except ValueError as exc:
            ctx.error(u.line_of("path"), u.key_path("path"), str(exc))
    hs = u.section("headers")
    headers = []
    for hname in hs.data:
        value = hs.string(hname)
        if not HEADER_NAME_RE.match(hname) or any(c in value for c in "\r\n\x00"):
            ctx.error(hs.line_of(hname), hs.key_path(hname), "is not a valid header name and value; write e.g. Accept: application/json")
        headers.append((hname, value))
    pass_back = u.string_list("pass_back") or d["pass_back"]
    for hname in pass_back:
        if not HEADER_NAME_RE.match(hname):
            ctx.error(u.line_of("pass_back"), u.key_path("pass_back"), f"{hname!r} is not a header name")
    ref = UpstreamRef(
        cluster=u.string("cluster", required=True),
        path=upath,
        query=u.string_list("query") or d["query"],
        headers=tuple(headers),
        date=u.boolean("date", d["date"]),
        pass_back=pass_back,
    )
    u.finish()
    return ref


def _plain(value: Any) -> Any:
    """YAML's line-tracking containers as plain dicts and lists (a JSON Schema is data, not config)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _body(ctx: _Ctx, b: _Section) -> BodyConfig:
    d = defaults(BodyConfig)
    schema = b.data.get("schema")
    b.used.add("schema")
    plain = None
    if schema is not None:
        if not isinstance(schema, dict):
            ctx.error(b.line_of("schema"), b.key_path("schema"), "must be a JSON Schema object, e.g. {type: object, required: [data]}")
        else:
            plain = _plain(schema)
            try:
                compile_schema(plain)
            except SchemaProblem as exc:
                ctx.error(b.line_of("schema"), b.key_path("schema"), f"is not a valid JSON Schema: {exc}")
    cfg = BodyConfig(max_bytes=b.integer("max_bytes", d["max_bytes"], minimum=1), schema=plain)
    b.finish()
    return cfg


K = TypeVar("K", SignConfig, VerifyConfig)


def _keyed(ctx: _Ctx, k: _Section, cls: type[K], key_field: str) -> K:
    d = defaults(cls)
    pem = k.string(key_field, required=True)
    scheme = k.string("scheme", d["scheme"]) or d["scheme"]
    if scheme not in SIGN_SCHEMES:
        ctx.error(k.line_of("scheme"), k.key_path("scheme"), f"{scheme!r} is not one of {', '.join(SIGN_SCHEMES)}")
    header = k.string("header", d["header"]) or d["header"]
    if not HEADER_NAME_RE.match(header):
        ctx.error(k.line_of("header"), k.key_path("header"), f"{header!r} is not a header name")
    if pem:
        problem, summary = key_problem(pem, private=key_field == "private_key")
        if problem:
            ctx.error(k.line_of(key_field), k.key_path(key_field), problem)
        else:
            ctx.info(k.line_of(key_field), k.key_path(key_field), summary)
    k.finish()
    return cls(Secret(pem), scheme=scheme, header=header)  # type: ignore[call-arg]


def _sink(s: _Section, url_key: str, *, keyed: bool = True) -> SinkConfig:
    url = _url(s, url_key)
    key = Secret(s.string("api_key")) if keyed else Secret("")
    s.finish()
    # A sink needs both parts where the API needs a key; half-configured means off.
    if not url or (keyed and not key):
        return SinkConfig(Secret(""))
    return SinkConfig(url=Secret(url), api_key=key)


def _notifications(s: _Section) -> NotificationsConfig:
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


def _log(s: _Section) -> LogConfig:
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


def _tracing(s: _Section) -> TracingConfig:
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


def _named(ctx: _Ctx, top: _Section, key: str) -> list[tuple[str, _Section]]:
    sec = top.section(key)
    out = []
    for name in sec.data:
        sec.used.add(name)
        out.append((name, sec.section(name)))
    return out


def _parse_routes(ctx: _Ctx, data: LineDict) -> ProxyConfig | None:
    d = defaults(ProxyConfig)
    top = _Section(ctx, data, "", 1)
    listen = _listen(top, "listen", str(d["listen"]))
    admin_s = top.section("admin")
    admin = AdminConfig(listen=_listen(admin_s, "listen", str(d["admin"].listen)))
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
    credentials = {name: _credentials(ctx, name, s) for name, s in _named(ctx, top, "credentials")}
    cluster_secs = _named(ctx, top, "clusters")
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
            rs = _Section(ctx, item, f"routes[{i}]", line)
            route = _route(ctx, i, rs)
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
    )


def _messages(ctx: _Ctx, s: _Section, key: str, default_language: str) -> dict[str, str]:
    msg = s.section(key)
    out: dict[str, str] = {}
    for lang in msg.data:
        out[lang] = msg.string(lang)
    if not out:
        ctx.error(s.line_of(key) if s.has(key) else s.line, s.key_path(key), f"is required; add e.g. message: {{{default_language}: \"...\"}}")
    elif default_language not in out:
        ctx.error(s.line_of(key), s.key_path(key), f"has no {default_language!r} text (the table's default_language); add it")
    return out


def _rule(ctx: _Ctx, s: _Section, default_language: str, *, is_default: bool) -> ErrorRule:
    exact: list[str] = []
    ranges = []
    codes = s.string_list("codes")
    statuses: list[int] = []
    if is_default:
        if codes is not None or s.has("http_status"):
            ctx.error(s.line, s.path, "the default matches everything; remove codes/http_status from it")
    else:
        for c in codes or ():
            try:
                r = parse_range(c)
            except ValueError as exc:
                ctx.error(s.line_of("codes"), s.key_path("codes"), str(exc))
                continue
            if r is None:
                exact.append(c)
            else:
                ranges.append(r)
        for st in s.string_list("http_status") or ():
            if not (st.isascii() and st.isdigit()) or not 100 <= int(st) <= 599:
                ctx.error(s.line_of("http_status"), s.key_path("http_status"), f"{st!r} is not an HTTP status (100-599)")
            else:
                statuses.append(int(st))
        if not exact and not ranges and not statuses:
            ctx.error(s.line, s.path, "a rule needs codes: [...] or http_status: [...]; add one")
    dr = defaults(ErrorRule)
    status = s.integer("status", dr["status"], minimum=100)
    if not 400 <= status <= 599:
        ctx.error(s.line_of("status"), s.key_path("status"), f"{status} is not an error status; use 400-599")
    rule = ErrorRule(
        type=s.string("type", required=True),
        code=s.string("code", required=True),
        status=status,
        messages=_messages(ctx, s, "message", default_language),
        exact=tuple(exact),
        ranges=tuple(ranges),
        http_status=tuple(statuses),
        invalidate_token=s.boolean("invalidate_token", dr["invalidate_token"]),
        retry=s.boolean("retry", dr["retry"]),
        notify=s.boolean("notify", dr["notify"]),
        line=s.line,
        is_default=is_default,
    )
    if rule.retry and not rule.invalidate_token:
        ctx.error(s.line_of("retry"), s.key_path("retry"), "retry: true only applies with invalidate_token: true (a retry with a fresh token); add invalidate_token or remove retry")
    s.finish()
    return rule


def _parse_errors(ctx: _Ctx, data: LineDict) -> dict[str, ErrorTable]:
    tables: dict[str, ErrorTable] = {}
    for name in data:
        s = _Section(ctx, data[name], name, data.line_of(name))
        lang = s.string("default_language", "en") or "en"
        rules_raw = s.raw("rules")
        rules: list[ErrorRule] = []
        if rules_raw is not None and not isinstance(rules_raw, list):
            ctx.error(s.line_of("rules"), s.key_path("rules"), "must be a list of rules")
        for i, item in enumerate(rules_raw or ()):
            line = rules_raw.line_of(i) if isinstance(rules_raw, LineList) else s.line_of("rules")
            rules.append(_rule(ctx, _Section(ctx, item, f"{name}.rules[{i}]", line), lang, is_default=False))
        if not s.has("default"):
            ctx.error(s.line, f"{name}.default", "is required: the answer for unknown codes; add default: {type: PartnerError, code: PARTNER_ERROR, status: 502, message: {en: ...}}")
        default = _rule(ctx, s.section("default"), lang, is_default=True)
        for line, problem in overlap_problems(tuple(rules)):
            ctx.error(line, f"{name}.rules", problem)
        s.finish()
        tables[name] = ErrorTable(name, lang, tuple(rules), default)
    if not tables:
        ctx.error(1, "", "no error table defined; add e.g. tokopedia: {rules: [...], default: {...}}")
    return tables


def load_config(
    routes_path: str | os.PathLike[str] = DEFAULT_ROUTES,
    errors_path: str | os.PathLike[str] = DEFAULT_ERRORS,
    *,
    env: Mapping[str, str] | None = None,
    strict_env: bool = True,
) -> LoadedConfig:
    """Load, validate and compile both files. Raises ``ConfigError`` listing every problem.

    ``strict_env=False`` (``check``) turns unset required variables into notes: CI and image builds
    validate the shipped files without the production secrets.
    """
    resolver = EnvResolver(dict(os.environ) if env is None else dict(env))
    problems: list[str] = []
    proxy_cfg: ProxyConfig | None = None
    tables: dict[str, ErrorTable] = {}
    rctx = _Ctx(str(routes_path), resolver)
    ectx = _Ctx(str(errors_path), resolver)
    try:
        proxy_cfg = _parse_routes(rctx, load_yaml(routes_path))
    except YamlError as exc:
        problems.append(str(exc))
    try:
        tables = _parse_errors(ectx, load_yaml(errors_path))
    except YamlError as exc:
        problems.append(str(exc))
    problems += rctx.problems + ectx.problems
    if proxy_cfg is not None:
        for cname, cluster in proxy_cfg.clusters.items():
            if tables and cluster.errors and cluster.errors not in tables:
                line = rctx.lines.get(f"clusters.{cname}.errors", 0)
                problems.append(f"{routes_path}:{line}: clusters.{cname}.errors: no table {cluster.errors!r} in {errors_path}; add it there or use one of: {', '.join(tables)}")
    for where, message in resolver.file_errors:
        problems.append(f"{where}: {message}")
    notes: list[str] = [f"warning: {w}" for w in rctx.warnings + ectx.warnings] + rctx.infos
    for var, where in resolver.missing:
        text = f"{where}: environment variable {var} is not set (nor {var}_FILE); set it, or write ${{{var}:-default}}"
        (problems if strict_env else notes).append(text)
    if problems:
        raise ConfigError(problems)
    assert proxy_cfg is not None
    return LoadedConfig(proxy_cfg, tables, tuple(notes), str(routes_path), str(errors_path))
