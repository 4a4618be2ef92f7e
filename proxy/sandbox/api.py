"""The sandbox partner's money endpoints: account, inquiry, checkout and check status.

Shapes follow ``partner/tokopedia-b2b-checkout.md`` section 2; codes follow its section 8 and
the catalogue in ``tokopedia-b2b.md`` section 6. Every endpoint first checks the bearer token
(401 without one, 403 ``P08`` for an unknown one), then the ``X-Sandbox-Fault`` header.

``POST /v2/order`` (checkout), in this order:

1. ``Signature`` header (any case): standard base64 RSA-PSS-SHA256 (any salt) over the *raw
   body bytes*, checked with the account's public key. Missing or not verifying -> 400 ``P09``.
2. Body: JSON, ``data.type == "order"``, ``data.id`` 1-128 of ``[A-Za-z0-9._~-]``,
   ``attributes.product_code`` and ``client_number`` strings, ``amount`` an optional number
   >= 0, ``fields`` an optional list of ``{"name", "value"}`` strings -> else 400 ``P01``.
3. Fault: the header, else a fault token as ``product_code``, else as ``client_number``.
4. ``data.id`` seen before -> 400 ``P03`` (whatever the body says; the first order is untouched).
5. Product (``P04``), product status (``S02``/``S03``), client number (``U01``-``U03``, see
   :mod:`proxy.sandbox.bills`), ``amount`` other than 0 and other than the price -> ``P07``,
   deposit below the price -> ``P06``.
6. The order is taken ``Pending`` and the deposit charged; 200 with the order document.

Checkout faults, and what the partner has done when the client sees the answer:

============== ============== =============================================================
token          order taken?   the client sees
============== ============== =============================================================
error-<CODE>   no             the JSON:API error for CODE (``error-S00`` 500, others 400...)
status-<NNN>   no             HTTP NNN with an HTML page
garbage        no             500 "JSON" that is not JSON
reset          no             TCP reset after the whole body was read, before any check
                              of the product or balance: nothing is created or charged
hang           yes, charged   nothing for 300 s (the order is visible to check status)
delay-<ms>     yes, charged   the normal 200 Pending after ms milliseconds
order-reset    yes, charged   TCP reset right after the order was taken
fail-<CODE>    yes, charged   200 Pending; it settles Failed with error_code CODE, refunded
sign-missing   yes, charged   200 Pending; its 200 status answers carry no Signature
sign-bad       yes, charged   200 Pending; its 200 status answers carry a wrong Signature
============== ============== =============================================================

With a fault token as ``product_code`` the order is for :data:`~proxy.sandbox.catalogue.
FAULT_PRODUCT` (10,000); with ``fail-<CODE>`` as ``client_number`` it is for the real product.

``GET /v2/order/{request_id}``: unknown id -> 400 ``P02`` (unsigned); else 200 with the order
document, its exact bytes signed with the sandbox's own key in ``Signature`` (PSS, max salt).
``X-Sandbox-Fault: sign-missing`` / ``sign-bad`` spoil one answer; the other read-only faults
behave as on the product list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from proxy.sandbox.bills import Quote, QuoteError, quote
from proxy.sandbox.catalogue import (
    FAULT_HEADER,
    FAULT_PRODUCT,
    PRODUCTS_BY_CODE,
    DelayFault,
    ErrorFault,
    FailFault,
    Fault,
    GarbageFault,
    HangFault,
    HANG_SECONDS,
    InvalidFault,
    OrderResetFault,
    Product,
    ResetFault,
    SignatureFault,
    StatusFault,
    error_spec,
    is_fault_token,
    parse_fault,
)
from proxy.sandbox.orders import DuplicateOrder, InsufficientBalance, Order
from proxy.sandbox.replies import (
    answer_fault,
    authorize,
    garbage,
    infrastructure_page,
    json_reply,
    partner_error,
    pause,
    reset_connection,
)
from proxy.sandbox.state import SANDBOX_STATE, ApiCall

SIGNATURE_HEADER: Final = "Signature"
REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")


class _Refused(Exception):
    """Carries the partner's refusal out of a parsing helper."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _bad(detail: str) -> _Refused:
    return _Refused(partner_error("P01", f"Invalid request: {detail}"))


