"""The state of one downstream request as it walks the filter chain, and the partner's answer."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import PartnerError


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a partner answer means by the route's errors.yaml table (``proxy.classify``)."""

    partner_code: str | None
    error: PartnerError | None           # the envelope the app gets; None for a success
    error_type: str | None = None
    invalidate_token: bool = False       # the partner rejected the token that was used (401, P08)
    retry_with_fresh_token: bool = False # ...and refused before acting: one re-send is safe
    notify: bool = False
    unmapped: bool = False               # only the table's default matched

    @property
    def ok(self) -> bool:
        return self.error is None


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
