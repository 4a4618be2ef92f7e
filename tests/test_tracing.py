"""Tracing against a real OTLP/HTTP receiver on loopback (protobuf decoded with opentelemetry-proto).

These drive the ``Tracing`` API directly, the way the listener and forwarder do: a SERVER span
from the incoming headers, a CLIENT span per attempt whose traceparent goes upstream. The same
through the whole app (and a ``serve`` process) is ``tests/test_tracing_e2e.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from proxy.config.models import Secret
from proxy.metrics import Metrics
from proxy.oauth.provider import TokenProvider
from proxy.otel import ALLOWED, Span, Tracing, TracingConfig, TracingConfigError, clean, tracing_config_from
from proxy.otel.config import settings_from, traces_endpoint
from tests.otlp_receiver import OtlpReceiver, closed_port_url, start_otlp_receiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
SECRET = "s3cr3t-T0KEN-value"

FAST = TracingConfig(schedule_delay=0.05, export_timeout=1.0, shutdown_timeout=2.0)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[OtlpReceiver]:
    rec = await start_otlp_receiver(aiohttp_server)
    yield rec
    rec.release.set()


def make(env: dict[str, str], cfg: TracingConfig = FAST) -> tuple[Tracing, Metrics]:
    metrics = Metrics(CollectorRegistry())
    return Tracing.from_env(env, cfg, metrics=metrics, version="9.9.9"), metrics


def request(tracing: Tracing, traceparent: str | None = INCOMING, tracestate: str | None = TRACESTATE, attempts: int = 1) -> tuple[Span | None, list[Span | None]]:
    """What the listener and the forwarder do for one request with ``attempts`` partner attempts."""
    span = tracing.server_span(
        "/v1/products", "GET", traceparent=traceparent, tracestate=tracestate, path="/v1/products?product_code=x&key=" + SECRET,
        attributes={"partner_proxy.route": "get_products", "partner_proxy.cluster": "tokopedia", "partner_proxy.request_id": "req-1"},
    )
    clients = []
    for n in range(1, attempts + 1):
        c = tracing.client_span(
            span, "GET tokopedia", attempt=n,
            attributes={"http.request.method": "GET", "server.address": "b2b.tokopedia.com", "server.port": 443, "url.path": "/v2/product-list", "partner_proxy.cluster": "tokopedia"},
        )
        clients.append(c)
        if n < attempts:
            tracing.end(c, 503, "UPSTREAM_UNAVAILABLE", {"partner_proxy.partner_code": "S03"})
            assert span is not None
            span.add_event("retry", {"partner_proxy.attempt": n, "partner_proxy.retry_reason": "status_503"})
        else:
            tracing.end(c, 200, attributes={"partner_proxy.token_source": "memory"})
    tracing.end(span, 200)
    return span, clients


# ---- configuration ------------------------------------------------------------------------------


def test_tracing_block_defaults_values_and_errors() -> None:
    assert tracing_config_from(None) == TracingConfig() == tracing_config_from({})
    cfg = tracing_config_from({"max_queue_size": "100", "export_timeout": "250ms", "schedule_delay": 2, "enabled": "false", "max_export_batch_size": 10})
    assert (cfg.max_queue_size, cfg.export_timeout, cfg.schedule_delay, cfg.enabled, cfg.max_export_batch_size) == (100, 0.25, 2.0, False, 10)
    with pytest.raises(TracingConfigError) as err:
        tracing_config_from({"max_queue": 5, "export_timeout": "soon", "max_queue_size": 0})
    problems = dict(err.value.problems)
    assert "did you mean 'max_queue_size'" in problems["max_queue"]
    assert "not a duration" in problems["export_timeout"]
    assert "below the minimum 1" in problems["max_queue_size"]


def test_endpoint_variables_follow_the_specification() -> None:
    assert traces_endpoint({}) is None
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://10.0.0.1:4318"}) == "http://10.0.0.1:4318/v1/traces"
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://agent:4318/"}) == "http://agent:4318/v1/traces"
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://otlp.nr-data.net:4318/v1/traces"}
    assert traces_endpoint(both) == "https://otlp.nr-data.net:4318/v1/traces"
    s = settings_from(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp.nr-data.net:4318",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=NRAK-" + SECRET,
            "OTEL_SERVICE_NAME": "checkout-sidecar",
            "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=app-1,k8s.namespace.name=shop,service.name=ignored",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
        },
        TracingConfig(),
        "1.2.3",
    )
    assert s.enabled and s.headers == {"api-key": "NRAK-" + SECRET}
    assert SECRET not in repr(s)
    assert s.resource == {"k8s.pod.name": "app-1", "k8s.namespace.name": "shop", "service.name": "checkout-sidecar", "service.version": "1.2.3"}
    assert (s.sampler.name, s.sampler.ratio) == ("parentbased_traceidratio", 0.25)


@pytest.mark.parametrize(
    "env, cfg",
    [
        ({}, TracingConfig()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, TracingConfig(enabled=False)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, TracingConfig()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, TracingConfig()),
    ],
)
def test_off_costs_one_attribute_check(env: dict[str, str], cfg: TracingConfig) -> None:
    tracing = Tracing.from_env(env, cfg)
    assert tracing.enabled is False
    assert tracing.server_span("/v1/products", "GET", traceparent=INCOMING) is None
    assert tracing.client_span(None, "x") is None
    tracing.end(None, 200)
    tracing.event("retry")
    assert tracing.current() is None
    tracing.shutdown()
    assert not Tracing.disabled().enabled


# ---- spans on the wire ----------------------------------------------------------------------------


async def test_parent_child_ids_traceparent_and_tracestate(receiver: OtlpReceiver) -> None:
    tracing, metrics = make({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base, "OTEL_SERVICE_NAME": "pp-test", "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=app-1"})
    try:
        span, (first, second) = request(tracing, attempts=2)
        assert span is not None and first is not None and second is not None
        # the traceparent for each upstream attempt carries that CLIENT span's id, and the trace id
        for c in (first, second):
            version, trace_id, span_id, flags = tracing.traceparent_of(c).split("-")
            assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
            assert span_id == f"{c.context.span_id:016x}" and span_id != PARENT_ID
            assert c.tracestate == TRACESTATE  # forwarded unchanged, byte for byte
        assert first.traceparent != second.traceparent
        spans = await receiver.wait_for(3)
    finally:
        await tracing.aclose()
    server = next(s for s in spans if s.is_server)
    clients = [s for s in spans if s.is_client]
    assert server.trace_id == TRACE_ID and server.parent_span_id == PARENT_ID
    assert server.name == "GET /v1/products"
    assert {c.parent_span_id for c in clients} == {server.span_id}
    assert {c.span_id for c in clients} == {f"{first.context.span_id:016x}", f"{second.context.span_id:016x}"}
    assert server.attributes == {
        "http.request.method": "GET", "http.route": "/v1/products", "url.path": "/v1/products",
        "partner_proxy.route": "get_products", "partner_proxy.cluster": "tokopedia", "partner_proxy.request_id": "req-1",
        "http.response.status_code": 200,
    }
    assert server.events == [("retry", {"partner_proxy.attempt": 1, "partner_proxy.retry_reason": "status_503"})]
    failed = next(c for c in clients if c.attributes["partner_proxy.attempt"] == 1)
    assert failed.attributes["error.type"] == "UPSTREAM_UNAVAILABLE" and failed.attributes["partner_proxy.partner_code"] == "S03"
    assert failed.attributes["http.response.status_code"] == 503 and failed.status_code == 2  # STATUS_CODE_ERROR
    ok = next(c for c in clients if c.attributes["partner_proxy.attempt"] == 2)
    assert ok.attributes["http.request.resend_count"] == 1 and ok.attributes["partner_proxy.token_source"] == "memory"
    assert ok.attributes["server.address"] == "b2b.tokopedia.com" and ok.attributes["server.port"] == 443
    assert server.resource["service.name"] == "pp-test" and server.resource["k8s.pod.name"] == "app-1"
    assert server.resource["service.version"] == "9.9.9"
    assert all(s.start_ns <= s.end_ns for s in spans)
    assert sample(metrics, "partner_proxy_spans_exported_total") == 3


async def test_no_incoming_traceparent_starts_a_new_trace(receiver: OtlpReceiver) -> None:
    tracing, _ = make({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url})
    try:
        for bad in (None, "garbage", f"ff-{TRACE_ID}-{PARENT_ID}-01", f"00-{'0' * 32}-{PARENT_ID}-01"):
            span, (c,) = request(tracing, traceparent=bad)
            assert span is not None and c is not None
            assert span.trace_id != TRACE_ID and span.sampled
            assert c.tracestate is None  # a tracestate without a valid traceparent is not forwarded
        spans = await receiver.wait_for(8)
    finally:
        await tracing.aclose()
    assert all(s.parent_span_id == "" for s in spans if s.is_server)


async def test_no_secret_in_any_attribute(receiver: OtlpReceiver) -> None:
    tracing, _ = make({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    hostile = {
        "http.request.header.authorization": "Bearer " + SECRET,
        "authorization": SECRET,
        "partner_proxy.token": SECRET,
        "client_secret": SECRET,
        "http.request.body": '{"password":"' + SECRET + '"}',
        "url.query": "key=" + SECRET,
        "url.full": "https://x/?k=" + SECRET,
        "partner_proxy.token_source": SECRET,
        "partner_proxy.partner_code": SECRET,
        "partner_proxy.error_type": "Bearer " + SECRET,
        "server.address": "user:" + SECRET + "@host/x?y",
    }
    try:
        span = tracing.server_span("/v1/products", "GET", traceparent=INCOMING, path="/v1/products?token=" + SECRET, attributes=hostile)
        assert span is not None
        span.set_attributes(hostile)
        span.set_attribute("http.request.header.cookie", SECRET)
        span.add_event("token.invalidated", hostile)
        span.add_event("event with " + SECRET, {})
        c = tracing.client_span(span, "GET tokopedia", attributes=hostile)
        tracing.end(c, 200, attributes=hostile)
        tracing.end(span, 200, attributes=hostile)
        spans = await receiver.wait_for(2)
    finally:
        await tracing.aclose()
    assert all(SECRET.encode() not in body for body in receiver.raw_bodies)
    for s in spans:
        assert set(s.attributes) <= set(ALLOWED)
        assert not any(SECRET in str(v) for v in s.attributes.values())
        assert [name for name, _ in s.events] in ([], ["token.invalidated"])
    server = next(s for s in spans if s.is_server)
    assert server.attributes["url.path"] == "/v1/products" and server.attributes["partner_proxy.partner_code"] == "other"
    assert clean({"url.path": "/a#frag", "http.request.method": "BREW"}) == {"url.path": "/a", "http.request.method": "_OTHER"}


async def test_exporter_headers_reach_the_collector(receiver: OtlpReceiver) -> None:
    tracing, _ = make({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base, "OTEL_EXPORTER_OTLP_HEADERS": "api-key=NRAK-123", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"})
    try:
        request(tracing)
        await receiver.wait_for(2)
    finally:
        await tracing.aclose()
    assert receiver.requests[0]["api-key"] == "NRAK-123"
    assert receiver.requests[0]["Content-Encoding"] == "gzip"
    assert receiver.requests[0]["Content-Type"] == "application/x-protobuf"


# ---- sampling ---------------------------------------------------------------------------------------


async def test_ratio_zero_exports_nothing_and_propagates_unsampled(receiver: OtlpReceiver) -> None:
    tracing, metrics = make({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"})
    try:
        for _ in range(20):
            span, (c,) = request(tracing, traceparent=None)
            assert span is not None and c is not None and not span.sampled
            assert c.traceparent.endswith("-00") and c.traceparent != span.traceparent
        # parent-based: a sampled parent is still followed at ratio 0
        span, (c,) = request(tracing, traceparent=INCOMING)
        assert span is not None and span.sampled
        spans = await receiver.wait_for(2)
    finally:
        await tracing.aclose()
    assert len(spans) == 2 and {s.trace_id for s in spans} == {TRACE_ID}
    assert sample(metrics, "partner_proxy_spans_exported_total") == 2


async def test_unsampled_parent_flag_is_honoured(receiver: OtlpReceiver) -> None:
    tracing, _ = make({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})  # parentbased_always_on
    try:
        span, (c,) = request(tracing, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00")
        assert span is not None and c is not None and not span.sampled
        assert c.traceparent.startswith(f"00-{TRACE_ID}-") and c.traceparent.endswith("-00")
        assert c.tracestate == TRACESTATE
        span, _ = request(tracing)  # a sampled one after it, to know the export ran
        await receiver.wait_for(2)
        await asyncio.sleep(0.2)
    finally:
        await tracing.aclose()
    assert len(receiver.spans) == 2 and all(s.parent_span_id != PARENT_ID or s.is_server for s in receiver.spans)


# ---- a collector that is down or hangs costs spans, never a request ---------------------------------


def timed_requests(tracing: Tracing, count: int) -> float:
    """The slowest request's tracing calls, in seconds."""
    worst = 0.0
    for _ in range(count):
        t0 = time.perf_counter()
        request(tracing)
        worst = max(worst, time.perf_counter() - t0)
    return worst


