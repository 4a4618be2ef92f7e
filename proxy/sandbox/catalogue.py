"""Static data of the sandbox partner: its products, its error codes and its fault grammar.

Kept apart from the HTTP handlers so the data (which mirrors ``partner/tokopedia-b2b.md``
sections 4 and 6) can be read and reviewed without reading aiohttp code, and so the fault
grammar can be unit-tested without a server. Everything here is immutable.

Fault tokens (see :func:`parse_fault`) are the way an app developer drives the sandbox through
the sidecar, which forwards only ``product_code`` and ordinary headers:

============== =======================================================================
token          answer
============== =======================================================================
error-<CODE>   the JSON:API error for CODE (``error-S03``, ``error-p08``, ``error-X42``);
               HTTP status and detail from :data:`ERROR_CATALOGUE`, unknown codes -> 400
status-<NNN>   HTTP NNN (200-599) with a ``text/html`` "infrastructure" page, no JSON
delay-<ms>     sleep ms milliseconds (capped at 60000), then the normal full product list
hang           sleep 300 s (then the full list), for client-timeout tests
reset          the connection is dropped with a TCP RST, no HTTP answer at all
garbage        HTTP 500 claiming ``application/json`` with a body that is not JSON
fail-<CODE>    checkout only: the order is taken (200 Pending) and settles ``Failed``
               with error_code CODE (``fail-S02``); also usable as the client number
order-reset    checkout only: the order is taken, then the connection is reset
sign-missing   checkout: the order's 200 status answers carry no ``Signature``;
               status (header): this answer carries none
sign-bad       the same with a ``Signature`` that does not verify
============== =======================================================================

On checkout (``POST /v2/order``) the tokens split into two groups, by whether the partner acted:
``error-``, ``status-``, ``garbage`` and ``reset`` answer *before* anything is created or
charged; ``hang``, ``delay-``, ``order-reset``, ``fail-`` and ``sign-`` create (and charge) the
order first. :mod:`proxy.sandbox.api` has the whole table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# --------------------------------------------------------------------------- products


@dataclass(frozen=True, slots=True)
class Product:
    """One product enabled for the sandbox partner account.

    ``status`` follows the partner: 1 active, 2 inactive (switched off on purpose),
    3 temporarily inactive (operator or supplier trouble).
    """

    code: str
    name: str
    price: int
    is_inquiry: bool
    status: int
    # Inquiry products only (see :mod:`proxy.sandbox.bills`): ``admin_fee`` is the fee inside the
    # price; ``bill`` means the amount comes from the customer's bill, and ``price`` is the fee.
    admin_fee: int = 0
    bill: bool = False

    def resource(self) -> dict[str, object]:
        """The JSON:API resource object exactly as the partner shapes it (notes section 4)."""
        return {
            "type": "product",
            "id": self.code,
            "attributes": {
                "product_name": self.name,
                "price": self.price,
                "is_inquiry": self.is_inquiry,
                "status": self.status,
            },
        }


# The first two are the partner's own examples; the others cover what callers must cope with:
# inquiry products, inactive (2) and temporarily inactive (3) items, and an empty name.
# Inquiry products come in the two kinds the checkout notes show (section 2.3): a fixed price with
# a check of the customer number (``pln-prepaid-20k``: 20,000 token + 1,500 fee) and a bill whose
# amount the inquiry reveals (``pln-postpaid``, the notes' own example: admin_fee 2,500).
PRODUCTS: Final[tuple[Product, ...]] = (
    Product("25k-xl", "XL 25,000", 24913, False, 1),
    Product("kta-bank-dbs", "Bank DBS KTA Bank DBS", 4797124, True, 1),
    Product("pln-prepaid-20k", "PLN Prepaid 20,000", 21500, True, 1, admin_fee=1500),
    Product("google-play-100k", "Google Play Voucher 100,000", 98500, False, 1),
    Product("bpjs-kesehatan", "BPJS Kesehatan", 2500, True, 1, admin_fee=2500, bill=True),
    Product("pln-postpaid", "PLN Postpaid", 2500, True, 1, admin_fee=2500, bill=True),
    Product("telkomsel-50k", "Telkomsel 50,000", 49850, False, 3),
    Product("indosat-10k", "Indosat Ooredoo 10,000", 10950, False, 2),
    Product("axis-5k", "", 5900, False, 1),
)

PRODUCTS_BY_CODE: Final[dict[str, Product]] = {p.code: p for p in PRODUCTS}

# What an order or inquiry is for when its product_code is a fault token that lets the partner
# act (``hang``, ``delay-<ms>``, ``order-reset``, ``fail-<CODE>``, ``sign-*``): a plain product
# at a round price, so balance arithmetic in tests is easy. Not listed by /v2/product-list.
FAULT_PRODUCT: Final = Product("sandbox-fault", "Sandbox fault product", 10_000, False, 1)

# --------------------------------------------------------------------------- error codes


@dataclass(frozen=True, slots=True)
class PartnerErrorSpec:
    """HTTP status and detail text the sandbox uses for one partner error code."""

    status: int
    detail: str


# Notes section 6, "Proposed sandbox catalogue". P02/P03/P04/S00 are confirmed by the official
# SDK tests; the rest are assumptions. Per the brief every P/U/S code other than P08 (403),
# S00 (500) and S01 (503) answers 400.
ERROR_CATALOGUE: Final[dict[str, PartnerErrorSpec]] = {
    "P01": PartnerErrorSpec(400, "Invalid request: missing or invalid parameter"),
    "P02": PartnerErrorSpec(400, "Transaction is not found"),
    "P03": PartnerErrorSpec(400, "Duplicate Request ID"),
    "P04": PartnerErrorSpec(400, "Product not found"),
    "P05": PartnerErrorSpec(400, "Product is not enabled for this partner"),
    "P06": PartnerErrorSpec(400, "Insufficient deposit balance"),
    "P07": PartnerErrorSpec(400, "Invalid amount"),
    "P08": PartnerErrorSpec(403, "Access token invalid or expired"),
    "P09": PartnerErrorSpec(400, "Invalid signature"),
    "P10": PartnerErrorSpec(400, "IP address is not whitelisted"),
    **{f"P{n:02d}": PartnerErrorSpec(400, "Request rejected by partner") for n in range(11, 20)},
    "U01": PartnerErrorSpec(400, "Client number is invalid or unregistered"),
    "U02": PartnerErrorSpec(400, "Bill not found or not yet available"),
    "U03": PartnerErrorSpec(400, "Bill already paid"),
    "S00": PartnerErrorSpec(500, "Internal Server Error"),
    "S01": PartnerErrorSpec(503, "Biller or supplier error or timeout"),
    "S02": PartnerErrorSpec(400, "Product is not available"),
    "S03": PartnerErrorSpec(400, "Product temporarily closed for maintenance"),
    "S04": PartnerErrorSpec(400, "Product closed (cut-off)"),
}

# Codes outside the catalogue (``X42``) still get a well-formed JSON:API error, so callers can
# test their "unmapped partner code" path.
UNKNOWN_ERROR_STATUS: Final = 400
UNKNOWN_ERROR_DETAIL: Final = "Unknown error"


def error_spec(code: str) -> PartnerErrorSpec:
    """Status and detail for ``code``; unknown codes get 400 and a generic detail."""
    return ERROR_CATALOGUE.get(code, PartnerErrorSpec(UNKNOWN_ERROR_STATUS, UNKNOWN_ERROR_DETAIL))


def error_document(code: str, detail: str | None = None) -> tuple[int, dict[str, object]]:
    """The partner's JSON:API error body for ``code`` and the HTTP status to send it with.

    The status is repeated as a *string* inside the object, like the real partner does.
    """
    spec = error_spec(code)
    body: dict[str, object] = {
        "errors": [
            {
                "code": code,
                "detail": spec.detail if detail is None else detail,
                "status": str(spec.status),
            }
        ]
    }
    return spec.status, body


# --------------------------------------------------------------------------- fault grammar

HANG_SECONDS: Final = 300.0
MAX_DELAY_MS: Final = 60_000
FAULT_HEADER: Final = "X-Sandbox-Fault"

# Same shape the sidecar accepts as a partner code label, so anything the sandbox can emit is a
# code the sidecar can count.
_CODE_RE: Final = re.compile(r"^[A-Z][A-Z0-9_]{1,15}$")
_FAULT_PREFIXES: Final = ("error-", "status-", "delay-", "fail-")
_FAULT_WORDS: Final = frozenset({"hang", "reset", "garbage", "order-reset", "sign-missing", "sign-bad"})


@dataclass(frozen=True, slots=True)
class ErrorFault:
    """Answer the JSON:API error for ``code``."""

    code: str


@dataclass(frozen=True, slots=True)
class StatusFault:
    """Answer HTTP ``status`` with a non-JSON page, as a load balancer or WAF would."""

    status: int


@dataclass(frozen=True, slots=True)
class DelayFault:
    """Answer the normal list after ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class HangFault:
    """Do not answer for :data:`HANG_SECONDS`."""


