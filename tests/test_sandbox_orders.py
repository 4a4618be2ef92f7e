"""The sandbox's money endpoints: account, inquiry, checkout, check status, and checkout faults.

Real HTTP on loopback (``aiohttp_client``): signatures are checked over the bytes that crossed
the wire, so the tests send exact bytes (``data=``), never ``json=``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from proxy.sandbox import SANDBOX_STATE, SandboxSettings, SandboxState, build_sandbox_app
from proxy.sandbox.bills import BILL_ALREADY_PAID, BILL_NOT_FOUND
from proxy.sandbox.catalogue import (
    FAULT_PRODUCT,
    PRODUCTS_BY_CODE,
    FailFault,
    InvalidFault,
    OrderResetFault,
    SignatureFault,
    is_fault_token,
    parse_fault,
)
from proxy.sandbox.keys import SandboxKeys
from proxy.signing import Signer

MakeClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]
BALANCE = 50_000_000
XL = PRODUCTS_BY_CODE["25k-xl"].price  # 24913


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys() -> SandboxKeys:
    return SandboxKeys.generate()  # once per module: RSA generation is the slow part


def make_app(keys: SandboxKeys, **settings: Any) -> web.Application:
    return build_sandbox_app(SandboxSettings(keys=keys, **settings))


@pytest.fixture
async def client(aiohttp_client: MakeClient, keys: SandboxKeys) -> Client:
    # force_close: a reset or hang on one request must not poison a pooled connection.
    return await aiohttp_client(make_app(keys, settle_after=3600), connector=aiohttp.TCPConnector(force_close=True))


def state_of(client: Client) -> SandboxState:
    return client.app[SANDBOX_STATE]


async def auth(client: Client) -> dict[str, str]:
    return {"Authorization": f"Bearer {state_of(client).issue_token()}"}


def order_body(request_id: str, product_code: str = "25k-xl", client_number: str = "081234567890", **attrs: Any) -> bytes:
    """Bytes the way py_sat sends them: json.dumps defaults (spaced), id before type."""
    attributes = {"product_code": product_code, "client_number": client_number, "amount": 0.0, **attrs}
    return json.dumps({"data": {"id": request_id, "type": "order", "attributes": attributes}}).encode()


async def checkout(client: Client, body: bytes, *, sign: bool = True, headers: dict[str, str] | None = None, **kwargs: Any) -> aiohttp.ClientResponse:
    h = {**(await auth(client)), "Content-Type": "application/json", **(headers or {})}
    if sign:
        signer = state_of(client).keys.account_signer
        assert signer is not None
        h.setdefault("Signature", signer.sign(body))
    return await client.post("/v2/order", data=body, headers=h, **kwargs)


async def status(client: Client, request_id: str, **headers: str) -> aiohttp.ClientResponse:
    return await client.get(f"/v2/order/{request_id}", headers={**(await auth(client)), **headers})


async def balance(client: Client) -> int:
    resp = await client.get("/v2/account", headers=await auth(client))
    assert resp.status == 200
    saldo = (await resp.json())["data"]["attributes"]["saldo"]
    assert isinstance(saldo, int)
    return saldo


async def assert_error(resp: aiohttp.ClientResponse, code: str, status: int = 400) -> None:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["errors"][0]["code"] == code
    assert body["errors"][0]["status"] == str(status)
    assert "data" not in body
    assert "Signature" not in resp.headers  # errors are never signed


async def verified(client: Client, resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The status document, after checking its Signature over the raw bytes received."""
    raw = await resp.read()
    assert state_of(client).keys.verifier.verify(raw, resp.headers["Signature"])
    doc = json.loads(raw)
    assert isinstance(doc, dict)
    return doc


# --------------------------------------------------------------------------- account


async def test_account_balance(client: Client) -> None:
    resp = await client.get("/v2/account", headers=await auth(client))
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == {"data": {"type": "account", "id": "2203", "attributes": {"saldo": BALANCE}}}


@pytest.mark.parametrize("path", ["/v2/account", "/v2/order/R1"])
async def test_reads_need_a_token(client: Client, path: str) -> None:
    assert (await client.get(path)).status == 401
    await assert_error(await client.get(path, headers={"Authorization": "Bearer c:unknown"}), "P08", 403)


