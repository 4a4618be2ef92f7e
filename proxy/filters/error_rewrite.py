"""Error rewrite: partner error answers become a ``PartnerError`` through the cluster's errors.yaml table.

Success bodies are never parsed (no JSON work on the hot path); only a non-success answer is
read for its JSON:API ``errors[0].code``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from proxy.config.errors_table import ErrorTable
from proxy.exchange import Exchange, Next, UpstreamResponse
from proxy.metrics import Metrics, code_label
from proxy.notify import KIND_PARTNER_ERROR, Event

_MAX_ERROR_BODY = 64 * 1024


def partner_code_of(response: UpstreamResponse) -> str | None:
    """``errors[0].code`` of a JSON:API error body; None for non-JSON or code-less answers."""
    if "json" not in response.content_type.lower() or not response.body or len(response.body) > _MAX_ERROR_BODY:
        return None
    try:
        doc = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    errors = doc.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
        if isinstance(code, str) and 0 < len(code) <= 64:
            return code
    return None


class RewriteErrors:
    def __init__(self, cluster: str, table: ErrorTable, metrics: Metrics, notify: Callable[[Event], None] = lambda e: None) -> None:
        self.cluster = cluster
        self.table = table
        self.metrics = metrics
        self.notify = notify

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        response = await next(ex)
        ex.partner_status = response.status
        if response.ok:
            ex.partner_code = None
            ex.error_type = None
            return response
        code = partner_code_of(response)
        match = self.table.match(code, response.status)
        response.partner_code = code
        response.rule = match.rule
        response.error = self.table.error_for(match, code, response.status)
        ex.partner_code = code
        ex.error_type = match.rule.type
        self.metrics.partner_errors.labels(self.cluster, code_label(code), match.rule.type).inc()
        if match.by == "default":
            self.metrics.unmapped.labels(self.cluster).inc()
        if match.rule.notify:
            label = code_label(code)  # the partner's code, shaped like a code; never free text
            shown = label if code else f"HTTP {response.status}"
            self.notify(
                Event(
                    kind=KIND_PARTNER_ERROR,
                    cluster=self.cluster,
                    type=match.rule.type,
                    title=f"Partner error {shown} mapped to {match.rule.type} on cluster {self.cluster}",
                    partner_code=label if code else None,
                    request_id=ex.request_id,
                )
            )
        return response
