"""The error-rewrite filter alone: a verdict per partner answer, counted, notified when the rule says
so; successes are never parsed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from proxy.filters.error_rewrite import RewriteErrors
from proxy.metrics import Metrics
from proxy.notify import Event
from tests.factories import FakeNext, tclassifier, terror, texchange, tresponse


def rewrite(events: list[Event]) -> tuple[RewriteErrors, CollectorRegistry]:
    registry = CollectorRegistry()
    return RewriteErrors("tokopedia", tclassifier(), Metrics(registry), events.append), registry


async def test_a_success_passes_unparsed() -> None:
    events: list[Event] = []
    f, _ = rewrite(events)
    ex = texchange()
    answer = await f(ex, FakeNext([tresponse(200, b"not json at all")]))
    assert answer.verdict is None and ex.partner_code is None and events == []  # not even classified


async def test_a_mapped_code_becomes_the_rules_error_and_is_counted() -> None:
    events: list[Event] = []
    f, registry = rewrite(events)
    ex = texchange()
    answer = await f(ex, FakeNext([terror("P04")]))
    assert answer.verdict is not None and answer.verdict.error is not None
    assert (answer.verdict.error.type, answer.verdict.error.code, answer.verdict.error.status) == ("ForbiddenException", "PARTNER_FORBIDDEN", 403)
    assert (ex.partner_status, ex.partner_code, ex.error_type) == (400, "P04", "ForbiddenException")
    assert registry.get_sample_value("partner_proxy_partner_errors_total", {"cluster": "tokopedia", "partner_code": "P04", "type": "ForbiddenException"}) == 1
    assert events == []


async def test_notify_rules_notify_and_unknown_codes_are_counted_unmapped() -> None:
    events: list[Event] = []
    f, registry = rewrite(events)
    await f(texchange(), FakeNext([terror("P08", 403)]))
    assert [e.partner_code for e in events] == ["P08"]
    answer = await f(texchange(), FakeNext([tresponse(500, b"<html>oops</html>", "text/html")]))
    assert answer.verdict is not None and answer.verdict.unmapped and answer.verdict.partner_code is None
    assert registry.get_sample_value("partner_proxy_partner_unmapped_errors_total", {"cluster": "tokopedia"}) == 1