async def test_checkout_needs_a_token_before_anything(client: Client) -> None:
    resp = await client.post("/v2/order", data=order_body("R1"))
    assert resp.status == 401
    resp = await client.post("/v2/order", data=order_body("R1"), headers={"Authorization": "Bearer c:nope"})
    await assert_error(resp, "P08", 403)
    assert len(state_of(client).orders) == 0


# --------------------------------------------------------------------------- inquiry


async def inquiry(client: Client, product_code: str, client_number: str, **attrs: Any) -> aiohttp.ClientResponse:
    body = {"data": {"type": "inquiry", "attributes": {"product_code": product_code, "client_number": client_number, **attrs}}}
    return await client.post("/v2/inquiry", data=json.dumps(body), headers=await auth(client))


async def test_inquiry_of_a_bill(client: Client) -> None:
    resp = await inquiry(client, "pln-postpaid", "2121212", fields=[{"name": "a", "value": "b"}])
    assert resp.status == 200
    doc = await resp.json()
    assert doc["data"]["type"] == "inquiry"
    assert doc["data"]["id"] == "2121212"
    attrs = doc["data"]["attributes"]
    assert set(attrs) == {"admin_fee", "base_price", "client_name", "client_number", "fields", "inquiry_result", "meter_id", "product_code", "sales_price"}
    assert attrs["product_code"] == "pln-postpaid" and attrs["client_number"] == "2121212"
    assert attrs["admin_fee"] == 2500
    assert attrs["sales_price"] == attrs["base_price"] + attrs["admin_fee"]
    assert attrs["fields"] == [{"name": "a", "value": "b"}]
    assert all(set(item) == {"name", "value"} for item in attrs["inquiry_result"])
    again = await (await inquiry(client, "pln-postpaid", "2121212")).json()
    assert again["data"]["attributes"]["base_price"] == attrs["base_price"]  # the same bill twice


async def test_inquiry_of_a_fixed_price_product(client: Client) -> None:
    attrs = (await (await inquiry(client, "pln-prepaid-20k", "12345678901")).json())["data"]["attributes"]
    assert (attrs["base_price"], attrs["admin_fee"], attrs["sales_price"]) == (20000, 1500, 21500)
    assert attrs["fields"] is None


@pytest.mark.parametrize(
    ("product", "number", "code"),
    [
        ("not-exists", "2121212", "P04"),
        ("25k-xl", "2121212", "P01"),  # not an inquiry product
        ("pln-postpaid", "12ab", "U01"),
        ("pln-postpaid", "123", "U01"),
        ("pln-postpaid", BILL_NOT_FOUND, "U02"),
        ("pln-postpaid", BILL_ALREADY_PAID, "U03"),
        ("error-U02", "2121212", "U02"),  # the generic fault grammar works here too
    ],
)
async def test_inquiry_errors(client: Client, product: str, number: str, code: str) -> None:
    await assert_error(await inquiry(client, product, number), code)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"data": {"type": "order", "attributes": {"product_code": "pln-postpaid", "client_number": "2121212"}}}',
     b'{"data": {"type": "inquiry", "attributes": {"product_code": "pln-postpaid"}}}'],
)
async def test_inquiry_bad_bodies_are_p01(client: Client, body: bytes) -> None:
    await assert_error(await client.post("/v2/inquiry", data=body, headers=await auth(client)), "P01")


# --------------------------------------------------------------------------- checkout


async def test_checkout_takes_a_pending_order_and_charges_it(client: Client) -> None:
    resp = await checkout(client, order_body("R1"))
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    doc = await resp.json()
    assert doc == {
        "data": {
            "type": "order",
            "id": "R1",
            "attributes": {
                "client_number": "081234567890",
                "error_code": "",
                "error_detail": "",
                "fields": None,
                "fulfilled_at": None,
                "partner_fee": 0,
                "product_code": "25k-xl",
                "sales_price": XL,
                "serial_number": "",
                "status": "Pending",
            },
        }
    }
    assert await balance(client) == BALANCE - XL


