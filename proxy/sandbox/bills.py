"""What a product costs for one customer number: the sandbox's inquiry and pricing rules.

Pure functions over the catalogue, shared by ``POST /v2/inquiry`` (which shows the quote) and
``POST /v2/order`` (which charges it), so an inquiry and the checkout after it always agree.

- A customer (client) number is 6 to 20 digits; anything else is ``U01``.
- Reserved numbers for the bill errors: :data:`BILL_NOT_FOUND` (``U02``) and
  :data:`BILL_ALREADY_PAID` (``U03``), on inquiry products.
- Product status 2 (inactive) is ``S02``, 3 (temporarily inactive) is ``S03``.
- A fixed-price product costs its ``price``. An inquiry product with ``bill=True`` costs a bill
  derived deterministically from the number (10,000 to 499,000 rupiah) plus its admin fee.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from proxy.sandbox.catalogue import Product

BILL_NOT_FOUND: Final = "1000000002"
BILL_ALREADY_PAID: Final = "1000000003"
_CLIENT_NUMBER: Final = re.compile(r"^[0-9]{6,20}$")
_NAMES: Final = ("BUDI SANTOSO", "SITI RAHAYU", "AGUS WIJAYA", "DEWI LESTARI", "RUDI HARTONO")


class QuoteError(Exception):
    """The partner refuses to price this product for this number; ``code`` is its error code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Quote:
    """What the customer owes: ``sales_price`` = ``base_price`` + ``admin_fee``."""

    base_price: int
    admin_fee: int
    client_name: str
    meter_id: str

    @property
    def sales_price(self) -> int:
        return self.base_price + self.admin_fee


def _digest(client_number: str) -> int:
    return int.from_bytes(hashlib.sha256(client_number.encode()).digest()[:4], "big")


def quote(product: Product, client_number: str, *, check_number: bool = True) -> Quote:
    """The price of ``product`` for ``client_number``.

    ``check_number=False`` skips the number rules (used when the number is a reserved
    ``fail-<CODE>`` fault token rather than a customer).

    Raises:
        QuoteError: S02/S03 for a product that is not active, U01-U03 for the number.
    """
    if product.status == 2:
        raise QuoteError("S02")
    if product.status == 3:
        raise QuoteError("S03")
    if check_number:
        if not _CLIENT_NUMBER.match(client_number):
            raise QuoteError("U01")
        if product.is_inquiry and client_number == BILL_NOT_FOUND:
            raise QuoteError("U02")
        if product.is_inquiry and client_number == BILL_ALREADY_PAID:
            raise QuoteError("U03")
    digest = _digest(client_number)
    name = _NAMES[digest % len(_NAMES)] if product.is_inquiry else ""
    meter = client_number if product.is_inquiry else ""
    if product.bill:
        base = 10_000 + (digest // 7 % 490) * 1_000
        return Quote(base, product.admin_fee, name, meter)
    return Quote(product.price - product.admin_fee, product.admin_fee, name, meter)
