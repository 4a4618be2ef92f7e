"""Compile a loaded config into one immutable ``Runtime``: everything the config files decide.

Routes with their filter chains, the log policy, the notification settings, the drain timeout, the
tracer: all of it is one object, swapped in one assignment on reload, so a reload that reports
success has applied the whole config, and requests in flight finish on the Runtime they started
with. The long-lived objects it points at (clusters, providers, the tracer, the log writer) come
from ``Resources``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

from proxy.accesslog import AccessLog
from proxy.chain import build_chain
from proxy.classify import Classifier
from proxy.commlog import LogPolicy
from proxy.config import LoadedConfig
from proxy.config.models import ListenerConfig, NotificationsConfig
from proxy.config.templates import parse_template
from proxy.fastpath import FastRoute
from proxy.lane import LaneRoute, compile_lanes
from proxy.filters import FilterContext, build_filters
from proxy.oauth import TokenProvider
from proxy.otel import Tracing
from proxy.resources import Resources, Staged
from proxy.routing import RouteTable
from proxy.tracing import LanguagePicker
from proxy.types import CompiledRoute, Observer
from proxy.upstream.cluster import Cluster
from proxy.upstream.forwarder import Forwarder


@dataclass(frozen=True)
class Runtime:
    loaded: LoadedConfig
    routes: RouteTable
    clusters: Mapping[str, Cluster]
    providers: Mapping[str, TokenProvider]
    log: LogPolicy
    observers: tuple[Observer, ...]
    start_observers: tuple[Observer, ...]   # the subset that wants on_start (none at info level)
    local_language: LanguagePicker          # for requests no route matched
    notifications: NotificationsConfig
    drain_timeout: float
    limits: ListenerConfig                  # the h1 listener's (``H1Limits``): read once per new connection
    tracing: Tracing                        # a long-lived resource, replaced only when its settings change
    lanes: Mapping[bytes, LaneRoute] = field(default_factory=dict)  # exact targets done on bytes (proxy.lane)
    template_lanes: Mapping[str, LaneRoute] = field(default_factory=dict)  # template routes' lanes, by route name


def compile_runtime(loaded: LoadedConfig, resources: Resources, staged: Staged) -> Runtime:
    """Build a Runtime. New long-lived objects go into ``staged``: the caller commits it once the
    whole runtime is in place, or discards it (even when this raises half-way)."""
    cfg = loaded.proxy
    tracing = resources.tracing(cfg.tracing, staged)
    clusters = {name: resources.cluster(c, staged) for name, c in cfg.clusters.items()}
    providers = {
        name: resources.provider(c, cfg.token_cache, staged)
        for name, c in cfg.credentials.items()
        if any(cl.credentials == name for cl in cfg.clusters.values())
    }
    classifiers = {name: Classifier(table) for name, table in loaded.errors.items()}
    routes = []
    for r in cfg.routes:
        cluster = clusters[r.upstream.cluster]
        table = loaded.errors[cluster.config.errors]
        ctx = FilterContext(
            route=r,
            cluster=cluster,
            provider=providers.get(cluster.config.credentials) if cluster.config.credentials else None,
            classify=classifiers[cluster.config.errors],
            metrics=resources.metrics,
            notify=resources.hooks.partner_error,
        )
        template = parse_template(r.upstream.path)
        if template.is_exact:
            url, path_template = URL(cluster.config.base_url + r.upstream.path, encoded=False), None
        else:
            url = URL(cluster.config.base_url, encoded=False)
            path_template = url.raw_path.rstrip("/") + r.upstream.path
        pass_back = {h.lower() for h in r.upstream.pass_back}
        if r.verify is not None:
            pass_back.add(r.verify.header.lower())  # the verifier reads it; a valid one passes through
        forwarder = Forwarder(cluster, url, frozenset(pass_back), path_template, tracing=tracing)
        filters = build_filters(r.filters, ctx)
        routes.append(
            CompiledRoute(
                name=r.name,
                path=r.path,
                cluster=cluster.name,
                upstream_path=r.upstream.path,
                query=r.upstream.query,
                chain=build_chain(filters, forwarder),
                language=LanguagePicker(frozenset(table.languages()), table.default_language),
                set_headers=r.upstream.headers,
                date=r.upstream.date,
                fast=FastRoute.of(filters, forwarder),
            )
        )
    first = next(iter(loaded.errors.values()))
    policy = LogPolicy.of(
        level=cfg.log.level,
        redact_fields=cfg.log.redact_fields,
        capture_bodies=cfg.log.capture_bodies,
        max_body_bytes=cfg.log.max_body_bytes,
    )
    access = AccessLog(resources.commlog, policy)
    observers: tuple[Observer, ...] = (resources.request_metrics, access)
    lanes, template_lanes = compile_lanes(routes, observers, resources.request_metrics, access, tracing.enabled)
    runtime = Runtime(
        loaded=loaded,
        routes=RouteTable(routes),
        clusters=clusters,
        providers=providers,
        log=policy,
        observers=observers,
        start_observers=(access,) if access.debug else (),
        local_language=LanguagePicker(frozenset(first.languages()), first.default_language),
        notifications=cfg.notifications,
        drain_timeout=cfg.drain_timeout,
        limits=cfg.listener,
        tracing=tracing,
        lanes=lanes,
        template_lanes=template_lanes,
    )
    return runtime