async def test_down_collector_drops_and_counts(aiohttp_server: Any) -> None:
    tracing, metrics = make({"OTEL_EXPORTER_OTLP_ENDPOINT": closed_port_url()}, TracingConfig(schedule_delay=0.05, export_timeout=0.5, shutdown_timeout=1.0))
    try:
        worst = timed_requests(tracing, 50)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while sample(metrics, "partner_proxy_spans_dropped_total", reason="export_failed") < 100 and loop.time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        t0 = time.perf_counter()
        await tracing.aclose()
        closing = time.perf_counter() - t0
    assert worst < 0.5, "a span call waited for the collector"  # generous: the point is "no network wait"
    assert sample(metrics, "partner_proxy_spans_dropped_total", reason="export_failed") == 100
    assert closing < 3.0


async def test_hanging_collector_fills_the_queue_and_shutdown_is_bounded(aiohttp_server: Any) -> None:
    rec = await start_otlp_receiver(aiohttp_server, mode="hang")
    cfg = TracingConfig(max_queue_size=20, max_export_batch_size=5, schedule_delay=0.05, export_timeout=5.0, shutdown_timeout=0.5)
    tracing, metrics = make({"OTEL_EXPORTER_OTLP_ENDPOINT": rec.base}, cfg)
    try:
        request(tracing)
        await asyncio.wait_for(_first_request(rec), 5)  # the export thread now hangs in its POST
        worst = timed_requests(tracing, 100)  # 200 spans against a queue of 20 while the export hangs
        assert worst < 0.5
        assert sample(metrics, "partner_proxy_spans_dropped_total", reason="queue_full") >= 150
        assert tracing.queued() <= 20
        t0 = time.perf_counter()
        await tracing.aclose()
        assert time.perf_counter() - t0 < 3.0
        assert sample(metrics, "partner_proxy_spans_dropped_total", reason="shutdown") >= 1
    finally:
        rec.release.set()
        await tracing.aclose()


