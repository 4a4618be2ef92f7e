"""The whole partner API through the sidecar, against the sandbox partner on loopback: balance,
inquiry, signed checkout, verified order status, path templates, bodies and money safety."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.sandbox import SANDBOX_STATE, SandboxState
from tests.helpers import JSON_HEADERS, Rig, make_rig, patched_routes, sandbox_app, shipped_config
from tests.keys import keys_for_tests


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app(settle_after=0.05))


def base(sandbox: TestServer) -> str:
    return str(sandbox.make_url("")).rstrip("/")


@pytest.fixture
async def rig(aiohttp_client: Any, sandbox: TestServer) -> Rig:
    return await make_rig(aiohttp_client, sandbox, shipped_config(base(sandbox)))


def partner(rig: Rig) -> SandboxState:
    return rig.sandbox.app[SANDBOX_STATE]


def calls(rig: Rig, path: str) -> list[Any]:
    return [c for c in partner(rig).api_calls if c.path == path]


def order(request_id: str, product_code: str = "25k-xl", client_number: str = "081234567890") -> bytes:
    # deliberately not what json.dumps would write: the partner must get these bytes, not a re-serialisation
    return (
        '{ "data" :{"id":"%s","type":"order",  "attributes":{"product_code":"%s","client_number":"%s","amount":0}}}\n'
        % (request_id, product_code, client_number)
    ).encode()


async def post(rig: Rig, path: str, body: bytes, **headers: str) -> Any:
    return await rig.client.post(path, data=body, headers={**JSON_HEADERS, **headers})


async def get(rig: Rig, path: str, **headers: str) -> Any:
    return await rig.client.get(path, headers={**JSON_HEADERS, **headers})


async def envelope(resp: Any) -> dict[str, Any]:
    assert resp.headers["Content-Type"].startswith("application/json")
    err: dict[str, Any] = (await resp.json())["error"]
    assert err["request_id"] == resp.headers["X-Request-Id"]
    return err


# --- balance and inquiry --------------------------------------------------------------------------

async def test_balance_passes_through_with_accept_and_a_fresh_date(rig: Rig) -> None:
    resp = await get(rig, "/v1/balance")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["data"]["type"] == "account" and isinstance(doc["data"]["attributes"]["saldo"], int)
    (call,) = calls(rig, "/v2/account")
    assert call.headers["Accept"] == "application/json"
    assert call.headers["Date"].endswith(" GMT") and call.headers["Authorization"].startswith("Bearer ")
    assert "X-Client-Id" in call.headers


async def test_inquiry_forwards_the_apps_bytes(rig: Rig) -> None:
    body = b'{"data":{"type":"inquiry","attributes":{"product_code":"pln-postpaid","client_number":"2121212"}}}'
    resp = await post(rig, "/v1/inquiries", body)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["data"]["attributes"]["admin_fee"] == 2500
    assert calls(rig, "/v2/inquiry")[-1].body == body


@pytest.mark.parametrize(
    "body,field",
    [
        (b'{"data":{"type":"inquiry","attributes":{"product_code":"pln-postpaid"}}}', "body.data.attributes.client_number is required"),
        (b'{"data":{"type":"order","attributes":{"product_code":"a","client_number":"b"}}}', "body.data.type must be 'inquiry'"),
        (b'{"data":{"type":"inquiry","attributes":{"product_code":"a","client_number":2121212}}}', "body.data.attributes.client_number must be of type string"),
        (b"product_code=a", "the body is not JSON"),
        (b"", "the body is not JSON"),
    ],
)
async def test_a_bad_body_is_invalid_body_naming_the_field_and_the_partner_sees_nothing(rig: Rig, body: bytes, field: str) -> None:
    resp = await post(rig, "/v1/inquiries", body)
    assert resp.status == 400
    err = await envelope(resp)
    assert (err["type"], err["code"]) == ("InvalidBody", "INVALID_BODY") and field in err["message"]
    assert calls(rig, "/v2/inquiry") == []


async def test_a_body_over_the_route_limit_is_413(rig: Rig) -> None:
    body = b'{"data":{"type":"inquiry","attributes":{"product_code":"a","client_number":"' + b"1" * 70000 + b'"}}}'
    resp = await post(rig, "/v1/inquiries", body)
    assert resp.status == 413 and (await envelope(resp))["code"] == "PAYLOAD_TOO_LARGE"
    assert calls(rig, "/v2/inquiry") == []


# --- checkout: signed bytes ---------------------------------------------------------------------

async def test_checkout_sends_the_exact_bytes_signed_with_the_account_key(rig: Rig) -> None:
    body = order("rq-1")
    resp = await post(rig, "/v1/orders", body, Signature="app-made-this-up")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["data"]["attributes"]["status"] == "Pending"
    (call,) = calls(rig, "/v2/order")
    assert call.body == body  # byte for byte, not re-serialised
    signatures = call.headers.getall("Signature")
    assert len(signatures) == 1 and signatures[0] != "app-made-this-up"  # the app's never reaches the partner
    assert keys_for_tests().sandbox.account.verify(body, signatures[0])  # verifiable with the account's public key
    base64.b64decode(signatures[0], validate=True)  # standard base64
    assert partner(rig).orders.get("rq-1") is not None


async def test_a_reused_request_id_is_409_duplicate_and_charged_once(rig: Rig) -> None:
    assert (await post(rig, "/v1/orders", order("rq-dup"))).status == 200
    balance = partner(rig).orders.balance
    resp = await post(rig, "/v1/orders", order("rq-dup"))
    assert resp.status == 409
    err = await envelope(resp)
    assert (err["type"], err["code"], err["partner_code"]) == ("DuplicateRequest", "DUPLICATE_REQUEST", "P03")
    assert partner(rig).orders.balance == balance


async def test_a_checkout_the_partner_hangs_on_is_504_outcome_unknown_and_sent_once_even_with_retries(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    routes = patched_routes(tmp_path, {"retry: {attempts: 1,": "retry: {attempts: 3,", "timeout: 10s": "timeout: 500ms"})
    rig = await make_rig(aiohttp_client, sandbox, shipped_config(base(sandbox), routes=routes))
    resp = await post(rig, "/v1/orders", order("rq-hang", product_code="hang"))
    assert resp.status == 504
    err = await envelope(resp)
    assert (err["type"], err["code"]) == ("OutcomeUnknown", "UPSTREAM_OUTCOME_UNKNOWN")
    assert "data.id" in err["message"]
    assert len(calls(rig, "/v2/order")) == 1  # never re-sent: the partner took the order
    assert partner(rig).orders.get("rq-hang") is not None
    status = await get(rig, "/v1/orders/rq-hang")  # what the message tells the app to do
    assert status.status == 200 and (await status.json())["data"]["attributes"]["status"] in ("Pending", "Success")


async def test_a_rejected_token_on_checkout_is_resent_once_with_the_same_bytes_and_a_fresh_signature(rig: Rig) -> None:
    assert (await get(rig, "/v1/balance")).status == 200  # a cached token
    partner(rig).revoke_all()  # the partner now answers P08 to it: refused before acting
    body = order("rq-p08")
    resp = await post(rig, "/v1/orders", body)
    assert resp.status == 200, await resp.text()
    first, second = calls(rig, "/v2/order")
    assert first.body == second.body == body
    assert first.headers["Authorization"] != second.headers["Authorization"]
    assert first.headers["Signature"] != second.headers["Signature"]  # PSS: signed afresh
    assert all(keys_for_tests().sandbox.account.verify(body, c.headers["Signature"]) for c in (first, second))
    assert len(partner(rig).orders) == 1


# --- order status: verified answers -------------------------------------------------------------

async def settled(rig: Rig, request_id: str) -> Any:
    for _ in range(100):
        resp = await get(rig, f"/v1/orders/{request_id}")
        if resp.status != 200 or (await resp.json())["data"]["attributes"]["status"] != "Pending":
            return resp
        await asyncio.sleep(0.02)
    raise AssertionError("still pending")


async def test_order_status_passes_a_verified_answer_and_its_signature_through(rig: Rig) -> None:
    assert (await post(rig, "/v1/orders", order("rq-ok"))).status == 200
    resp = await settled(rig, "rq-ok")
    assert resp.status == 200
    raw = await resp.read()
    assert json.loads(raw)["data"]["attributes"]["status"] == "Success"
    assert keys_for_tests().sandbox.verifier.verify(raw, resp.headers["Signature"])  # the partner's, unchanged
    assert calls(rig, "/v2/order/rq-ok")[-1].headers["Accept"] == "application/json"


@pytest.mark.parametrize("fault,reason", [("sign-missing", "missing"), ("sign-bad", "invalid")])
async def test_a_status_answer_whose_signature_fails_is_502_signature_invalid(rig: Rig, fault: str, reason: str) -> None:
    assert (await post(rig, "/v1/orders", order("rq-" + fault, product_code=fault))).status == 200
    resp = await get(rig, f"/v1/orders/rq-{fault}")
    assert resp.status == 502
    err = await envelope(resp)
    assert (err["type"], err["code"]) == ("SignatureInvalid", "PARTNER_SIGNATURE_INVALID")
    assert "Signature" not in resp.headers
    assert f'partner_proxy_signature_failures_total{{reason="{reason}",route="order_status"}} 1.0' in await rig.metrics()


async def test_an_unknown_order_is_404_order_not_found(rig: Rig) -> None:
    resp = await get(rig, "/v1/orders/never-placed")
    assert resp.status == 404
    err = await envelope(resp)
    assert (err["type"], err["code"], err["partner_code"]) == ("OrderNotFound", "ORDER_NOT_FOUND", "P02")


@pytest.mark.parametrize(
    "path",
    ["/v1/orders/..", "/v1/orders/.", "/v1/orders/%2E%2E", "/v1/orders/a%2Fb", "/v1/orders/a/b", "/v1/orders/",
     "/v1/orders/" + "x" * 200, "/v1/orders/a%00", "/v1/orders/a%20b", "/v1/orders/..%2Fproducts", "/v1/orders/../products"],
)
async def test_path_tricks_are_400_and_never_reach_the_partner(rig: Rig, path: str) -> None:
    # a raw socket: HTTP clients normalise "..", and the point is what the sidecar does with it
    assert rig.client.server.host and rig.client.server.port
    reader, writer = await asyncio.open_connection(rig.client.server.host, rig.client.server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Client-Id: a\r\nConnection: close\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), raw[:300]
    err = json.loads(body)["error"]
    assert (err["type"], err["code"]) == ("BadRequest", "INVALID_PATH_PARAMETER")
    assert [c.path for c in partner(rig).api_calls] == [] and partner(rig).product_calls == []


async def test_methods_outside_the_route_are_405(rig: Rig) -> None:
    resp = await rig.client.delete("/v1/orders/rq-1", headers=JSON_HEADERS)
    assert resp.status == 405 and resp.headers["Allow"] == "GET"
    resp = await rig.client.get("/v1/orders", headers=JSON_HEADERS)
    assert resp.status == 405 and resp.headers["Allow"] == "POST"


# --- a bug in the accounting never changes the answer ------------------------------------------


class BrokenObserver:
    """An observer with a bug (a metrics or log observer that raises): added to the runtime's own."""

    def __init__(self) -> None:
        self.finished: list[int] = []

    def on_start(self, ex: Any, route: Any) -> None:
        pass

    def on_finish(self, ex: Any, route: Any, status: int, upstream: Any) -> None:
        self.finished.append(status)
        raise RuntimeError("an accounting bug")