async def test_checkout_of_a_bill_charges_what_the_inquiry_said(client: Client) -> None:
    quoted = (await (await inquiry(client, "pln-postpaid", "2121212")).json())["data"]["attributes"]["sales_price"]
    resp = await checkout(client, order_body("B1", "pln-postpaid", "2121212", amount=quoted))
    assert resp.status == 200
    assert (await resp.json())["data"]["attributes"]["sales_price"] == quoted
    assert await balance(client) == BALANCE - quoted


async def test_amount_other_than_the_price_is_p07(client: Client) -> None:
    await assert_error(await checkout(client, order_body("R1", amount=XL + 1)), "P07")
    assert (await checkout(client, order_body("R2", amount=XL))).status == 200  # exact: fine
    assert (await checkout(client, order_body("R3", amount=0))).status == 200  # Go sends 0


async def test_missing_signature_is_p09_and_nothing_is_taken(client: Client) -> None:
    await assert_error(await checkout(client, order_body("R1"), sign=False), "P09")
    assert len(state_of(client).orders) == 0
    assert await balance(client) == BALANCE


@pytest.mark.parametrize("signature", ["garbage!!", "", "AAAA", base64.b64encode(b"\0" * 256).decode()])
async def test_bad_signature_is_p09(client: Client, signature: str) -> None:
    await assert_error(await checkout(client, order_body("R1"), headers={"Signature": signature}), "P09")
    assert len(state_of(client).orders) == 0


async def test_signature_covers_the_raw_bytes_not_the_json(client: Client) -> None:
    """Same JSON content, other bytes (compact instead of spaced): the signature no longer fits."""
    spaced = order_body("R1")
    compact = json.dumps(json.loads(spaced), separators=(",", ":")).encode()
    assert json.loads(compact) == json.loads(spaced) and compact != spaced
    signer = state_of(client).keys.account_signer
    assert signer is not None
    await assert_error(await checkout(client, compact, headers={"Signature": signer.sign(spaced)}), "P09")
    assert (await checkout(client, compact)).status == 200  # its own signature: fine


async def test_a_key_other_than_the_accounts_is_p09(client: Client) -> None:
    stranger = Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    body = order_body("R1")
    await assert_error(await checkout(client, body, headers={"Signature": stranger.sign(body)}), "P09")
    sandbox_own = state_of(client).keys.signer  # the sandbox's own key is not the account's
    await assert_error(await checkout(client, body, headers={"Signature": sandbox_own.sign(body)}), "P09")


async def test_signature_header_in_lower_case_and_salt_32_are_accepted(client: Client) -> None:
    """py_sat sends ``signature``; node-sat signs with salt 32 (digest length)."""
    body = order_body("R1")
    signer = state_of(client).keys.account_signer
    assert signer is not None
    assert (await checkout(client, body, sign=False, headers={"signature": signer.sign(body)})).status == 200
    key: rsa.RSAPrivateKey = signer._key
    pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    body2 = order_body("R2")
    salt32 = base64.b64encode(key.sign(body2, pad, hashes.SHA256())).decode()
    assert (await checkout(client, body2, headers={"Signature": salt32})).status == 200


async def test_reused_id_is_p03_and_the_first_order_stands(client: Client) -> None:
    assert (await checkout(client, order_body("R1"))).status == 200
    await assert_error(await checkout(client, order_body("R1")), "P03")
    await assert_error(await checkout(client, order_body("R1", "google-play-100k")), "P03")  # other body: same
    assert await balance(client) == BALANCE - XL  # charged once
    doc = await verified(client, await status(client, "R1"))
    assert doc["data"]["attributes"]["product_code"] == "25k-xl"


