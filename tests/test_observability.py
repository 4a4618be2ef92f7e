"""Communication log, tracing and notifications through the whole app; secrets never leak."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import build_state
from proxy.admin import build_admin_app
from proxy.commlog import CommunicationLog
from proxy.sandbox import SANDBOX_STATE
from tests.keys import keys_for_tests
from tests.helpers import CLIENT_ID, CLIENT_SECRET, Rig, data_test_server, patched_routes, sandbox_app, shipped_config
from tests.process import Sidecar, get_products
from tests.receivers import DD_KEY, DD_PATH, NR_KEY, NR_PATH, SLACK_PATH, Receiver

FIELDS = {
    "time", "level", "event", "request_id", "traceparent", "route", "client_id", "cluster", "method",
    "upstream_path", "attempts", "status", "partner_status", "partner_code", "error_type", "latency_ms",
    "token_source", "token_retried", "breaker_state",
}


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


def base(sandbox: TestServer) -> str:
    return str(sandbox.make_url("")).rstrip("/")


def notify_env(rec: Receiver) -> Any:  # **-unpacked into env keyword arguments
    return {
        "SLACK_WEBHOOK_URL": rec.url(SLACK_PATH),
        "DATADOG_API_URL": rec.url(DD_PATH),
        "DATADOG_API_KEY": DD_KEY,
        "NEWRELIC_EVENTS_URL": rec.url(NR_PATH),
        "NEWRELIC_API_KEY": NR_KEY,
    }


async def rig_with_log(aiohttp_client: Any, sandbox: TestServer, stream: io.StringIO, **env: Any) -> Rig:
    loaded = shipped_config(base(sandbox), **env)
    state = build_state(loaded, log_stream=stream)
    client = await aiohttp_client(data_test_server(state))
    admin = await aiohttp_client(build_admin_app(state))
    state.data_up = state.admin_up = True
    return Rig(client, admin, state, sandbox)


async def log_records(stream: io.StringIO, at_least: int) -> list[dict[str, Any]]:
    for _ in range(100):  # the log is written by a background thread
        lines = [line for line in stream.getvalue().splitlines() if line]
        if len(lines) >= at_least:
            return [json.loads(line) for line in lines]
        await asyncio.sleep(0.02)
    raise AssertionError(f"only {stream.getvalue()!r}")


async def test_one_completion_record_per_partner_exchange(aiohttp_client: Any, sandbox: TestServer) -> None:
    stream = io.StringIO()
    rig = await rig_with_log(aiohttp_client, sandbox, stream)
    resp = await rig.get("?product_code=error-S03", headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert resp.status == 503
    rid = resp.headers["X-Request-Id"]
    (record,) = [r for r in await log_records(stream, 1) if r["request_id"] == rid]
    assert set(record) == FIELDS
    assert record["event"] == "partner_call"
    assert (record["route"], record["cluster"], record["client_id"], record["method"]) == ("get_products", "tokopedia", "app-1", "GET")
    assert (record["partner_status"], record["partner_code"], record["error_type"], record["status"]) == (400, "S03", "ProductClosedException", 503)
    assert record["upstream_path"] == "/v2/product-list"
    assert record["attempts"] == 1 and record["token_source"] == "fetch" and record["breaker_state"] == "closed"
    assert record["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert record["traceparent"] == rig.partner.product_calls[-1].headers["traceparent"]
    assert isinstance(record["latency_ms"], float)


async def test_requests_refused_locally_are_not_partner_calls(aiohttp_client: Any, sandbox: TestServer) -> None:
    stream = io.StringIO()
    rig = await rig_with_log(aiohttp_client, sandbox, stream)
    assert (await rig.client.get("/v1/products")).status == 415
    assert (await rig.get()).status == 200
    records = await log_records(stream, 1)
    await asyncio.sleep(0.1)
    assert len([line for line in stream.getvalue().splitlines() if line]) == 1
    assert records[0]["status"] == 200 and records[0]["token_source"] == "fetch"


def test_control_characters_cannot_forge_records() -> None:
    stream = io.StringIO()
    log = CommunicationLog(stream=stream, redact_fields=["saldo"])
    log.start()
    try:
        log.write("partner_call", {"client_id": 'x"}\n{"event":"forged"}\r\n', "authorization": "Bearer abc", "saldo": 5})
    finally:
        log.stop()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "partner_call" and record["authorization"] == "[redacted]" and record["saldo"] == "[redacted]"


async def test_body_capture_is_opt_in_capped_and_redacted(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    routes = patched_routes(tmp_path, {"drain_timeout: 5s": "drain_timeout: 5s\nlog: {capture_bodies: true, max_body_bytes: 300, redact_fields: [price]}"})
    stream = io.StringIO()
    loaded = shipped_config(base(sandbox), routes=routes)
    state = build_state(loaded, log_stream=stream)
    client = await aiohttp_client(data_test_server(state))
    resp = await client.get("/v1/products?product_code=25k-xl", headers={"Content-Type": "application/json", "X-Client-Id": "a"})
    assert resp.status == 200
    (record,) = await log_records(stream, 1)
    assert len(record["response_body"]) <= 300
    assert '"price": "[redacted]"' in record["response_body"] and "24913" not in record["response_body"]


async def test_breaker_opening_and_notify_rules_post_to_every_sink(aiohttp_client: Any, sandbox: TestServer, receiver: Receiver, tmp_path: Path) -> None:
    routes = patched_routes(tmp_path, {"fail_max: 5": "fail_max: 2", "attempts: 1": "attempts: 0"})
    loaded = shipped_config(base(sandbox), routes=routes, **notify_env(receiver))
    state = build_state(loaded)
    client = await aiohttp_client(data_test_server(state))
    headers = {"Content-Type": "application/json", "X-Client-Id": "a"}
    for _ in range(4):
        await client.get("/v1/products?product_code=status-500", headers=headers)
    for _ in range(3):
        await client.get("/v1/products?product_code=status-500", headers=headers)  # open: short-circuited

    async def delivered() -> bool:
        return all(len(receiver.got[s]) >= 1 for s in ("slack", "datadog", "newrelic"))

    for _ in range(100):
        if await delivered():
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    for sink in ("slack", "datadog", "newrelic"):
        assert len(receiver.got[sink]) == 1, (sink, receiver.got[sink])  # one breaker-open message
    dd = receiver.got["datadog"][0]
    assert dd.headers["DD-API-KEY"] == DD_KEY
    assert "cluster:tokopedia" in dd.json["tags"] and "kind:breaker_open" in dd.json["tags"]
    assert receiver.got["newrelic"][0].headers["X-Insert-Key"] == NR_KEY
    assert receiver.got["newrelic"][0].json[0]["kind"] == "breaker_open"
    assert "tokopedia" in receiver.got["slack"][0].json["text"]


async def test_a_hanging_sink_delays_no_request(aiohttp_client: Any, sandbox: TestServer, receiver: Receiver) -> None:
    receiver.mode.update(slack="hang", datadog="500")
    loaded = shipped_config(base(sandbox), **notify_env(receiver))
    state = build_state(loaded)
    client = await aiohttp_client(data_test_server(state))
    admin = await aiohttp_client(build_admin_app(state))
    headers = {"Content-Type": "application/json", "X-Client-Id": "a"}
    statuses = [(await client.get("/v1/products?product_code=error-P08", headers=headers)).status for _ in range(3)]
    assert statuses == [403, 403, 403]  # P08 rule has notify: true; answers do not wait for sinks
    for _ in range(200):
        text = await (await admin.get("/metrics")).text()
        if 'sink="datadog",result="failure"' in text:
            break
        await asyncio.sleep(0.02)
    assert 'partner_proxy_notifications_total{result="failure",sink="datadog"}' in text or 'partner_proxy_notifications_total{sink="datadog",result="failure"}' in text


@pytest.mark.process
@pytest.mark.timeout(90)
async def test_secrets_never_appear_in_any_output(aiohttp_server: Any, receiver: Receiver, tmp_path: Path) -> None:
    """Scan stdout, stderr, /metrics, /config, error bodies and notifier payloads of a busy sidecar."""
    sandbox = await aiohttp_server(sandbox_app(token_ttl=2.0))
    routes = patched_routes(tmp_path, {"fail_max: 5": "fail_max: 2", "reset_timeout: 30s": "reset_timeout: 500ms", "refresh_before: 10m": "refresh_before: 1s"})
    env: Any = notify_env(receiver)  # Sidecar's **env are environment variables
    sidecar = Sidecar(base(sandbox), routes=routes, **env)
    await sidecar.start()
    seen: list[str] = []
    try:
        async with aiohttp.ClientSession() as s:
            for query in ("", "?product_code=25k-xl", "?product_code=error-P08", "?product_code=status-401", "?product_code=error-S03", "?product_code=not-exists", "?product_code=garbage"):
                status, body = await get_products(s, sidecar, query, Authorization="Bearer app-token-should-not-leak")
                seen.append(json.dumps(body))
            order = b'{"data":{"type":"order","id":"leak-1","attributes":{"product_code":"25k-xl","client_number":"081234567890"}}}'
            hdrs = {"Content-Type": "application/json", "X-Client-Id": "app-1"}
            for path, data in (("/v1/orders", order), ("/v1/orders", b"{}")):
                async with s.post(f"http://127.0.0.1:{sidecar.port}{path}", data=data, headers=hdrs) as r:
                    seen.append(await r.text())
            for rid in ("leak-1", "never"):
                async with s.get(f"http://127.0.0.1:{sidecar.port}/v1/orders/{rid}", headers=hdrs) as r:
                    seen.append(await r.text())
            for _ in range(3):
                await get_products(s, sidecar, "?product_code=status-500")
            sandbox.app[SANDBOX_STATE].revoke_all()
            await get_products(s, sidecar)
            await asyncio.sleep(2.5)  # let a token expire and be refreshed
            await get_products(s, sidecar)
            for path in ("/metrics", "/config", "/readyz"):
                async with s.get(sidecar.admin + path) as r:
                    seen.append(await r.text())
            await asyncio.sleep(0.5)
    finally:
        await sidecar.stop()
    seen += [sidecar.stdout(), sidecar.stderr()]
    seen += [rec.raw.decode(errors="replace") for sink in receiver.got.values() for rec in sink]
    shutil.rmtree(sidecar.dir, ignore_errors=True)
    partner = sandbox.app[SANDBOX_STATE]
    tokens = partner.tokens_issued
    assert len(tokens) >= 2 and any(receiver.got.values())
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    key_lines = [line for line in keys_for_tests().account_private_pem.splitlines() if len(line) > 40 and not line.startswith("-----")]
    assert len(key_lines) > 10
    forbidden = [CLIENT_SECRET, basic, DD_KEY, NR_KEY, SLACK_PATH, *tokens, *key_lines]
    everything = "\n".join(seen)
    for secret in forbidden:
        assert secret not in everything, f"leaked: {secret[:6]}..."
    assert '"partner_call"' in everything  # the scan did see the log


async def test_fast_and_generic_log_paths_write_the_same_record(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    """The template line (hot path) and the dict + json.dumps line (redaction/body capture) agree."""
    records = []
    for extra in ("", "\nlog: {capture_bodies: true, redact_fields: [response_body_never]}"):
        routes = patched_routes(tmp_path, {"drain_timeout: 5s": "drain_timeout: 5s" + extra})
        stream = io.StringIO()
        state = build_state(shipped_config(base(sandbox), routes=routes), log_stream=stream)
        client = await aiohttp_client(data_test_server(state))
        resp = await client.get("/v1/products?product_code=error-S03", headers={"Content-Type": "application/json", "X-Client-Id": 'quote"and\\nnewline', "X-Request-Id": "same-id"})
        assert resp.status == 503
        (record,) = await log_records(stream, 1)
        record.pop("response_body", None)
        records.append(record)
    fast, generic = records
    for r in records:
        r.pop("time"), r.pop("latency_ms"), r.pop("traceparent"), r.pop("token_source")
    assert fast == generic
    assert list(fast) == list(generic)  # same key order too
    assert fast["client_id"] == 'quote"and\\nnewline'
