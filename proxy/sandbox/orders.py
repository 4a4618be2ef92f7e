"""The sandbox partner's order book and deposit balance: one per sandbox app, in memory.

An order is taken ``Pending`` and charged at once; ``settle_after`` seconds later (on the
injected ``clock``) it is ``Success``, or ``Failed`` when it was taken with a failure code, in
which case the charge is refunded. Settling is lazy: every read of the book first settles what
is due, so there is no background task to start, stop or race with, and a fake clock makes the
lifecycle testable without sleeping.

Nothing here speaks HTTP; :mod:`proxy.sandbox.api` turns orders into JSON:API documents.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from proxy.sandbox.bills import Quote

DEFAULT_BALANCE: Final = 50_000_000  # the partner's own sample saldo
DEFAULT_SETTLE_AFTER: Final = 1.0


class DuplicateOrder(Exception):
    """The request id was used before (partner ``P03``)."""


class InsufficientBalance(Exception):
    """The deposit does not cover the order (sandbox ``P06``)."""


@dataclass(slots=True)
class Order:
    """One order. ``failure`` is ``(code, detail)`` for an order that will settle Failed.

    ``signature_fault`` ("missing" / "bad") marks an order whose 200 status answers carry no or a
    wrong ``Signature`` (fault ``sign-missing`` / ``sign-bad``).
    """

    request_id: str
    product_code: str
    client_number: str
    fields: list[dict[str, str]] | None
    quote: Quote
    due: float
    fulfilled_wall: float
    failure: tuple[str, str] | None = None
    signature_fault: str | None = None
    settled: bool = False

    @property
    def status(self) -> str:
        if not self.settled:
            return "Pending"
        return "Failed" if self.failure else "Success"

    @property
    def serial_number(self) -> str:
        return str(int(hashlib.sha256(self.request_id.encode()).hexdigest()[:12], 16))[:12]

    def attributes(self) -> dict[str, object]:
        """The ``attributes`` of the partner's order document for the current status (notes 4.1)."""
        attrs: dict[str, object] = {
            "client_number": self.client_number,
            "error_code": "",
            "error_detail": "",
            "fields": self.fields,
            "fulfilled_at": None,
            "partner_fee": 0,
            "product_code": self.product_code,
            "sales_price": self.quote.sales_price,
            "serial_number": "",
            "status": self.status,
        }
        if self.status == "Failed":
            assert self.failure is not None
            attrs["error_code"], attrs["error_detail"] = self.failure
        elif self.status == "Success":
            attrs["fulfilled_at"] = datetime.fromtimestamp(self.fulfilled_wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            attrs["serial_number"] = self.serial_number
            attrs["voucher_code"] = ""
            attrs["fulfillment_result"] = [{"name": "Serial Number", "value": self.serial_number}]
            attrs["admin_fee"] = self.quote.admin_fee
            attrs["client_name"] = self.quote.client_name
        return attrs


@dataclass
class OrderBook:
    """Orders by request id and the deposit they draw on.

    ``clock`` (monotonic seconds) decides settlement; ``wall`` (epoch seconds) only dates
    ``fulfilled_at``.
    """

    balance_start: int = DEFAULT_BALANCE
    settle_after: float = DEFAULT_SETTLE_AFTER
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _orders: dict[str, Order] = field(default_factory=dict, init=False, repr=False)
    _balance: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.settle_after < 0:
            raise ValueError("settle_after must be >= 0")
        self._balance = self.balance_start

    def _settle(self) -> None:
        now = self.clock()
        for order in self._orders.values():
            if not order.settled and now >= order.due:
                order.settled = True
                if order.failure:
                    self._balance += order.quote.sales_price  # a failed order gives the money back

    @property
    def balance(self) -> int:
        self._settle()
        return self._balance

    def get(self, request_id: str) -> Order | None:
        self._settle()
        return self._orders.get(request_id)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._orders

    def __len__(self) -> int:
        return len(self._orders)

    def take(
        self,
        request_id: str,
        product_code: str,
        client_number: str,
        quote: Quote,
        *,
        fields: list[dict[str, str]] | None = None,
        failure: tuple[str, str] | None = None,
        signature_fault: str | None = None,
    ) -> Order:
        """Create a Pending order and charge it.

        Raises:
            DuplicateOrder: ``request_id`` exists (whatever the rest of the request says).
            InsufficientBalance: the deposit is below ``quote.sales_price``; nothing is created.
        """
        self._settle()
        if request_id in self._orders:
            raise DuplicateOrder(request_id)
        if quote.sales_price > self._balance:
            raise InsufficientBalance(request_id)
        self._balance -= quote.sales_price
        order = Order(
            request_id=request_id,
            product_code=product_code,
            client_number=client_number,
            fields=fields,
            quote=quote,
            due=self.clock() + self.settle_after,
            fulfilled_wall=self.wall() + self.settle_after,
            failure=failure,
            signature_fault=signature_fault,
        )
        self._orders[request_id] = order
        return order
