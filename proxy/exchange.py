"""The state of one downstream request as it walks the filter chain, and the partner's answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

if TYPE_CHECKING:  # typing only: classify imports this module
    from proxy.classify import Verdict


@dataclass(slots=True)
class UpstreamResponse:
    """What the partner answered on the last attempt.

    ``verdict`` is what the answer means by the route's errors.yaml table; it is computed at most
    once (``proxy.classify.Classifier``), by whichever filter asks first, and shared by the others.
    """

    status: int
    content_type: str
    body: bytes
    verdict: Verdict | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 202


@dataclass(slots=True)
class Exchange:
    """Per-request state. Filters read and annotate it; observers log and count from it."""

    request: web.Request
    method: str
    request_id: str
    language: str
    traceparent: str                      # the one sent upstream (same trace id, new span id)
    started: float
    upstream_headers: CIMultiDict[str]    # what the partner gets; filters add to it (Authorization)
    upstream_query: dict[str, str] | None = None
    body: bytes = b""                     # downstream body, forwarded for methods that carry one
    token_source: str | None = None       # memory | redis | fetch | none
    attempts: int = 0
    partner_status: int | None = None
    partner_code: str | None = None
    error_type: str | None = None
    breaker_state: str | None = None
    token_retried: bool = False