@dataclass(frozen=True, slots=True)
class ResetFault:
    """Drop the connection without any HTTP answer."""


@dataclass(frozen=True, slots=True)
class GarbageFault:
    """Answer 500 with a body that claims to be JSON but is not."""


@dataclass(frozen=True, slots=True)
class FailFault:
    """Checkout: take the order, then settle it ``Failed`` with ``code``."""

    code: str


@dataclass(frozen=True, slots=True)
class OrderResetFault:
    """Checkout: take the order, then drop the connection without an answer."""


@dataclass(frozen=True, slots=True)
class SignatureFault:
    """A 200 status answer whose ``Signature`` is ``"missing"`` or ``"bad"``."""

    mode: str


Fault = (
    ErrorFault
    | StatusFault
    | DelayFault
    | HangFault
    | ResetFault
    | GarbageFault
    | FailFault
    | OrderResetFault
    | SignatureFault
)


class InvalidFault(ValueError):
    """A value uses a reserved fault prefix but is malformed (``status-99``, ``delay-x``).

    Reported as 400 P01 rather than treated as a product code, so a typo in a fault test is
    loud instead of silently becoming "Product not found".
    """


def is_fault_token(value: str) -> bool:
    """Whether ``value`` is in the reserved fault namespace (well-formed or not)."""
    lowered = value.strip().lower()
    return lowered in _FAULT_WORDS or lowered.startswith(_FAULT_PREFIXES)