async def test_insufficient_balance_is_p06_and_nothing_is_taken(aiohttp_client: MakeClient, keys: SandboxKeys) -> None:
    client = await aiohttp_client(make_app(keys, balance=XL + 100))
    assert (await checkout(client, order_body("R1"))).status == 200
    await assert_error(await checkout(client, order_body("R2")), "P06")
    assert "R2" not in state_of(client).orders
    assert await balance(client) == 100


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "JSON"),
        (b'{"data": {"type": "inquiry", "id": "R1", "attributes": {"product_code": "25k-xl", "client_number": "0812345"}}}', "data.type"),
        (b'{"data": {"type": "order", "attributes": {"product_code": "25k-xl", "client_number": "0812345"}}}', "data.id"),
        (b'{"data": {"type": "order", "id": "a/b", "attributes": {"product_code": "25k-xl", "client_number": "0812345"}}}', "data.id"),
        (b'{"data": {"type": "order", "id": "..", "attributes": {"product_code": "25k-xl", "client_number": "0812345"}}}', "data.id"),
        (b'{"data": {"type": "order", "id": "R1", "attributes": {"client_number": "0812345"}}}', "product_code"),
        (b'{"data": {"type": "order", "id": "R1", "attributes": {"product_code": "25k-xl", "client_number": 812345}}}', "client_number"),
        (b'{"data": {"type": "order", "id": "R1", "attributes": {"product_code": "25k-xl", "client_number": "0812345", "amount": "1"}}}', "amount"),
        (b'{"data": {"type": "order", "id": "R1", "attributes": {"product_code": "25k-xl", "client_number": "0812345", "fields": [1]}}}', "fields"),
    ],
)
async def test_bad_checkout_bodies_are_p01_naming_the_field(client: Client, body: bytes, field: str) -> None:
    resp = await checkout(client, body)
    await assert_error(resp, "P01")
    assert field in (await resp.json())["errors"][0]["detail"]
    assert len(state_of(client).orders) == 0


@pytest.mark.parametrize(
    ("product", "number", "code"),
    [("not-exists", "081234567", "P04"), ("telkomsel-50k", "081234567", "S03"), ("indosat-10k", "081234567", "S02"), ("25k-xl", "08-12", "U01")],
)
async def test_checkout_refusals(client: Client, product: str, number: str, code: str) -> None:
    await assert_error(await checkout(client, order_body("R1", product, number)), code)
    assert await balance(client) == BALANCE


# --------------------------------------------------------------------------- lifecycle and status


async def test_pending_then_success_after_settle_after(aiohttp_client: MakeClient, keys: SandboxKeys) -> None:
    client = await aiohttp_client(make_app(keys, settle_after=0.05))
    assert (await checkout(client, order_body("R1", fields=[{"name": "n", "value": "v"}]))).status == 200
    seen = []
    for _ in range(200):  # bounded poll; no timing is asserted
        attrs = (await verified(client, await status(client, "R1")))["data"]["attributes"]
        seen.append(attrs["status"])
        if attrs["status"] != "Pending":
            break
        await asyncio.sleep(0.02)
    assert seen[-1] == "Success" and set(seen) <= {"Pending", "Success"}
    assert attrs["error_code"] == "" and attrs["error_detail"] == ""
    assert attrs["fulfilled_at"].endswith("Z") and attrs["serial_number"]
    assert attrs["fulfillment_result"] == [{"name": "Serial Number", "value": attrs["serial_number"]}]
    assert attrs["fields"] == [{"name": "n", "value": "v"}]
    assert {"voucher_code", "admin_fee", "client_name"} <= set(attrs)
    assert await balance(client) == BALANCE - XL  # success keeps the charge


async def test_status_answers_are_signed_with_the_sandboxs_own_key(client: Client) -> None:
    await checkout(client, order_body("R1"))
    resp = await status(client, "R1")
    assert resp.status == 200 and resp.content_type == "application/json"
    raw = await resp.read()
    keys = state_of(client).keys
    assert keys.verifier.verify(raw, resp.headers["Signature"])
    assert not keys.account.verify(raw, resp.headers["Signature"])  # not the account's key
    # Max salt, as py_sat demands (it verifies with exactly k - 34 bytes of salt).
    exact = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=256 - 34)
    keys.signer._key.public_key().verify(base64.b64decode(resp.headers["Signature"]), raw, exact, hashes.SHA256())


async def test_unknown_order_is_p02_unsigned(client: Client) -> None:
    await assert_error(await status(client, "never-seen"), "P02")


