"""``Tracing``: one SERVER span per app request, one CLIENT span per partner attempt and token fetch.

Built per app (``Tracing.from_env(os.environ, cfg, metrics=...)``), never global: each instance
owns its ``TracerProvider``, its processor thread and its exporter, and nothing calls
``trace.set_tracer_provider``. When no OTLP endpoint is set ``enabled`` is false and the request
path checks that one attribute and does nothing else (``Tracing.disabled()`` is the no-op default
for constructors).

The request path, in order (see the module docs of ``proxy.otel`` for the exact lines)::

    span = tracing.server_span(route_template, method, traceparent=..., tracestate=..., path=..., attributes={...})
    ctx = tracing.activate(span)               # token fetches and hooks started from here see it
    c = tracing.client_span(span, name, attempt=n, attributes={...})
    headers["traceparent"] = c.traceparent     # carries the CLIENT span's id
    headers["tracestate"] = c.tracestate       # the incoming header, unchanged
    tracing.end(c, status_code=..., error_type=...)
    span.add_event("retry", {...})
    tracing.end(span, status_code=..., error_type=...); tracing.deactivate(ctx)

Every call is cheap and synchronous on the loop: starting a span draws random ids and reads the
clock; ending one appends it to a bounded deque (``BoundedExportProcessor``). Spans keep explicit
nanosecond timestamps when the caller has them (``start_ns``/``end_ns``). Attributes go through
the allow-list in ``proxy.otel.attributes``; events too. Exceptions are never recorded as events
(their text can hold URLs with credentials): ``error.type`` says what went wrong.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from proxy.tracing import MAX_TRACESTATE  # the one bound, shared with tracing-off propagation
from proxy.otel.attributes import clean, event_name
from proxy.otel.config import SamplerSpec, Settings, TracingConfig, settings_from
from proxy.otel.processor import BoundedExportProcessor

log = logging.getLogger("proxy.otel")

_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")

# The span of the request being handled, per asyncio task context (a request's handler task and
# the token-fetch task it starts, which copies its context). A context slot, not shared state:
# it holds nothing outside a request.
_CURRENT: contextvars.ContextVar[Span | None] = contextvars.ContextVar("partner_proxy_span", default=None)


def _sdk_resource() -> dict[str, str]:
    """The SDK's own resource attributes, spelled out: ``Resource.create()`` would also read
    ``OTEL_RESOURCE_ATTRIBUTES`` from ``os.environ``, and the env passed in is the only source here."""
    from importlib import metadata

    try:
        version = metadata.version("opentelemetry-sdk")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry", "telemetry.sdk.version": version}


def package_version() -> str:
    """The installed version of partner-proxy (read once at start-up by callers)."""
    from importlib import metadata

    try:
        return metadata.version("partner-proxy")
    except metadata.PackageNotFoundError:
        return "unknown"


def _sampler(spec: SamplerSpec) -> sampling.Sampler:
    root: sampling.Sampler
    name = spec.name
    if name.endswith("always_off"):
        root = sampling.ALWAYS_OFF
    elif name.endswith("traceidratio"):
        root = sampling.TraceIdRatioBased(spec.ratio)
    else:
        root = sampling.ALWAYS_ON
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


def parse_traceparent(header: str | None, tracestate: str | None) -> SpanContext | None:
    """The remote parent, or None for an absent or invalid header (bad shape, zero ids, version ff)."""
    if not header:
        return None
    m = _TRACEPARENT_RE.match(header.strip())
    if not m:
        return None
    version, trace_hex, span_hex, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = TraceState()
    if tracestate:
        try:
            state = TraceState.from_header([tracestate])
        except Exception:  # a bad tracestate never costs the trace, only its state
            state = TraceState()
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(flags, 16) & 0x01), trace_state=state)


def _no_span_id() -> int:
    return 0


class Span:
    """One span as the request path sees it: allow-listed attributes and events, and propagation.

    ``traceparent`` carries *this* span's id (for a CLIENT span: what the partner sees as parent);
    ``tracestate`` is the incoming header, forwarded byte for byte (None when there was none).
    """

    __slots__ = ("_span", "tracestate", "ended")

    def __init__(self, span: trace_api.Span, tracestate: str | None) -> None:
        self._span = span
        self.tracestate = tracestate
        self.ended = False

    @property
    def context(self) -> SpanContext:
        return self._span.get_span_context()

    @property
    def traceparent(self) -> str:
        ctx = self._span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0x01:02x}"

    @property
    def trace_id(self) -> str:
        return f"{self._span.get_span_context().trace_id:032x}"

    @property
    def sampled(self) -> bool:
        return self._span.get_span_context().trace_flags.sampled

    def set_attribute(self, key: str, value: Any) -> None:
        for k, v in clean({key: value}).items():
            self._span.set_attribute(k, v)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        checked = clean(attributes)
        if checked:
            self._span.set_attributes(checked)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp_ns: int | None = None) -> None:
        """A point in time inside the span: a retry, a breaker transition, a token invalidation, a Redis lookup."""
        checked_name = event_name(name)
        if checked_name is not None and self._span.is_recording():
            self._span.add_event(checked_name, clean(attributes), timestamp_ns)

    def end(
        self,
        status_code: int | None = None,
        error_type: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        end_ns: int | None = None,
    ) -> None:
        """Set the outcome and end. ``error_type`` (e.g. ``UPSTREAM_TIMEOUT``, ``timeout``) marks it failed.

        A SERVER span is an error for a 5xx or an error type; a CLIENT span also for a 4xx (the
        HTTP semantic conventions' rule). Ending twice does nothing.
        """
        if self.ended:
            return
        self.ended = True
        span = self._span
        if span.is_recording():
            attrs = dict(attributes) if attributes else {}
            if status_code is not None:
                attrs["http.response.status_code"] = status_code
            if error_type:
                attrs["error.type"] = error_type
                attrs["partner_proxy.error_type"] = error_type
            checked = clean(attrs)
            if checked:
                span.set_attributes(checked)
            threshold = 500 if getattr(span, "kind", SpanKind.SERVER) is SpanKind.SERVER else 400
            if error_type or (status_code is not None and status_code >= threshold):
                span.set_status(Status(StatusCode.ERROR))
        span.end(end_ns)


class Tracing:
    """Per-app tracing. ``enabled`` is the one attribute the hot path checks."""

    def __init__(self, settings: Settings, *, metrics: Any = None, exporter: SpanExporter | None = None) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self._metrics = metrics
        self._provider: TracerProvider | None = None
        self._processor: BoundedExportProcessor | None = None
        self._tracer: trace_api.Tracer | None = None
        self._new_span_id: Callable[[], int] = _no_span_id
        if not self.enabled:
            return
        cfg = settings.config
        if exporter is None:
            exporter = _otlp_exporter(settings)
        drops = {}
        exported = None
        if metrics is not None:
            drops = {r: metrics.spans_dropped.labels(r) for r in ("queue_full", "export_failed", "shutdown")}
            exported = metrics.spans_exported

        def on_drop(reason: str, count: int) -> None:
            counter = drops.get(reason)
            if counter is not None:
                counter.inc(count)

        def on_export(count: int) -> None:
            if exported is not None:
                exported.inc(count)

        self._processor = BoundedExportProcessor(
            exporter,
            max_queue_size=cfg.max_queue_size,
            max_export_batch_size=cfg.max_export_batch_size,
            schedule_delay=cfg.schedule_delay,
            on_drop=on_drop,
            on_export=on_export,
        )
        resource = Resource({**_sdk_resource(), **settings.resource})
        self._provider = TracerProvider(sampler=_sampler(settings.sampler), resource=resource, shutdown_on_exit=False)
        self._provider.add_span_processor(self._processor)
        version = settings.resource.get("service.version")
        self._tracer = self._provider.get_tracer("partner-proxy", version)
        self._new_span_id = self._provider.id_generator.generate_span_id

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        cfg: TracingConfig | None = None,
        *,
        metrics: Any = None,
        version: str | None = None,
        exporter: SpanExporter | None = None,
    ) -> Tracing:
        """Off (``enabled`` false) unless ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set."""
        return cls.from_settings(settings_from(env, cfg or TracingConfig(), version or package_version()), metrics=metrics, exporter=exporter)

    @classmethod
    def from_settings(cls, settings: Settings, *, metrics: Any = None, exporter: SpanExporter | None = None) -> Tracing:
        """``from_env`` for settings already read (``Resources`` reads the env once, then per reload
        only the ``tracing:`` block changes). Logs where spans go when on."""
        tracing = cls(settings, metrics=metrics, exporter=exporter)
        if tracing.enabled:
            log.info(
                "tracing on: OTLP/HTTP to %s, sampler %s(%g), service %s",
                _endpoint_for_log(settings.endpoint), settings.sampler.name, settings.sampler.ratio,
                settings.resource.get("service.name"),
            )
        return tracing

    @classmethod
    def disabled(cls) -> Tracing:
        """The no-op default for constructors (``TokenProvider(tracing=...)``) and tests."""
        return cls(Settings(endpoint=None))

    def __repr__(self) -> str:
        return f"<Tracing {'on' if self.enabled else 'off'}>"

    # ---- spans -------------------------------------------------------------------------------

    def server_span(
        self,
        route: str | None,
        method: str,
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
        path: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        start_ns: int | None = None,
    ) -> Span | None:
        """The SERVER span of one app request, named ``"{method} {route template}"`` (just the
        method when no route matched, as the HTTP semantic conventions name it); None when off.

        An incoming sampled/unsampled ``traceparent`` decides (parent-based sampling); an absent
        or invalid one starts a new trace subject to the ratio. An unsampled span still has ids,
        so the traceparent sent upstream keeps the trace id and the unsampled flag.
        """
        tracer = self._tracer
        if tracer is None:
            return None
        parent = parse_traceparent(traceparent, tracestate)
        ctx = trace_api.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
        # No attribute goes to the sampler (none of ours reads them): an unsampled span skips the
        # allow-list check altogether.
        name = f"{method} {route}" if route is not None else method
        span = tracer.start_span(name, ctx, SpanKind.SERVER, None, start_time=start_ns, record_exception=False, set_status_on_exception=False)
        if span.is_recording():
            attrs: dict[str, Any] = {"http.request.method": method}
            if route is not None:
                attrs["http.route"] = route
            if path is not None:
                attrs["url.path"] = path
            if attributes:
                attrs.update(attributes)
            span.set_attributes(clean(attrs))
        state = tracestate if parent is not None and tracestate and len(tracestate) <= MAX_TRACESTATE else None
        return Span(span, state)

    def client_span(
        self,
        parent: Span | None,
        name: str,
        *,
        attempt: int | None = None,
        attributes: Mapping[str, Any] | None = None,
        start_ns: int | None = None,
    ) -> Span | None:
        """A CLIENT span (a partner attempt, a token fetch), child of ``parent`` (a root when None).

        None when tracing is off. Its ``traceparent`` is what goes upstream.
        """
        tracer = self._tracer
        if tracer is None:
            return None
        if parent is not None and not parent._span.is_recording():
            # Every sampler we build drops the child of a dropped span (parent-based: its parent is
            # unsampled; ratio: the same trace id; always_off). Only its ids are needed, for the
            # traceparent sent upstream: skip the SDK's sampling and span set-up.
            pctx = parent._span.get_span_context()
            ids = SpanContext(pctx.trace_id, self._new_span_id(), is_remote=False, trace_flags=pctx.trace_flags, trace_state=pctx.trace_state)
            return Span(NonRecordingSpan(ids), parent.tracestate)
        ctx = trace_api.set_span_in_context(parent._span) if parent is not None else None
        attrs = dict(attributes) if attributes else {}
        if attempt is not None:
            attrs["partner_proxy.attempt"] = attempt
            if attempt > 1:
                attrs["http.request.resend_count"] = attempt - 1
        span = tracer.start_span(name, ctx, SpanKind.CLIENT, clean(attrs), start_time=start_ns, record_exception=False, set_status_on_exception=False)
        return Span(span, parent.tracestate if parent is not None else None)

    @staticmethod
    def traceparent_of(span: Span) -> str:
        return span.traceparent

    @staticmethod
    def end(
        span: Span | None,
        status_code: int | None = None,
        error_type: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        end_ns: int | None = None,
    ) -> None:
        """``span.end(...)`` that accepts None (tracing off), so call sites need no branch."""
        if span is not None:
            span.end(status_code, error_type, attributes, end_ns)

    # ---- the current request's span (for token fetches and hooks) ----------------------------

    @staticmethod
    def activate(span: Span | None) -> contextvars.Token[Span | None] | None:
        return _CURRENT.set(span) if span is not None else None

    @staticmethod
    def deactivate(token: contextvars.Token[Span | None] | None) -> None:
        if token is not None:
            _CURRENT.reset(token)

    def current(self) -> Span | None:
        return _CURRENT.get() if self.enabled else None

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        """An event on the current request's span, if any (breaker listeners, token invalidation)."""
        if self.enabled:
            span = _CURRENT.get()
            if span is not None:
                span.add_event(name, attributes)

    # ---- lifecycle ---------------------------------------------------------------------------

    def queued(self) -> int:
        return self._processor.queued() if self._processor is not None else 0

    def shutdown(self, timeout: float | None = None) -> None:
        """Blocking: flush what is queued for at most ``timeout`` (``shutdown_timeout``), then stop."""
        processor = self._processor
        if processor is None:
            return
        self._processor = None
        self._tracer = None
        self.enabled = False
        processor.shutdown(self.settings.config.shutdown_timeout if timeout is None else timeout)

    async def aclose(self, timeout: float | None = None) -> None:
        """``shutdown`` off the loop (in a thread); for cleanup_ctx and reload's swap of the old one."""
        if self._processor is not None:
            await asyncio.to_thread(self.shutdown, timeout)


class TracingRef:
    """The running ``Tracing``, for objects that outlive a reload (token providers, breakers).

    A reload that changes the tracing settings builds a new ``Tracing`` and closes the old one;
    ``Resources`` points this at the new one in the same step as the runtime swap, so a provider
    or breaker built before keeps tracing into the live one. It has the calls they make.
    """

    __slots__ = ("tracing",)

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    @property
    def enabled(self) -> bool:
        return self.tracing.enabled

    def current(self) -> Span | None:
        return self.tracing.current()

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self.tracing.event(name, attributes)

    def client_span(
        self,
        parent: Span | None,
        name: str,
        *,
        attempt: int | None = None,
        attributes: Mapping[str, Any] | None = None,
        start_ns: int | None = None,
    ) -> Span | None:
        return self.tracing.client_span(parent, name, attempt=attempt, attributes=attributes, start_ns=start_ns)

    end = staticmethod(Tracing.end)


def _endpoint_for_log(endpoint: str | None) -> str:
    """Scheme, host and path only: a URL may carry user:password@ or a query with a key."""
    from urllib.parse import urlsplit

    if not endpoint:
        return "-"
    parts = urlsplit(endpoint)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _otlp_exporter(settings: Settings) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    assert settings.endpoint is not None
    return OTLPSpanExporter(
        endpoint=settings.endpoint,
        headers=dict(settings.headers),
        timeout=settings.config.export_timeout,
        compression=Compression.Gzip if settings.compression == "gzip" else Compression.NoCompression,
    )
