"""The hook for more sidecar routes in the benchmark table, beside ``GET /v1/products``.

``extra_routes(tmp)`` returns what to measure; each ``BenchRoute`` becomes a row
``partner-proxy <name>`` (closed loop with wrk, fixed rate with bench/fixed_rate.py), served by the
same sidecar process and the same upstream nginx. A route brings its partner side as nginx
``location`` blocks and whatever the sidecar needs in its environment (keys, for the signed
checkout and the verified order status: generate them under ``tmp``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class BenchRoute:
    name: str                                   # the row: "partner-proxy <name>"
    method: str                                 # what the app sends
    path: str                                   # the app's path (and query)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)   # besides Content-Type and X-Client-Id
    upstream: str = ""                          # nginx location block(s) answering like the partner
    env: dict[str, str] = field(default_factory=dict)       # extra sidecar environment


def extra_routes(tmp: Path) -> list[BenchRoute]:
    """Routes measured besides /v1/products (checkout and order_status go here once they exist)."""
    return []
