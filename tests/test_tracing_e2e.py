"""Tracing through the whole app: the sidecar in front of the sandbox partner, exporting to a real
OTLP/HTTP receiver on loopback (``tests/otlp_receiver.py``), and once as a ``serve`` process.

What each test shows is in its name; the ids are checked on both sides of the sidecar: what the
app sent, what the receiver got, and what the partner received.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry.trace import SpanKind

from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.otel.tracer import Span
from tests.helpers import ERRORS, ROUTES, Rig, make_rig, partner_calls, patched_routes, sandbox_app, sandbox_env, shipped_config
from tests.otlp_receiver import Got, OtlpReceiver, closed_port_url, start_otlp_receiver
from tests.process import Sidecar, get_products, metric_value

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE_ID}-{PARENT_ID}-01"
UNSAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
FAST = "tracing: {schedule_delay: 50ms, export_timeout: 1s, shutdown_timeout: 1s}\n"


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[OtlpReceiver]:
    rec = await start_otlp_receiver(aiohttp_server)
    yield rec
    rec.release.set()


def base(sandbox: TestServer) -> str:
    return str(sandbox.make_url("")).rstrip("/")


def routes_with(tmp_path: Path, block: str = FAST, replacements: dict[str, str] | None = None) -> Path:
    path = patched_routes(tmp_path, replacements or {})
    path.write_text(path.read_text() + "\n" + block)
    return path


async def traced_rig(
    aiohttp_client: Any, sandbox: TestServer, monkeypatch: pytest.MonkeyPatch, endpoint: str, tmp_path: Path,
    *, block: str = FAST, replacements: dict[str, str] | None = None, stream: io.StringIO | None = None, **otel: str,
) -> Rig:
    """The app with OTEL_* in the process env (read once, by ``Resources``, as ``serve`` does)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    for k, v in otel.items():
        monkeypatch.setenv(k, v)
    routes = routes_with(tmp_path, block, replacements)
    return await make_rig(aiohttp_client, sandbox, shipped_config(base(sandbox), routes=routes), log_stream=stream)


def by_kind(spans: list[Got]) -> tuple[list[Got], list[Got], list[Got]]:
    servers = [s for s in spans if s.is_server]
    attempts = [s for s in spans if s.is_client and "partner_proxy.attempt" in s.attributes]
    fetches = [s for s in spans if s.is_client and s.name == "POST token"]
    return servers, attempts, fetches


