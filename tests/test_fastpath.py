"""The callback path (``proxy.fastpath``) end to end, against the sandbox partner on loopback.

A rig's first request takes the task path: the token is not in memory yet and the pool has no
connection. Every later GET of the product list takes the callback path, which
``Listener.callback_requests`` counts. The central test here is parity. The same partner
behaviour, answered once on each path (a cold rig, then a warm one), must give the app the same
answer and the same number of partner calls, and must leave the same partner_call record.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import LISTENER
from proxy.listener import Listener
from tests.helpers import JSON_HEADERS, ROUTES, TEST_CLIENT, Rig, make_rig, partner_calls, patched_routes, sandbox_app, shipped_config
from tests.keys import keys_for_tests
from tests.test_partner_api import order


# PARTNER_PROXY_TEST_CLIENT=aiohttp runs the suite with ``client: aiohttp`` clusters, which have no
# callback path (the last test shows that); the rest of this module is about that path.
on_http11 = pytest.mark.skipif(TEST_CLIENT == "aiohttp", reason="the callback path needs the http11 transport")


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


def base(sandbox: TestServer) -> str:
    return str(sandbox.make_url("")).rstrip("/")


async def new_rig(aiohttp_client: Any, sandbox: TestServer, routes: Path | None = None) -> tuple[Rig, io.StringIO]:
    stream = io.StringIO()
    loaded = shipped_config(base(sandbox), routes=routes) if routes is not None else shipped_config(base(sandbox))
    return await make_rig(aiohttp_client, sandbox, loaded, log_stream=stream), stream


def listener_of(rig: Rig) -> Listener:
    server = rig.client.server
    listener = getattr(server, "listener", None)
    if listener is None:  # PARTNER_PROXY_DATA_SERVER=aiohttp: the app's
        assert isinstance(server, TestServer)
        listener = server.app[LISTENER]
    assert isinstance(listener, Listener)
    return listener


async def get(rig: Rig, **headers: str) -> tuple[int, dict[str, Any] | bytes, dict[str, str]]:
    resp = await rig.client.get("/v1/products", headers={**JSON_HEADERS, **headers})
    body = await resp.read()
    try:
        parsed: dict[str, Any] | bytes = json.loads(body)
    except ValueError:
        parsed = body
    return resp.status, parsed, dict(resp.headers)


@on_http11
async def test_a_warm_get_takes_the_callback_path(aiohttp_client: Any, sandbox: TestServer) -> None:
    rig, stream = await new_rig(aiohttp_client, sandbox)
    listener = listener_of(rig)
    first = await get(rig)
    assert (listener.task_requests, listener.callback_requests) == (1, 0), "cold: no token in memory, no pooled connection"
    second = await get(rig)
    assert (listener.task_requests, listener.callback_requests) == (1, 1)
    assert first[0] == second[0] == 200 and first[1] == second[1]
    assert len(rig.partner.product_calls) == 2
    cold, warm = await partner_calls(stream, 2)
    assert cold["token_source"] == "fetch" and warm["token_source"] == "memory"
    assert warm["attempts"] == 1 and warm["status"] == 200 and warm["partner_status"] == 200
    assert rig.partner.product_calls[-1].headers["Authorization"] == rig.partner.product_calls[0].headers["Authorization"]
    assert listener.inflight == 0


@on_http11
@pytest.mark.parametrize(
    "headers, status, code",
    [
        ({"Content-Type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ({"X-Client-Id": ""}, 400, "MISSING_HEADER"),
    ],
)
async def test_validation_answers_on_the_callback_path(
    aiohttp_client: Any, sandbox: TestServer, headers: dict[str, str], status: int, code: str
) -> None:
    rig, _ = await new_rig(aiohttp_client, sandbox)
    listener = listener_of(rig)
    got = await get(rig, **headers)
    assert got[0] == status and isinstance(got[1], dict) and got[1]["error"]["code"] == code
    assert listener.callback_requests == 1 and listener.task_requests == 0, "validation needs neither a token nor a connection"
    assert rig.partner.product_calls == []


@on_http11
async def test_a_wrong_method_is_405_without_a_task(aiohttp_client: Any, sandbox: TestServer) -> None:
    rig, _ = await new_rig(aiohttp_client, sandbox)
    listener = listener_of(rig)
    resp = await rig.client.delete("/v1/products", headers=JSON_HEADERS)
    assert resp.status == 405 and resp.headers["Allow"] == "GET"
    assert listener.callback_requests == 1 and listener.task_requests == 0


# Partner behaviours (sandbox faults) whose outcome must not depend on the path that met them.
FAULTS = [
    "error-S03",    # 400 JSON:API error, mapped by errors.yaml
    "error-S00",    # 500: retried once (retry_on: 5xx), then mapped
    "error-S01",    # 503: likewise
    "status-429",   # an HTML 429
    "garbage",      # 500 labelled JSON with a body that is not
    "reset",        # the connection reset, no answer
    "delay-30",     # slow but fine
    "error-X42",    # an unknown code: the table's default
]


def outcome(got: tuple[int, Any, dict[str, str]]) -> tuple[int, Any]:
    status, body, _ = got
    if isinstance(body, dict) and "error" in body:
        error = dict(body["error"])
        error.pop("request_id")
        return status, error
    return status, body


@on_http11
@pytest.mark.parametrize("fault", FAULTS)
async def test_both_paths_give_the_same_outcome(aiohttp_client: Any, sandbox: TestServer, fault: str) -> None:
    cold_rig, cold_log = await new_rig(aiohttp_client, sandbox)
    cold = await get(cold_rig, **{"X-Sandbox-Fault": fault})
    assert listener_of(cold_rig).task_requests == 1 and listener_of(cold_rig).callback_requests == 0
    cold_calls = len(cold_rig.partner.product_calls)

    warm_rig, warm_log = await new_rig(aiohttp_client, sandbox)
    await get(warm_rig)  # the token into memory, a connection into the pool
    before = len(warm_rig.partner.product_calls)
    warm = await get(warm_rig, **{"X-Sandbox-Fault": fault})
    assert listener_of(warm_rig).callback_requests == 1, "the warm request started on the callback path"
    assert outcome(warm) == outcome(cold)
    assert len(warm_rig.partner.product_calls) - before == cold_calls, "as many partner calls (retries) on both paths"
    (cold_rec,) = await partner_calls(cold_log, 1)
    warm_rec = (await partner_calls(warm_log, 2))[-1]
    same = ("status", "partner_status", "partner_code", "error_type", "attempts", "token_retried", "route", "cluster", "method")
    assert {k: warm_rec[k] for k in same} == {k: cold_rec[k] for k in same}
    assert listener_of(warm_rig).inflight == 0


@on_http11
async def test_a_rejected_token_is_renewed_and_the_request_sent_again(aiohttp_client: Any, sandbox: TestServer) -> None:
    rig, stream = await new_rig(aiohttp_client, sandbox)
    await get(rig)
    async with aiohttp.ClientSession() as session:  # every issued token becomes unknown: 403 P08
        async with session.post(str(rig.sandbox.make_url("/_sandbox/revoke"))) as r:
            assert r.status == 200
    got = await get(rig)
    assert got[0] == 200, got
    listener = listener_of(rig)
    assert listener.callback_requests == 1
    record = (await partner_calls(stream, 2))[-1]
    assert record["token_retried"] is True and record["attempts"] == 2 and record["status"] == 200
    tokens = [c.headers["Authorization"] for c in rig.partner.product_calls]
    assert len(tokens) == 3 and tokens[0] == tokens[1] != tokens[2], "the rejected token once, then a fresh one"


@on_http11
async def test_a_hanging_partner_times_out_on_the_coarse_clock(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    routes = patched_routes(tmp_path, {"    timeout: 10s                         # whole partner call": "    timeout: 300ms"})
    rig, stream = await new_rig(aiohttp_client, sandbox, routes)
    await get(rig)
    started = time.monotonic()
    got = await get(rig, **{"X-Sandbox-Fault": "hang"})
    took = time.monotonic() - started
    assert got[0] == 504 and isinstance(got[1], dict) and got[1]["error"]["code"] == "UPSTREAM_TIMEOUT", got
    assert 0.25 < took < 3.0, f"answered after {took:.2f}s for a 300 ms timeout"
    assert listener_of(rig).callback_requests == 1
    record = (await partner_calls(stream, 2))[-1]
    assert record["attempts"] == 1 and record["status"] == 504
    # the hung connection is never reused: the next request works
    assert (await get(rig))[0] == 200


@on_http11
async def test_the_drain_waits_for_a_request_on_the_callback_path(aiohttp_client: Any, sandbox: TestServer) -> None:
    rig, _ = await new_rig(aiohttp_client, sandbox)
    await get(rig)
    listener = listener_of(rig)
    slow = asyncio.ensure_future(get(rig, **{"X-Sandbox-Fault": "delay-300"}))
    for _ in range(100):
        if listener.inflight:
            break
        await asyncio.sleep(0.01)
    assert listener.inflight == 1 and listener.callback_requests == 1
    assert not await listener.wait_idle(0.05), "in flight: not idle yet"
    assert await listener.wait_idle(5.0)
    assert (await slow)[0] == 200


@on_http11
async def test_order_status_is_verified_on_the_callback_path(aiohttp_client: Any, sandbox: TestServer) -> None:
    rig, _ = await new_rig(aiohttp_client, sandbox)
    listener = listener_of(rig)
    for request_id, product in (("fp-ok", "25k-xl"), ("fp-missing", "sign-missing"), ("fp-bad", "sign-bad")):
        resp = await rig.client.post("/v1/orders", data=order(request_id, product_code=product), headers=JSON_HEADERS)
        assert resp.status == 200, await resp.text()
    assert listener.task_requests == 3 and listener.callback_requests == 0, "a body route always takes a task"
    ok = await rig.client.get("/v1/orders/fp-ok", headers=JSON_HEADERS)
    raw = await ok.read()
    assert ok.status == 200 and keys_for_tests().sandbox.verifier.verify(raw, ok.headers["Signature"])
    for request_id, reason in (("fp-missing", "missing"), ("fp-bad", "invalid")):
        bad = await rig.client.get(f"/v1/orders/{request_id}", headers=JSON_HEADERS)
        assert bad.status == 502 and "Signature" not in bad.headers
        assert (await bad.json())["error"]["code"] == "PARTNER_SIGNATURE_INVALID"
        assert f'partner_proxy_signature_failures_total{{reason="{reason}",route="order_status"}} 1.0' in await rig.metrics()
    assert listener.callback_requests == 3
    unknown = await rig.client.get("/v1/orders/fp-never", headers=JSON_HEADERS)  # P02: not signed, mapped
    assert unknown.status == 404 and (await unknown.json())["error"]["type"] == "OrderNotFound"
    assert listener.callback_requests == 4


async def test_an_aiohttp_cluster_takes_the_task_path(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    text = ROUTES.read_text()
    routes = tmp_path / "routes.yaml"
    routes.write_text(re.sub(r"^    (# )?client: \w+.*$", "    client: aiohttp", text, count=1, flags=re.M))
    rig, _ = await new_rig(aiohttp_client, sandbox, routes)
    listener = listener_of(rig)
    assert (await get(rig))[0] == (await get(rig))[0] == 200
    assert (listener.task_requests, listener.callback_requests) == (2, 0)