def with_broken_observer(rig: Rig, lanes: bool = True) -> BrokenObserver:
    """The rig's runtime with a raising observer first (the real ones after it); ``lanes=False``
    also takes the lane away, so a product list runs on the ordinary callback path."""
    broken = BrokenObserver()
    runtime = rig.state.current()
    changes: dict[str, Any] = {"observers": (broken, *runtime.observers)}
    if not lanes:
        changes.update(lanes={}, template_lanes={})
    rig.state.runtime = dataclasses.replace(runtime, **changes)
    return broken


async def test_a_checkout_the_partner_accepted_is_answered_as_accepted_whatever_the_accounting_does(
    rig: Rig, caplog: pytest.LogCaptureFixture,
) -> None:
    """Money: the partner has charged the account; a 500 would tell the app nothing of that."""
    broken = with_broken_observer(rig)
    resp = await post(rig, "/v1/orders", order("rq-acct"), **{"X-Request-Id": "rq-acct-call"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["data"]["attributes"]["status"] == "Pending"
    assert broken.finished == [200]
    assert len(calls(rig, "/v2/order")) == 1 and partner(rig).orders.get("rq-acct") is not None
    assert "unhandled error accounting route checkout (request rq-acct-call); the answer stands" in caplog.text
    metrics = await (await rig.admin.get("/metrics")).text()
    assert 'partner_proxy_requests_total{route="checkout",status="200"} 1.0' in metrics, "the observers after it still ran"


async def test_on_the_callback_path_a_bug_in_the_accounting_leaves_the_partners_answer(
    rig: Rig, caplog: pytest.LogCaptureFixture,
) -> None:
    (await get(rig, "/v1/products")).release()  # token in memory, a pooled connection: the callback path
    broken = with_broken_observer(rig, lanes=False)
    listener = getattr(rig.client.server, "listener", None)  # the h1 server's (the suite's default)
    before = listener.callback_requests if listener is not None else 0
    resp = await get(rig, "/v1/products", **{"X-Request-Id": "cb-acct"})
    assert resp.status == 200 and (await resp.json())["data"]
    if listener is not None:
        assert listener.callback_requests == before + 1 and listener.lane_requests == 0, "the ordinary callback path"
    assert broken.finished == [200]
    assert "unhandled error accounting route get_products (request cb-acct); the answer stands" in caplog.text
