"""The hook for more sidecar routes in the benchmark table, beside ``GET /v1/products``.

``extra_routes(tmp)`` returns what to measure; each ``BenchRoute`` becomes a row
``partner-proxy <name>`` (closed loop with wrk, fixed rate with bench/fixed_rate.py), served by the
same sidecar process and the same upstream nginx. A route brings its partner side as nginx
``location`` blocks and whatever the sidecar needs in its environment (keys, for the signed
checkout and the verified order status: generate them under ``tmp``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from proxy.signing import Signer, generate_key_pair


@dataclass(frozen=True)
class BenchRoute:
    name: str                                   # the row: "partner-proxy <name>"
    method: str                                 # what the app sends
    path: str                                   # the app's path (and query)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)   # besides Content-Type and X-Client-Id
    upstream: str = ""                          # nginx location block(s) answering like the partner
    env: dict[str, str] = field(default_factory=dict)       # extra sidecar environment


ORDER_ID = "bench-order-1"
ORDER_BODY = json.dumps(
    {"data": {"type": "order", "id": ORDER_ID, "attributes": {"product_code": "25k-xl", "client_number": "081234567890"}}},
    separators=(",", ":"),
).encode()
# What the partner answers: a Pending checkout, and a Success status (signed, as the partner signs it).
PENDING = json.dumps({"data": {"type": "order", "id": ORDER_ID, "attributes": {
    "client_number": "081234567890", "error_code": "", "error_detail": "", "fields": None, "fulfilled_at": None,
    "partner_fee": 1000, "product_code": "25k-xl", "sales_price": 25500, "serial_number": "", "status": "Pending"}}}, separators=(",", ":"))
SUCCESS = PENDING.replace('"fulfilled_at":null', '"fulfilled_at":"2026-12-01T00:00:00Z"').replace('"status":"Pending"', '"status":"Success"')


def extra_routes(tmp: Path) -> list[BenchRoute]:
    """The signed checkout and the verified order status, beside the product list.

    Both key pairs are generated under ``tmp``: the account's (the sidecar signs every checkout with
    it: RSA-PSS per request, in the loop's executor) and a stand-in for Tokopedia's (the upstream
    nginx serves a status answer signed with it once, here; the sidecar verifies it per request).
    The shipped config needs both keys, so they go into every sidecar's environment.
    """
    account = generate_key_pair(tmp, "bench-account")
    partner = generate_key_pair(tmp, "bench-partner")
    signature = Signer.from_pem(partner.private.read_bytes()).sign(SUCCESS.encode())
    env = {"TOKOPEDIA_PRIVATE_KEY_FILE": str(account.private), "TOKOPEDIA_PUBLIC_KEY_FILE": str(partner.public)}
    for text in (PENDING, SUCCESS):
        assert "'" not in text and "$" not in text, "nginx return strings: no quote, no variable"
    checkout = BenchRoute(
        name="checkout (signed)",
        method="POST",
        path="/v1/orders",
        body=ORDER_BODY,
        upstream=f"        location = /v2/order {{ return 200 '{PENDING}'; }}\n",
        env=env,
    )
    status = BenchRoute(
        name="order_status (verified)",
        method="GET",
        path=f"/v1/orders/{ORDER_ID}",
        upstream=f"        location = /v2/order/{ORDER_ID} {{ add_header Signature \"{signature}\" always; return 200 '{SUCCESS}'; }}\n",
        env=env,
    )
    return [checkout, status]