def _header_fault(request: web.Request) -> Fault | None:
    header = request.headers.get(FAULT_HEADER, "").strip()
    if not header:
        return None
    fault = parse_fault(header)
    if fault is None:
        raise _bad(f"{FAULT_HEADER}: {header!r} is not a sandbox fault")
    return fault


def _body_fault(request: web.Request, *values: str) -> Fault | None:
    """The header's fault, else the first fault token among ``values`` (product code, number)."""
    fault = _header_fault(request)
    if fault is not None:
        return fault
    for value in values:
        if is_fault_token(value):
            return parse_fault(value)
    return None


def _document(raw: bytes, kind: str) -> tuple[dict[str, object], dict[str, object]]:
    """``(data, attributes)`` of a JSON:API request of type ``kind``, with the two string fields."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise _bad("the body is not JSON") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise _bad("data must be an object")
    if data.get("type") != kind:
        raise _bad(f'data.type must be "{kind}"')
    attrs = data.get("attributes")
    if not isinstance(attrs, dict):
        raise _bad("data.attributes must be an object")
    for name in ("product_code", "client_number"):
        if not isinstance(attrs.get(name), str) or not attrs[name]:
            raise _bad(f"data.attributes.{name} must be a non-empty string")
    fields = attrs.get("fields")
    if fields is not None and not (
        isinstance(fields, list)
        and all(isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("value"), str) for f in fields)
    ):
        raise _bad('data.attributes.fields must be a list of {"name": str, "value": str}')
    amount = attrs.get("amount")
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0):
        raise _bad("data.attributes.amount must be a number >= 0")
    return data, attrs


def _product(code: str, *, inquiry: bool) -> Product:
    if is_fault_token(code):
        return FAULT_PRODUCT
    product = PRODUCTS_BY_CODE.get(code)
    if product is None:
        raise _Refused(partner_error("P04"))
    if inquiry and not product.is_inquiry:
        raise _bad(f"product {code} needs no inquiry (is_inquiry is false)")
    return product


def _quote(product: Product, client_number: str) -> Quote:
    try:
        return quote(product, client_number, check_number=not is_fault_token(client_number))
    except QuoteError as exc:
        raise _Refused(partner_error(exc.code)) from None


async def _guarded(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], request: web.Request
) -> web.StreamResponse:
    body = await request.read() if request.body_exists else b""
    request.app[SANDBOX_STATE].api_calls.append(ApiCall(request.method, request.path, CIMultiDict(request.headers), body))
    refused = authorize(request)
    if refused is not None:
        return refused
    try:
        return await handler(request)
    except _Refused as exc:
        return exc.response
    except InvalidFault as exc:
        return partner_error("P01", f"Invalid request: {exc}")


# --------------------------------------------------------------------------- account


async def handle_account(request: web.Request) -> web.StreamResponse:
    """GET /v2/account: the deposit balance (``saldo``, rupiah, after every settled order)."""
    return await _guarded(_account, request)


async def _account(request: web.Request) -> web.StreamResponse:
    state = request.app[SANDBOX_STATE]

    def answer() -> web.Response:
        attrs = {"saldo": state.orders.balance}
        return json_reply(200, {"data": {"type": "account", "id": state.settings.account_id, "attributes": attrs}})

    fault = _header_fault(request)
    return answer() if fault is None else await answer_fault(request, fault, answer)


# --------------------------------------------------------------------------- inquiry


async def handle_inquiry(request: web.Request) -> web.StreamResponse:
    """POST /v2/inquiry: the bill (or fixed price) of an ``is_inquiry`` product for a number."""
    return await _guarded(_inquiry, request)


async def _inquiry(request: web.Request) -> web.StreamResponse:
    data, attrs = _document(await request.read(), "inquiry")
    code, number = str(attrs["product_code"]), str(attrs["client_number"])

    def answer() -> web.Response:
        product = _product(code, inquiry=True)
        q = _quote(product, number)
        result = [{"name": "Nama Pelanggan", "value": q.client_name}, {"name": "Total Tagihan", "value": str(q.sales_price)}]
        body = {
            "data": {
                "type": "inquiry",
                "id": number,
                "attributes": {
                    "admin_fee": q.admin_fee,
                    "base_price": q.base_price,
                    "client_name": q.client_name,
                    "client_number": number,
                    "fields": attrs.get("fields"),
                    "inquiry_result": result,
                    "meter_id": q.meter_id,
                    "product_code": product.code if product is not FAULT_PRODUCT else code,
                    "sales_price": q.sales_price,
                },
            }
        }
        return json_reply(200, body)

    fault = _body_fault(request, code, number)
    if fault is None:
        return answer()
    return await answer_fault(request, fault, answer)


# --------------------------------------------------------------------------- checkout


def _order_document(order: Order) -> dict[str, object]:
    return {"data": {"type": "order", "id": order.request_id, "attributes": order.attributes()}}


async def handle_checkout(request: web.Request) -> web.StreamResponse:
    """POST /v2/order: see the module docstring for the order of checks and the faults."""
    return await _guarded(_checkout, request)


async def _checkout(request: web.Request) -> web.StreamResponse:
    state = request.app[SANDBOX_STATE]
    raw = await request.read()
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
        return partner_error("P09", "Signature header is missing")
    if not state.keys.account.verify(raw, signature):
        return partner_error("P09", error_spec("P09").detail)
    data, attrs = _document(raw, "order")
    request_id = data.get("id")
    if not isinstance(request_id, str) or not REQUEST_ID.match(request_id) or request_id in (".", ".."):
        raise _bad("data.id must be 1 to 128 of A-Z a-z 0-9 . _ ~ -")
    code, number = str(attrs["product_code"]), str(attrs["client_number"])

    fault = _body_fault(request, code, number)
    match fault:  # the faults that answer before the partner acts
        case ErrorFault(code=error_code):
            return partner_error(error_code)
        case StatusFault(status=status):
            return infrastructure_page(status)
        case GarbageFault():
            return garbage()
        case ResetFault():
            return reset_connection(request)

    if request_id in state.orders:
        return partner_error("P03", "Duplicate Request ID, please check your system")
    product = _product(code, inquiry=False)
    q = _quote(product, number)
    amount = attrs.get("amount")
    if amount and amount != q.sales_price:
        return partner_error("P07", f"Invalid amount: this order costs {q.sales_price}")
    failure = None
    if isinstance(fault, FailFault):
        failure = (fault.code, error_spec(fault.code).detail)
    try:
        order = state.orders.take(
            request_id,
            code,
            number,
            q,
            fields=attrs.get("fields"),  # type: ignore[arg-type]
            failure=failure,
            signature_fault=fault.mode if isinstance(fault, SignatureFault) else None,
        )
    except DuplicateOrder:  # pragma: no cover - checked above; kept for a concurrent double
        return partner_error("P03", "Duplicate Request ID, please check your system")
    except InsufficientBalance:
        return partner_error("P06")

    match fault:  # the faults that answer after the order was taken
        case HangFault():
            await pause(request, HANG_SECONDS)
        case DelayFault(seconds=seconds):
            await pause(request, seconds)
        case OrderResetFault():
            return reset_connection(request)
    return json_reply(200, _order_document(order))


# --------------------------------------------------------------------------- check status


async def handle_status(request: web.Request) -> web.StreamResponse:
    """GET /v2/order/{request_id}: the order, its exact bytes signed with the sandbox's key."""
    return await _guarded(_status, request)


async def _status(request: web.Request) -> web.StreamResponse:
    state = request.app[SANDBOX_STATE]
    request_id = request.match_info["request_id"]
    fault = _header_fault(request)

    def answer() -> web.Response:
        order = state.orders.get(request_id)
        if order is None:
            return partner_error("P02", "Transaction is not found")
        body = json.dumps(_order_document(order), separators=(",", ":")).encode()
        spoil = fault.mode if isinstance(fault, SignatureFault) else order.signature_fault
        headers = {}
        if spoil is None:
            headers[SIGNATURE_HEADER] = state.keys.signer.sign(body)
        elif spoil == "bad":  # a real signature, of other bytes: right length, valid base64
            headers[SIGNATURE_HEADER] = state.keys.signer.sign(body + b" ")
        return web.Response(status=200, body=body, content_type="application/json", headers=headers)

    if fault is None or isinstance(fault, SignatureFault):
        return answer()
    return await answer_fault(request, fault, answer)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v2/account", handle_account)
    app.router.add_post("/v2/inquiry", handle_inquiry)
    app.router.add_post("/v2/order", handle_checkout)
    app.router.add_get("/v2/order/{request_id}", handle_status)
