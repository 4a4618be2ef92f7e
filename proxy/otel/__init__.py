"""OpenTelemetry tracing for the sidecar: off unless an OTLP endpoint is set, never global.

``Resources.tracing`` builds one per app from ``os.environ`` and ``ProxyConfig.tracing`` (the
``tracing:`` block, ``TracingConfig``) and keeps it across reloads that leave the settings alone;
``Tracing.disabled()`` is the no-op. See ``proxy.otel.tracer`` for the request-path
calls, ``proxy.otel.attributes`` for what a span may carry, ``proxy.otel.processor`` for how
export stays off the loop and how losses are counted.
"""

from proxy.otel.attributes import ALLOWED, clean
from proxy.otel.config import TRACING_KEYS, Settings, TracingConfig, TracingConfigError, tracing_config_from
from proxy.otel.processor import DROP_REASONS, BoundedExportProcessor
from proxy.otel.tracer import Span, Tracing, TracingRef, package_version, parse_traceparent

__all__ = [
    "ALLOWED",
    "DROP_REASONS",
    "TRACING_KEYS",
    "BoundedExportProcessor",
    "Settings",
    "Span",
    "Tracing",
    "TracingRef",
    "TracingConfig",
    "TracingConfigError",
    "clean",
    "package_version",
    "parse_traceparent",
    "tracing_config_from",
]
