"""The state of one downstream request as it walks the filter chain, and the partner's answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import PartnerError
from proxy.otel import Span


class Downstream(Protocol):
    """The app's request as a listener hands it to the chain, whatever server parsed it.

    ``read_body`` reads the whole body once, refusing (``PayloadTooLarge``) past ``limit`` bytes
    without buffering more than that; a second call returns the same bytes.
    """

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str:
        """The request target's path as sent: percent-escapes and dot segments intact."""
        ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def has_body(self) -> bool: ...

    async def read_body(self, limit: int) -> bytes: ...


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
    headers: tuple[tuple[str, str], ...] = ()  # partner headers passed back besides Content-Type (checked)

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 202


@dataclass(slots=True)
class Exchange:
    """Per-request state. Filters read and annotate it; observers log and count from it."""

    downstream: Downstream
    method: str
    request_id: str
    language: str
    traceparent: str                      # the one sent upstream (same trace id, new span id; with tracing on, the last attempt's CLIENT span)
    started: float
    upstream_headers: CIMultiDict[str]    # what the partner gets; filters add to it (Authorization)
    upstream_query: dict[str, str] | None = None
    path_params: dict[str, str] | None = None  # a template route's {name} values, already checked
    body: bytes | None = None             # downstream body once read (a filter or the forwarder reads it)
    token_source: str | None = None       # memory | redis | fetch | none
    attempts: int = 0
    partner_status: int | None = None
    partner_code: str | None = None
    error_type: str | None = None
    breaker_state: str | None = None
    token_retried: bool = False
    span: Span | None = None              # the request's SERVER span; None when tracing is off