def parse_fault(value: str) -> Fault | None:
    """Parse one fault token; ``None`` when ``value`` is not in the reserved namespace.

    Matching is case-insensitive (``error-s03`` == ``error-S03``) because product codes are
    lower-case by convention and developers will type either.

    Raises:
        InvalidFault: the value is reserved but malformed.
    """
    token = value.strip()
    lowered = token.lower()
    if lowered == "hang":
        return HangFault()
    if lowered == "reset":
        return ResetFault()
    if lowered == "garbage":
        return GarbageFault()
    if lowered == "order-reset":
        return OrderResetFault()
    if lowered in ("sign-missing", "sign-bad"):
        return SignatureFault(lowered.removeprefix("sign-"))
    for prefix, kind in (("error-", ErrorFault), ("fail-", FailFault)):
        if lowered.startswith(prefix):
            code = token[len(prefix) :].upper()
            if not _CODE_RE.match(code):
                raise InvalidFault(f"sandbox fault {value!r}: the code must match {_CODE_RE.pattern}")
            return kind(code)
    if lowered.startswith("status-"):
        digits = lowered[len("status-") :]
        if not (digits.isascii() and digits.isdigit() and 200 <= int(digits) <= 599):
            raise InvalidFault(f"sandbox fault {value!r}: the status must be 200-599")
        return StatusFault(int(digits))
    if lowered.startswith("delay-"):
        digits = lowered[len("delay-") :]
        if not (digits.isascii() and digits.isdigit()):
            raise InvalidFault(f"sandbox fault {value!r}: the delay must be whole milliseconds")
        return DelayFault(min(int(digits), MAX_DELAY_MS) / 1000.0)
    return None


def split_product_codes(raw: str | None) -> list[str]:
    """Split ``product_code=a,b`` into distinct non-empty codes, keeping the caller's order.

    An empty or missing parameter (the Go SDK always sends ``product_code=``) gives ``[]``,
    which means "list everything".
    """
    if not raw:
        return []
    seen: dict[str, None] = {}
    for part in raw.split(","):
        code = part.strip()
        if code:
            seen.setdefault(code, None)
    return list(seen)