def sample(rig: Rig, name: str, **labels: str) -> float:
    return rig.state.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_bug_ending_the_server_span_is_logged_and_the_answer_and_metrics_stand(
    aiohttp_client: Any, sandbox: TestServer, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The span's end is accounting too (``proxy.listener.account``'s rule): a bug there neither
    becomes a 500 nor skips the observers after it."""
    rig = await traced_rig(aiohttp_client, sandbox, monkeypatch, receiver.base, tmp_path)
    end = Span.end

    def broken(self: Span, status_code: int | None = None, *args: Any, **kwargs: Any) -> None:
        if getattr(self._span, "kind", None) is SpanKind.SERVER and status_code is not None:
            raise RuntimeError("a span bug")
        end(self, status_code, *args, **kwargs)

    monkeypatch.setattr(Span, "end", broken)
    resp = await rig.get(headers={"X-Request-Id": "span-bug"})
    assert resp.status == 200 and (await resp.json())["data"]
    assert "unhandled error accounting route get_products (request span-bug); the answer stands" in caplog.text
    assert "a span bug" in caplog.text
    assert sample(rig, "partner_proxy_requests_total", route="get_products", status="200") == 1.0


# ---- ids, parents, propagation -------------------------------------------------------------------


async def test_server_client_and_token_spans_are_linked_and_propagated(
    aiohttp_client: Any, sandbox: TestServer, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stream = io.StringIO()
    rig = await traced_rig(aiohttp_client, sandbox, monkeypatch, receiver.base, tmp_path, stream=stream, OTEL_SERVICE_NAME="pp-e2e")
    resp = await rig.get("?product_code=25k-xl&debug=1", headers={"traceparent": INCOMING, "tracestate": TRACESTATE})
    assert resp.status == 200
    servers, attempts, fetches = by_kind(await receiver.wait_for(3))
    (server,), (client,), (fetch,) = servers, attempts, fetches

    assert server.trace_id == client.trace_id == fetch.trace_id == TRACE_ID  # the app's trace, kept
    assert server.parent_span_id == PARENT_ID                                # the app's span is the parent
    assert client.parent_span_id == server.span_id and fetch.parent_span_id == server.span_id
    call = rig.partner.product_calls[-1]
    assert call.headers["traceparent"] == f"00-{TRACE_ID}-{client.span_id}-01"  # the CLIENT span's id upstream
    assert call.headers["tracestate"] == TRACESTATE                            # unchanged
    (record,) = await partner_calls(stream, 1)
    assert record["traceparent"] == call.headers["traceparent"]                 # the log says what the partner got

    assert server.name == "GET /v1/products" and server.resource["service.name"] == "pp-e2e"
    assert server.attributes == {
        "http.request.method": "GET", "http.route": "/v1/products", "url.path": "/v1/products",
        "http.response.status_code": 200, "partner_proxy.route": "get_products", "partner_proxy.cluster": "tokopedia",
        "partner_proxy.token_source": "fetch",
    }
    assert client.name == "GET tokopedia"
    assert client.attributes == {
        "http.request.method": "GET", "server.address": "127.0.0.1", "server.port": sandbox.port,
        "partner_proxy.cluster": "tokopedia", "partner_proxy.attempt": 1, "http.response.status_code": 200,
    }
    assert fetch.attributes["http.response.status_code"] == 200 and fetch.attributes["partner_proxy.provider"] == "tokopedia"
    assert server.start_ns <= fetch.start_ns <= client.start_ns <= client.end_ns <= server.end_ns


async def test_a_request_no_route_takes_gets_a_server_span_named_by_its_method(
    aiohttp_client: Any, sandbox: TestServer, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rig = await traced_rig(aiohttp_client, sandbox, monkeypatch, receiver.base, tmp_path)
    resp = await rig.client.get("/v1/nowhere", headers={"traceparent": INCOMING})
    assert resp.status == 404
    bad = await rig.client.get("/v1/orders/..%2Fproducts", headers={"traceparent": UNSAMPLED})  # unsampled: not exported
    assert bad.status == 400
    (server,) = await receiver.wait_for(1)
    assert server.is_server and server.name == "GET"  # no route: the method alone (HTTP semantic conventions)
    assert server.trace_id == TRACE_ID and server.parent_span_id == PARENT_ID
    assert server.attributes == {
        "http.request.method": "GET", "url.path": "/v1/nowhere", "http.response.status_code": 404,
        "error.type": "RouteNotFound", "partner_proxy.error_type": "RouteNotFound",
    }
    await asyncio.sleep(0.2)  # two export periods: nothing else arrives
    assert len(receiver.spans) == 1
    assert rig.partner.product_calls == []


async def test_no_or_invalid_traceparent_starts_a_new_trace(
    aiohttp_client: Any, sandbox: TestServer, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rig = await traced_rig(aiohttp_client, sandbox, monkeypatch, receiver.base, tmp_path)
    assert (await rig.get()).status == 200
    assert (await rig.get(headers={"traceparent": "00-" + "0" * 32 + "-" + PARENT_ID + "-01", "tracestate": TRACESTATE})).status == 200
    spans = await receiver.wait_for(5)  # a token fetch, then 2 x (server, client)
    servers, attempts, _ = by_kind(spans)
    assert len(servers) == 2 and all(s.parent_span_id == "" for s in servers)
    assert len({s.trace_id for s in servers}) == 2 and TRACE_ID not in {s.trace_id for s in servers}
    for call, client in zip(rig.partner.product_calls[-2:], attempts, strict=True):
        assert call.headers["traceparent"] == f"00-{client.trace_id}-{client.span_id}-01"
        assert "tracestate" not in call.headers  # a state without a valid parent belongs to no trace


async def test_retry_gives_two_attempt_spans_and_a_retry_event(
    aiohttp_client: Any, sandbox: TestServer, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rig = await traced_rig(aiohttp_client, sandbox, monkeypatch, receiver.base, tmp_path)
    resp = await rig.get("?product_code=status-500", headers={"traceparent": INCOMING})
    assert resp.status == 502
    servers, attempts, _ = by_kind(await receiver.wait_for(4))
    (server,) = servers
    assert sorted(a.attributes["partner_proxy.attempt"] for a in attempts) == [1, 2]
    assert all(a.parent_span_id == server.span_id and a.attributes["http.response.status_code"] == 500 for a in attempts)
    assert attempts[1].attributes["http.request.resend_count"] == 1
    assert ("retry", {"partner_proxy.attempt": 1, "partner_proxy.retry_reason": "status_500"}) in server.events
    assert server.attributes["http.response.status_code"] == 502 and server.attributes["error.type"] == "PartnerError"
    assert server.status_code == 2  # STATUS_CODE_ERROR
    # each attempt told the partner its own span id
    sent = [c.headers["traceparent"] for c in rig.partner.product_calls[-2:]]
    assert sent == [f"00-{TRACE_ID}-{a.span_id}-01" for a in sorted(attempts, key=lambda a: a.attributes["partner_proxy.attempt"])]


async def test_token_invalidation_is_an_event_and_the_new_fetch_a_child(
    aiohttp_client: Any, sandbox: TestServer, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rig = await traced_rig(aiohttp_client, sandbox, monkeypatch, receiver.base, tmp_path)
    assert (await rig.get()).status == 200
    await receiver.wait_for(3)
    receiver.spans.clear()
    rig.partner.revoke_all()
    assert (await rig.get(headers={"traceparent": INCOMING})).status == 200  # P08, renew, one re-send
    servers, attempts, fetches = by_kind(await receiver.wait_for(4))
    (server,), (fetch,) = servers, fetches
    assert ("token.invalidated", {"partner_proxy.provider": "tokopedia"}) in server.events
    assert fetch.parent_span_id == server.span_id
    assert sorted(a.attributes["partner_proxy.attempt"] for a in attempts) == [1, 2]
    assert [a.attributes["http.response.status_code"] for a in sorted(attempts, key=lambda a: a.start_ns)] == [403, 200]
    assert server.attributes["partner_proxy.token_source"] == "fetch"


async def test_breaker_transition_is_an_event_on_the_request_that_caused_it(
    aiohttp_client: Any, sandbox: TestServer, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rig = await traced_rig(
        aiohttp_client, sandbox, monkeypatch, receiver.base, tmp_path,
        replacements={"fail_max: 5": "fail_max: 1", "attempts: 1": "attempts: 0"},
    )
    assert (await rig.get("?product_code=status-500", headers={"traceparent": INCOMING})).status == 502
    assert (await rig.get()).status == 503  # CircuitBreakerError, no partner call
    spans = await receiver.wait_for(5)
    servers, attempts, _ = by_kind(spans)
    tripping = next(s for s in servers if s.trace_id == TRACE_ID)
    assert ("breaker.transition", {"partner_proxy.cluster": "tokopedia", "partner_proxy.breaker_from": "closed", "partner_proxy.breaker_to": "open"}) in tripping.events
    refused = next(s for s in servers if s.trace_id != TRACE_ID)
    assert refused.attributes["error.type"] == "CircuitBreakerError" and refused.attributes["http.response.status_code"] == 503
    assert len(attempts) == 2 and any(a.attributes.get("error.type") == "CircuitBreakerError" for a in attempts)


# ---- what a span may carry ---------------------------------------------------------------------------


async def test_no_secret_in_any_exported_byte(
    aiohttp_client: Any, sandbox: TestServer, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rig = await traced_rig(
        aiohttp_client, sandbox, monkeypatch, receiver.base, tmp_path,
        replacements={"notifications:": "log: {redact_fields: [X-Api-Key]}\nnotifications:"},
    )
    hostile = {
        "traceparent": INCOMING, "Authorization": "Bearer app-own-secret-AUTHZ", "Cookie": "session=cookie-secret-CK",
        "X-Api-Key": "redacted-secret-APIKEY",
    }
    assert (await rig.get("?product_code=25k-xl&key=query-secret-QS", headers=hostile)).status == 200
    rig.partner.revoke_all()
    assert (await rig.get(headers=hostile)).status == 200  # a renew: a second token, a second Authorization
    await receiver.wait_for(7)
    raw = b"".join(receiver.raw_bodies)
    tokens = rig.partner.tokens_issued
    assert len(tokens) == 2
    secrets = ["sandbox-secret", "app-own-secret-AUTHZ", "cookie-secret-CK", "redacted-secret-APIKEY", "query-secret-QS", "Bearer", *tokens]
    secrets += [c.headers["Authorization"] for c in rig.partner.product_calls]
    assert [s for s in secrets if s.encode() in raw] == []
    # and none of the decoded attributes or events holds anything but allow-listed keys
    for span in receiver.spans:
        for key in list(span.attributes) + [k for _, attrs in span.events for k in attrs]:
            assert key.startswith(("http.", "url.", "server.", "error.", "partner_proxy.")), key


# ---- sampling ------------------------------------------------------------------------------------------


async def test_ratio_zero_exports_nothing_but_propagates_ids(
    aiohttp_client: Any, sandbox: TestServer, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rig = await traced_rig(
        aiohttp_client, sandbox, monkeypatch, receiver.base, tmp_path,
        OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0",
    )
    assert (await rig.get(headers={"traceparent": UNSAMPLED, "tracestate": TRACESTATE})).status == 200
    call = rig.partner.product_calls[-1]
    version, trace_id, span_id, flags = call.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "00") and span_id not in (PARENT_ID, "0" * 16)
    assert call.headers["tracestate"] == TRACESTATE
    assert (await rig.get()).status == 200  # a new trace: the ratio (0) decides
    assert rig.partner.product_calls[-1].headers["traceparent"].endswith("-00")
    await asyncio.sleep(0.3)  # six export periods
    assert receiver.spans == [] and sample(rig, "partner_proxy_spans_exported_total") == 0
    # parent-based: the app's sampled flag is followed even at ratio 0
    assert (await rig.get(headers={"traceparent": INCOMING})).status == 200
    servers, _, _ = by_kind(await receiver.wait_for(2))
    assert [s.trace_id for s in servers] == [TRACE_ID]


# ---- a collector that is down or hangs costs spans, never requests ------------------------------------


async def test_dead_collector_costs_no_request(aiohttp_client: Any, sandbox: TestServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rig = await traced_rig(aiohttp_client, sandbox, monkeypatch, closed_port_url(), tmp_path)
    started = time.perf_counter()
    statuses = [r.status for r in await asyncio.gather(*(rig.get() for _ in range(20)))]
    assert statuses == [200] * 20 and time.perf_counter() - started < 5
    for _ in range(200):
        if sample(rig, "partner_proxy_spans_dropped_total", reason="export_failed") > 0:
            break
        await asyncio.sleep(0.05)
    assert sample(rig, "partner_proxy_spans_dropped_total", reason="export_failed") > 0
    assert "partner_proxy_spans_dropped_total{reason=\"export_failed\"}" in await rig.metrics()


async def test_hanging_collector_costs_no_request(aiohttp_client: Any, sandbox: TestServer, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rec = await start_otlp_receiver(aiohttp_server, mode="hang")
    try:
        block = "tracing: {max_queue_size: 8, max_export_batch_size: 4, schedule_delay: 50ms, export_timeout: 10s, shutdown_timeout: 500ms}\n"
        rig = await traced_rig(aiohttp_client, sandbox, monkeypatch, rec.base, tmp_path, block=block)
        assert (await rig.get()).status == 200
        await asyncio.wait_for(_first_request(rec), 5)  # the export thread is now stuck on it
        slowest = 0.0
        for _ in range(30):
            t = time.perf_counter()
            assert (await rig.get()).status == 200
            slowest = max(slowest, time.perf_counter() - t)
        assert slowest < 1.0  # export is stuck in its thread, the loop is not
        assert sample(rig, "partner_proxy_spans_dropped_total", reason="queue_full") > 0
        t = time.perf_counter()
        await rig.state.current().tracing.aclose()  # the shutdown flush is bounded by shutdown_timeout
        assert time.perf_counter() - t < 3.0
        assert sample(rig, "partner_proxy_spans_dropped_total", reason="shutdown") > 0
    finally:
        rec.release.set()


async def _first_request(rec: OtlpReceiver) -> None:
    while not rec.requests:
        await asyncio.sleep(0.02)


# ---- config and reload ----------------------------------------------------------------------------------


def test_tracing_block_errors_name_file_line_and_fix(tmp_path: Path) -> None:
    routes = routes_with(tmp_path, "tracing:\n  max_queue: 5\n  export_timeout: soon\n  schedule_delay: 0\n  enabled: maybe\n")
    with pytest.raises(ConfigError) as err:
        load_config(routes, ERRORS, env=sandbox_env("http://127.0.0.1:9"))
    text = "\n".join(err.value.problems)
    lines = routes.read_text().splitlines()
    key_line = {line.split(":")[0].strip(): i + 1 for i, line in enumerate(lines) if line.startswith("  ")}
    assert f"{routes}:{key_line['max_queue']}: tracing.max_queue: unknown key; did you mean 'max_queue_size'?" in text
    assert f"{routes}:{key_line['export_timeout']}: tracing.export_timeout: 'soon' is not a duration" in text
    assert f"{routes}:{key_line['schedule_delay']}: tracing.schedule_delay: must be more than 0" in text
    assert f"{routes}:{key_line['enabled']}: tracing.enabled:" in text
    ok = load_config(routes_with(tmp_path, "tracing: {max_queue_size: 100, max_export_batch_size: 10, export_timeout: 250ms}\n"), ERRORS, env=sandbox_env("http://127.0.0.1:9"))
    t = ok.proxy.tracing
    assert (t.max_queue_size, t.max_export_batch_size, t.export_timeout, t.enabled) == (100, 10, 0.25, True)
    assert load_config(ROUTES, ERRORS, env=sandbox_env("http://127.0.0.1:9")).proxy.tracing == type(t)()


async def test_reload_swaps_the_tracer_only_when_its_settings_change(
    aiohttp_client: Any, sandbox: TestServer, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for k, v in sandbox_env(base(sandbox)).items():
        monkeypatch.setenv(k, v)
    rig = await traced_rig(aiohttp_client, sandbox, monkeypatch, receiver.base, tmp_path)
    routes = tmp_path / "routes.yaml"
    first = rig.state.current().tracing
    assert first.enabled and (await rig.get()).status == 200
    await receiver.wait_for(3)

    assert await rig.state.reload(str(routes), str(ERRORS))  # nothing changed: the same tracer
    assert rig.state.current().tracing is first

    routes.write_text(routes.read_text().replace(FAST, FAST.replace("50ms", "60ms")))
    assert await rig.state.reload(str(routes), str(ERRORS))
    second = rig.state.current().tracing
    assert second is not first and second.enabled and second.settings.config.schedule_delay == 0.06
    for _ in range(100):  # the old one is flushed and closed after the swap
        if not first.enabled:
            break
        await asyncio.sleep(0.02)
    assert not first.enabled
    receiver.spans.clear()
    rig.partner.revoke_all()  # the provider (kept: its config did not change) traces through the new tracer
    assert (await rig.get(headers={"traceparent": INCOMING})).status == 200
    servers, attempts, fetches = by_kind(await receiver.wait_for(4))
    assert len(servers) == 1 and len(attempts) == 2 and fetches[0].parent_span_id == servers[0].span_id

    routes.write_text(routes.read_text().replace(FAST.replace("50ms", "60ms"), "tracing: {enabled: false}\n"))
    assert await rig.state.reload(str(routes), str(ERRORS))
    off = rig.state.current().tracing
    assert not off.enabled and off is not second
    assert (await rig.get(headers={"traceparent": INCOMING})).status == 200
    sent = rig.partner.product_calls[-1].headers["traceparent"]
    assert sent.startswith(f"00-{TRACE_ID}-") and sent.endswith("-01") and "tracestate" not in rig.partner.product_calls[-1].headers


async def test_reload_with_a_bad_tracing_block_keeps_the_running_tracer(
    aiohttp_client: Any, sandbox: TestServer, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for k, v in sandbox_env(base(sandbox)).items():
        monkeypatch.setenv(k, v)
    rig = await traced_rig(aiohttp_client, sandbox, monkeypatch, receiver.base, tmp_path)
    routes = tmp_path / "routes.yaml"
    first = rig.state.current().tracing
    routes.write_text(routes.read_text().replace(FAST, "tracing: {schedule_delay: 60ms, max_queue: 3}\n"))
    assert not await rig.state.reload(str(routes), str(ERRORS))
    assert rig.state.current().tracing is first and first.enabled


async def test_tracing_off_still_propagates_the_trace_context(aiohttp_client: Any, sandbox: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    stream = io.StringIO()
    rig = await make_rig(aiohttp_client, sandbox, shipped_config(base(sandbox)), log_stream=stream)
    assert not rig.state.current().tracing.enabled
    assert (await rig.get(headers={"traceparent": INCOMING, "tracestate": TRACESTATE})).status == 200
    call = rig.partner.product_calls[-1]
    version, trace_id, span_id, flags = call.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01") and span_id != PARENT_ID
    assert call.headers["tracestate"] == TRACESTATE  # W3C: a proxy forwards it, tracing or not
    assert (await rig.get(headers={"traceparent": "00-" + "0" * 32 + "-" + PARENT_ID + "-01", "tracestate": TRACESTATE})).status == 200
    assert "tracestate" not in rig.partner.product_calls[-1].headers  # no valid parent: it belongs to no trace
    (record, _) = await partner_calls(stream, 2)
    assert record["traceparent"] == call.headers["traceparent"]


# ---- the process ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_serve_exports_spans_to_the_otlp_endpoint(sandbox: TestServer, receiver: OtlpReceiver) -> None:
    sidecar = await Sidecar(
        base(sandbox), OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base, OTEL_SERVICE_NAME="pp-process",
        OTEL_RESOURCE_ATTRIBUTES="k8s.pod.name=app-1",
    ).start()
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                status, _ = await get_products(s, sidecar, traceparent=INCOMING)
                assert status == 200
            spans = await receiver.wait_for(7, timeout=15)  # 3 x (server, client) + one token fetch
            exported = metric_value(await sidecar.metrics(s), "partner_proxy_spans_exported_total")
        assert await sidecar.stop() == 0
    finally:
        sidecar.kill()
    servers, attempts, fetches = by_kind(spans)
    assert len(servers) == 3 and len(attempts) == 3 and len(fetches) == 1
    assert {s.trace_id for s in spans} == {TRACE_ID}
    assert all(s.parent_span_id == PARENT_ID for s in servers)
    assert servers[0].resource["service.name"] == "pp-process" and servers[0].resource["k8s.pod.name"] == "app-1"
    assert exported >= 6
    sent = {c.headers["traceparent"] for c in sandbox.app[_sandbox_key()].product_calls}
    assert sent == {f"00-{TRACE_ID}-{a.span_id}-01" for a in attempts}
    assert "sandbox-secret" not in sidecar.stderr() and "tracing on: OTLP/HTTP to" in sidecar.stderr()


def _sandbox_key() -> Any:
    from proxy.sandbox import SANDBOX_STATE

    return SANDBOX_STATE
