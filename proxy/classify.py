"""What a partner answer means: its JSON:API code matched against the route's errors.yaml table.

Filters share this typed verdict instead of reading config objects off the response: the error
rewrite counts and renders it, the credential filter asks whether the token was rejected. A success
is never parsed (no JSON work on the hot path); only a non-success answer is read for its
``errors[0].code``, and only once per answer.
"""

from __future__ import annotations

import json
from proxy.config.errors_table import ErrorTable
from proxy.exchange import UpstreamResponse, Verdict

_MAX_ERROR_BODY = 64 * 1024


SUCCESS = Verdict(partner_code=None, error=None)


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


class Classifier:
    """One per cluster's error table, compiled with the runtime."""

    def __init__(self, table: ErrorTable) -> None:
        self.table = table

    def __call__(self, response: UpstreamResponse) -> Verdict:
        verdict = response.verdict
        if verdict is None:
            verdict = response.verdict = self._classify(response)
        return verdict

    def _classify(self, response: UpstreamResponse) -> Verdict:
        if response.ok:
            return SUCCESS
        code = partner_code_of(response)
        match = self.table.match(code, response.status)
        rule = match.rule
        return Verdict(
            partner_code=code,
            error=self.table.error_for(match, code, response.status),
            error_type=rule.type,
            invalidate_token=rule.invalidate_token,
            retry_with_fresh_token=rule.invalidate_token and rule.retry,
            notify=rule.notify,
            unmapped=match.by == "default",
        )