async def _first_request(rec: OtlpReceiver) -> None:
    while not rec.requests:
        await asyncio.sleep(0.01)


# ---- token fetch: a CLIENT span, child of the request that started the flight ----------------------


async def test_token_fetch_span_is_a_child_of_the_request_span(receiver: OtlpReceiver, aiohttp_server: Any) -> None:
    from aiohttp import web

    from proxy.config.models import CredentialsConfig

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "c:" + SECRET, "expires_in": 3600})

    app = web.Application()
    app.router.add_post("/token", token)
    issuer = await aiohttp_server(app)
    tracing, metrics = make({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    session = aiohttp.ClientSession()
    provider = TokenProvider(
        CredentialsConfig(name="tokopedia", type="oauth2_client_credentials", token_url=str(issuer.make_url("/token")), client_id="id", client_secret=Secret(SECRET), refresh_before=600.0),
        session=session, store=None, metrics=metrics, tracing=tracing,
    )
    try:
        span = tracing.server_span("/v1/products", "GET", traceparent=INCOMING)
        ctx = tracing.activate(span)
        try:
            tok = await provider.get()
        finally:
            tracing.deactivate(ctx)
        tracing.end(span, 200)
        assert tracing.current() is None
        spans = await receiver.wait_for(2)
    finally:
        await provider.close()
        await session.close()
        await tracing.aclose()
    assert tok.source == "fetch"
    server = next(s for s in spans if s.is_server)
    fetch = next(s for s in spans if s.is_client)
    assert fetch.name == "POST token" and fetch.parent_span_id == server.span_id and fetch.trace_id == TRACE_ID
    assert fetch.attributes["server.address"] == "127.0.0.1" and fetch.attributes["http.response.status_code"] == 200
    assert fetch.attributes["partner_proxy.provider"] == "tokopedia"
    assert all(SECRET.encode() not in body for body in receiver.raw_bodies)
