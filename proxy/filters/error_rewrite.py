"""Error rewrite: a partner error answer is classified by the cluster's errors.yaml table, counted,
notified when its rule says so, and recorded on the exchange; the listener renders the verdict's
error as the envelope. Success bodies are never parsed."""

from __future__ import annotations

from collections.abc import Callable

from proxy.classify import Classifier
from proxy.exchange import Exchange, UpstreamResponse
from proxy.filters.context import FilterContext
from proxy.metrics import Metrics, code_label
from proxy.notify import KIND_PARTNER_ERROR, Event
from proxy.types import Next


class RewriteErrors:
    def __init__(self, cluster: str, classify: Classifier, metrics: Metrics, notify: Callable[[Event], None] = lambda e: None) -> None:
        self.cluster = cluster
        self.classify = classify
        self.metrics = metrics
        self.notify = notify

    @classmethod
    def from_context(cls, ctx: FilterContext) -> RewriteErrors:
        return cls(ctx.cluster.name, ctx.classify, ctx.metrics, ctx.notify)

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        return self.record(ex, await next(ex))

    def record(self, ex: Exchange, response: UpstreamResponse) -> UpstreamResponse:
        """The answer's verdict on the exchange, counted and notified: a plain call (the callback
        path uses it as is)."""
        ex.partner_status = response.status
        if response.ok:
            ex.partner_code = None
            ex.error_type = None
            return response
        verdict = self.classify(response)
        code = verdict.partner_code
        ex.partner_code = code
        ex.error_type = verdict.error_type
        label = code_label(code)  # the partner's code, shaped like a code; never free text
        self.metrics.partner_errors.labels(self.cluster, label, verdict.error_type).inc()
        if verdict.unmapped:
            self.metrics.unmapped.labels(self.cluster).inc()
        if verdict.notify:
            shown = label if code else f"HTTP {response.status}"
            self.notify(
                Event(
                    kind=KIND_PARTNER_ERROR,
                    cluster=self.cluster,
                    type=verdict.error_type or "PartnerError",
                    title=f"Partner error {shown} mapped to {verdict.error_type} on cluster {self.cluster}",
                    partner_code=label if code else None,
                    request_id=ex.request_id,
                )
            )
        return response