async def test_fail_fault_settles_failed_and_refunds(aiohttp_client: MakeClient, keys: SandboxKeys) -> None:
    clock = FakeClock()
    client = await aiohttp_client(build_sandbox_app(SandboxSettings(keys=keys, settle_after=5), clock=clock))
    # fail-<CODE> as product code: the stand-in product; as client number: the real product.
    assert (await checkout(client, order_body("F1", "fail-S02"))).status == 200
    assert (await checkout(client, order_body("F2", "25k-xl", "fail-S03"))).status == 200
    assert await balance(client) == BALANCE - FAULT_PRODUCT.price - XL
    assert (await verified(client, await status(client, "F1")))["data"]["attributes"]["status"] == "Pending"
    clock.now += 4.9
    assert (await verified(client, await status(client, "F2")))["data"]["attributes"]["status"] == "Pending"
    clock.now += 0.2
    f1 = (await verified(client, await status(client, "F1")))["data"]["attributes"]
    f2 = (await verified(client, await status(client, "F2")))["data"]["attributes"]
    assert (f1["status"], f1["error_code"], f1["error_detail"]) == ("Failed", "S02", "Product is not available")
    assert (f2["status"], f2["error_code"], f2["product_code"]) == ("Failed", "S03", "25k-xl")
    assert f1["fulfilled_at"] is None and f1["serial_number"] == ""
    assert await balance(client) == BALANCE  # both refunded


# --------------------------------------------------------------------------- checkout faults


@pytest.mark.parametrize(("token", "status"), [("error-S00", 500), ("error-P08", 403), ("error-S01", 503), ("error-X42", 400)])
async def test_reject_faults_answer_before_acting(client: Client, token: str, status: int) -> None:
    resp = await checkout(client, order_body("R1", token))
    await assert_error(resp, token.removeprefix("error-"), status)
    assert len(state_of(client).orders) == 0 and await balance(client) == BALANCE
    assert (await checkout(client, order_body("R1"))).status == 200  # the id is still free


async def test_status_and_garbage_faults_answer_before_acting(client: Client) -> None:
    resp = await checkout(client, order_body("R1", "status-502"))
    assert resp.status == 502 and resp.content_type == "text/html"
    resp = await checkout(client, order_body("R2", "garbage"))
    assert resp.status == 500 and resp.content_type == "application/json"
    with pytest.raises(ValueError):
        json.loads(await resp.read())
    assert len(state_of(client).orders) == 0


async def test_reset_fault_reads_the_body_then_resets_without_an_order(client: Client) -> None:
    with pytest.raises(aiohttp.ClientConnectionError):
        await checkout(client, order_body("R1", "reset"))
    assert "R1" not in state_of(client).orders and await balance(client) == BALANCE
    await assert_error(await status(client, "R1"), "P02")


async def test_header_reset_fault_with_a_real_product(client: Client) -> None:
    with pytest.raises(aiohttp.ClientConnectionError):
        await checkout(client, order_body("R1"), headers={"X-Sandbox-Fault": "reset"})
    assert len(state_of(client).orders) == 0


async def test_order_reset_fault_takes_the_order_then_resets(client: Client) -> None:
    with pytest.raises(aiohttp.ClientConnectionError):
        await checkout(client, order_body("R1", "order-reset"))
    doc = await verified(client, await status(client, "R1"))
    assert doc["data"]["attributes"]["product_code"] == "order-reset"
    assert await balance(client) == BALANCE - FAULT_PRODUCT.price
    await assert_error(await checkout(client, order_body("R1", "order-reset")), "P03")  # a blind retry


async def test_hang_fault_takes_the_order_and_never_answers(client: Client) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await checkout(client, order_body("H1", "hang"), timeout=aiohttp.ClientTimeout(total=0.3))
    doc = await verified(client, await status(client, "H1"))  # the order exists
    assert doc["data"]["attributes"]["status"] == "Pending"
    assert await balance(client) == BALANCE - FAULT_PRODUCT.price
    await assert_error(await checkout(client, order_body("H1", "25k-xl")), "P03")


async def test_header_hang_with_a_real_product(client: Client) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await checkout(client, order_body("H2"), headers={"X-Sandbox-Fault": "hang"}, timeout=aiohttp.ClientTimeout(total=0.3))
    doc = await verified(client, await status(client, "H2"))
    assert doc["data"]["attributes"]["product_code"] == "25k-xl"
    assert await balance(client) == BALANCE - XL


