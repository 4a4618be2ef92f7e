"""What a filter factory gets to build one route's filter: that route's config and the compiled,
long-lived pieces it may use. Factories read it once, at compile time; never per request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from proxy.classify import Classifier
from proxy.config.models import RouteConfig
from proxy.metrics import Metrics
from proxy.notify import Event
from proxy.oauth import TokenProvider
from proxy.upstream.cluster import Cluster


@dataclass(frozen=True)
class FilterContext:
    route: RouteConfig
    cluster: Cluster
    provider: TokenProvider | None       # the cluster's credentials, if it has any
    classify: Classifier                 # the cluster's error table, as a verdict per answer
    metrics: Metrics
    notify: Callable[[Event], None]      # reaches the current notifier (it may change on reload)
