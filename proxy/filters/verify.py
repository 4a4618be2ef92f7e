"""Verification of the partner's signed answers (order status): a 200 must carry the route's
header (``Signature``) with a signature over the raw body by the partner's public key; otherwise
the app gets 502 ``SignatureInvalid`` instead of data it cannot trust, counted and notified.
Non-200 answers are not signed and pass on to the error table."""

from __future__ import annotations

from collections.abc import Callable

from proxy.errors import SignatureInvalid
from proxy.exchange import Exchange, UpstreamResponse
from proxy.filters.context import FilterContext
from proxy.metrics import Metrics
from proxy.notify import KIND_SIGNATURE_INVALID, Event
from proxy.signing import Verifier
from proxy.types import Next


class VerifyAnswer:
    def __init__(self, verifier: Verifier, header: str, route: str, cluster: str, metrics: Metrics, notify: Callable[[Event], None]) -> None:
        self.verifier = verifier
        self.header = header.lower()
        self.route = route
        self.cluster = cluster
        self.notify = notify
        self._failures = {reason: metrics.signature_failures.labels(route, reason) for reason in ("missing", "invalid")}

    @classmethod
    def from_context(cls, ctx: FilterContext) -> VerifyAnswer | None:
        verify = ctx.route.verify
        if verify is None:
            return None
        verifier = Verifier.from_pem(verify.public_key.reveal(), "pkcs1v15" if verify.scheme == "pkcs1v15" else "pss")
        return cls(verifier, verify.header, ctx.route.name, ctx.cluster.name, ctx.metrics, ctx.notify)

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        return self.check(ex, await next(ex))

    def check(self, ex: Exchange, response: UpstreamResponse) -> UpstreamResponse:
        """The answer, or ``SignatureInvalid`` raised: a plain call (the callback path uses it as is)."""
        if response.status != 200:
            return response
        signature = next_value(response.headers, self.header)
        if signature is None:
            self._fail(ex, "missing")
        elif not self.verifier.verify(response.body, signature):  # ~20 us: inline
            self._fail(ex, "invalid")
        return response

    def _fail(self, ex: Exchange, reason: str) -> None:
        self._failures[reason].inc()
        ex.partner_status = 200
        self.notify(
            Event(
                kind=KIND_SIGNATURE_INVALID,
                cluster=self.cluster,
                type=SignatureInvalid.type,
                title=f"Partner answer on route {self.route} failed signature verification ({reason})",
                request_id=ex.request_id,
            )
        )
        raise SignatureInvalid(reason)


def next_value(headers: tuple[tuple[str, str], ...], lname: str) -> str | None:
    for name, value in headers:
        if name.lower() == lname:
            return value
    return None