async def test_delay_fault_takes_the_order_then_answers(client: Client) -> None:
    resp = await checkout(client, order_body("D1", "delay-50"))
    assert resp.status == 200
    assert (await resp.json())["data"]["attributes"]["status"] == "Pending"
    assert "D1" in state_of(client).orders


@pytest.mark.parametrize("token", ["sign-missing", "sign-bad"])
async def test_signature_faults_spoil_the_orders_status_answers(client: Client, token: str) -> None:
    assert (await checkout(client, order_body("S1", token))).status == 200
    for _ in range(2):  # every status answer of that order, not just the first
        resp = await status(client, "S1")
        assert resp.status == 200
        raw = await resp.read()
        assert json.loads(raw)["data"]["id"] == "S1"
        if token == "sign-missing":
            assert "Signature" not in resp.headers
        else:
            assert len(base64.b64decode(resp.headers["Signature"])) == 256  # well-formed...
            assert not state_of(client).keys.verifier.verify(raw, resp.headers["Signature"])  # ...and wrong


async def test_header_signature_fault_on_one_status_answer(client: Client) -> None:
    await checkout(client, order_body("R1"))
    resp = await status(client, "R1", **{"X-Sandbox-Fault": "sign-bad"})
    assert not state_of(client).keys.verifier.verify(await resp.read(), resp.headers["Signature"])
    resp = await status(client, "R1", **{"X-Sandbox-Fault": "sign-missing"})
    assert resp.status == 200 and "Signature" not in resp.headers
    await verified(client, await status(client, "R1"))  # the next plain answer is fine again


async def test_read_only_faults_on_status_and_account(client: Client) -> None:
    await assert_error(await status(client, "R1", **{"X-Sandbox-Fault": "error-S00"}), "S00", 500)
    resp = await client.get("/v2/account", headers={**(await auth(client)), "X-Sandbox-Fault": "status-429"})
    assert resp.status == 429 and resp.content_type == "text/html"
    resp = await client.get("/v2/account", headers={**(await auth(client)), "X-Sandbox-Fault": "delay-10"})
    assert resp.status == 200


async def test_checkout_only_faults_elsewhere_are_p01(client: Client) -> None:
    resp = await client.get("/v2/product-list", params={"product_code": "order-reset"}, headers=await auth(client))
    await assert_error(resp, "P01")
    resp = await client.get("/v2/account", headers={**(await auth(client)), "X-Sandbox-Fault": "fail-S02"})
    await assert_error(resp, "P01")
    resp = await client.get("/v2/account", headers={**(await auth(client)), "X-Sandbox-Fault": "nonsense"})
    await assert_error(resp, "P01")


async def test_a_malformed_fault_is_p01_before_acting(client: Client) -> None:
    await assert_error(await checkout(client, order_body("R1", "fail-!!")), "P01")
    await assert_error(await checkout(client, order_body("R1", "delay-soon")), "P01")
    assert len(state_of(client).orders) == 0


# --------------------------------------------------------------------------- state and grammar


async def test_each_app_has_its_own_book(aiohttp_client: MakeClient, keys: SandboxKeys) -> None:
    one = await aiohttp_client(make_app(keys))
    two = await aiohttp_client(make_app(keys))
    assert (await checkout(one, order_body("R1"))).status == 200
    await assert_error(await status(two, "R1"), "P02")
    assert await balance(two) == BALANCE


async def test_generated_keys_when_none_are_configured(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(build_sandbox_app())
    keys = state_of(client).keys
    assert keys.account_signer is not None
    assert keys is state_of(client).keys  # made once
    assert (await checkout(client, order_body("R1"))).status == 200
    assert "PRIVATE" not in repr(keys) and "Signer(scheme='pss', key=RSA-2048)" in repr(keys)


def test_new_fault_tokens_parse() -> None:
    assert parse_fault("fail-s02") == FailFault("S02")
    assert parse_fault("ORDER-RESET") == OrderResetFault()
    assert parse_fault("sign-missing") == SignatureFault("missing")
    assert parse_fault("sign-bad") == SignatureFault("bad")
    for token in ("fail-x", "order-reset", "sign-bad", "sign-missing"):
        assert is_fault_token(token)
    with pytest.raises(InvalidFault):
        parse_fault("fail-")
    assert not any(is_fault_token(code) for code in PRODUCTS_BY_CODE)
