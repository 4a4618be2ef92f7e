"""Notifications against real HTTP receivers on loopback (one aiohttp app standing in for all three sinks).

The dedup clock is injected (``FakeClock``); the worker's periodic check uses real time, lowered
through ``Notifier.tick_interval`` so tests stay fast. No test asserts timings.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from proxy.config.models import BreakerConfig, NotificationsConfig, Secret, SinkConfig
from proxy.errors import CircuitOpen
from proxy.metrics import Metrics
from proxy.notify import Event, Notifier
from proxy.upstream.breaker import BreakerGuard
from tests.receivers import DD_KEY, DD_PATH, NR_KEY, NR_PATH, SECRETS, SLACK_PATH, Receiver

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now




@pytest.fixture
async def notifiers() -> AsyncIterator[list[Notifier]]:
    made: list[Notifier] = []
    yield made
    for n in made:
        await n.stop(flush_timeout=0.2)


def full_config(rec: Receiver, **kw: Any) -> NotificationsConfig:
    base: dict[str, Any] = dict(
        dedup_window=60.0,
        timeout=0.3,
        queue_size=100,
        token_failure_threshold=3,
        slack=SinkConfig(Secret(rec.url(SLACK_PATH))),
        datadog=SinkConfig(Secret(rec.url(DD_PATH)), Secret(DD_KEY)),
        newrelic=SinkConfig(Secret(rec.url(NR_PATH)), Secret(NR_KEY)),
    )
    base.update(kw)
    return NotificationsConfig(**base)


async def started(made: list[Notifier], config: NotificationsConfig, metrics: Metrics, clock: Callable[[], float] | None = None, tick: float = 0.02) -> Notifier:
    n = Notifier(config, metrics, clock=clock) if clock is not None else Notifier(config, metrics)
    n.tick_interval = tick
    made.append(n)
    await n.start()
    return n


def metric(metrics: Metrics, sink: str, result: str) -> float:
    v = metrics.registry.get_sample_value("partner_proxy_notifications_total", {"sink": sink, "result": result})
    return v or 0.0


async def eventually(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def counts(rec: Receiver) -> dict[str, int]:
    return {k: len(v) for k, v in rec.got.items()}


PARTNER_EVENT = Event(
    kind="partner_error",
    cluster="tokopedia",
    type="ProductClosedException",
    title="Partner says the product is closed",
    partner_code="S03",
    request_id="req-6f1c",
)


async def test_each_sink_receives_documented_payload_and_headers(receiver: Receiver, notifiers: list[Notifier]) -> None:
    metrics = Metrics()
    n = await started(notifiers, full_config(receiver), metrics)
    assert n.enabled
    n.emit(PARTNER_EVENT)
    await eventually(lambda: all(len(v) == 1 for v in receiver.got.values()))

    slack = receiver.got["slack"][0]
    assert slack.path == SLACK_PATH
    assert slack.headers["Content-Type"].startswith("application/json")
    text = slack.json["text"]
    for part in ("Partner says the product is closed", "tokopedia", "ProductClosedException", "S03", "req-6f1c"):
        assert part in text

    dd = receiver.got["datadog"][0]
    assert dd.headers["DD-API-KEY"] == DD_KEY
    body = dd.json
    assert body["title"] == "Partner says the product is closed"
    assert body["alert_type"] == "warning"
    assert body["source_type_name"] == "partner-proxy"
    assert body["tags"] == ["cluster:tokopedia", "type:ProductClosedException", "partner_code:S03", "kind:partner_error"]
    assert body["aggregation_key"] == "partner_error:tokopedia:ProductClosedException"
    assert "req-6f1c" in body["text"]

    nr = receiver.got["newrelic"][0]
    assert nr.headers["X-Insert-Key"] == NR_KEY
    assert nr.json == [
        {
            "eventType": "PartnerProxyNotification",
            "kind": "partner_error",
            "cluster": "tokopedia",
            "type": "ProductClosedException",
            "partnerCode": "S03",
            "requestId": "req-6f1c",
            "count": 1,
            "suppressed": 0,
            "title": "Partner says the product is closed",
        }
    ]
    await eventually(lambda: metric(metrics, "newrelic", "success") == 1)
    for sink in ("slack", "datadog", "newrelic"):
        assert metric(metrics, sink, "success") == 1


async def test_breaker_opening_posts_exactly_one_message_per_sink(receiver: Receiver, notifiers: list[Notifier]) -> None:
    metrics = Metrics()
    n = await started(notifiers, full_config(receiver), metrics)
    guard = BreakerGuard("tokopedia", BreakerConfig(fail_max=3, reset_timeout=30.0), metrics, n.breaker_opened)
    refused = 0
    for _ in range(10):
        try:
            async with guard.attempt() as attempt:
                attempt.fail("5xx")
        except CircuitOpen:
            refused += 1
    assert guard.state == "open" and refused == 7
    await n.stop()
    assert counts(receiver) == {"slack": 1, "datadog": 1, "newrelic": 1}
    nr = receiver.got["newrelic"][0].json[0]
    assert (nr["kind"], nr["cluster"], nr["type"]) == ("breaker_open", "tokopedia", "CircuitBreakerError")
    assert "partnerCode" not in nr and "requestId" not in nr
    dd = receiver.got["datadog"][0].json
    assert dd["alert_type"] == "error"
    assert dd["tags"] == ["cluster:tokopedia", "type:CircuitBreakerError", "kind:breaker_open"]


async def test_100_identical_events_give_one_message_then_one_summary(receiver: Receiver, notifiers: list[Notifier]) -> None:
    metrics = Metrics()
    clock = FakeClock()
    n = await started(notifiers, full_config(receiver), metrics, clock=clock)
    for i in range(100):
        n.emit(Event("partner_error", "tokopedia", "ProductClosedException", "Product closed", "S03", f"req-{i}"))
    assert metric(metrics, "dedup", "suppressed") == 99
    await eventually(lambda: all(len(v) == 1 for v in receiver.got.values()))
    await asyncio.sleep(0.1)  # several worker ticks inside the window: nothing more goes out
    assert counts(receiver) == {"slack": 1, "datadog": 1, "newrelic": 1}
    assert receiver.got["newrelic"][0].json[0]["requestId"] == "req-0"

    clock.now += 61  # the window passes with no new event: the worker sends the summary by itself
    await eventually(lambda: all(len(v) == 2 for v in receiver.got.values()))
    nr = receiver.got["newrelic"][1].json[0]
    assert nr["suppressed"] == 99
    assert nr["requestId"] == "req-99"  # the summary names the latest suppressed request
    assert "99 more like it in the last 60 s" in nr["title"]
    assert "99 more like it in the last 60 s" in receiver.got["slack"][1].json["text"]
    dd = receiver.got["datadog"][1].json
    assert "suppressed: 99" in dd["text"]
    assert dd["aggregation_key"] == "partner_error:tokopedia:ProductClosedException"

    clock.now += 61  # a window with nothing suppressed ends silently
    await asyncio.sleep(0.1)
    assert counts(receiver) == {"slack": 2, "datadog": 2, "newrelic": 2}
    n.emit(Event("partner_error", "tokopedia", "ProductClosedException", "Product closed", "S03", "req-new"))
    await eventually(lambda: all(len(v) == 3 for v in receiver.got.values()))
    assert receiver.got["newrelic"][2].json[0]["suppressed"] == 0


async def test_next_event_after_window_carries_count_and_stop_flushes_pending(receiver: Receiver, notifiers: list[Notifier]) -> None:
    metrics = Metrics()
    clock = FakeClock()
    # The periodic check effectively never runs: counts must travel with the next event or at stop.
    n = await started(notifiers, full_config(receiver), metrics, clock=clock, tick=100.0)
    breaker = Event("breaker_open", "tokopedia", "CircuitBreakerError", "Circuit breaker for tokopedia opened")
    for _ in range(5):
        n.emit(breaker)
    n.emit(Event("breaker_open", "other", "CircuitBreakerError", "Circuit breaker for other opened"))  # another key
    await eventually(lambda: all(len(v) == 2 for v in receiver.got.values()))

    clock.now += 60
    n.emit(breaker)
    await eventually(lambda: all(len(v) == 3 for v in receiver.got.values()))
    nr = receiver.got["newrelic"][2].json[0]
    assert nr["suppressed"] == 4 and nr["cluster"] == "tokopedia"
    assert nr["title"] == "Circuit breaker for tokopedia opened (and 4 more like it in the last 60 s)"

    for _ in range(3):  # inside the new window
        n.emit(breaker)
    await n.stop()
    assert counts(receiver) == {"slack": 4, "datadog": 4, "newrelic": 4}
    assert receiver.got["newrelic"][3].json[0]["suppressed"] == 3
    assert metric(metrics, "dedup", "suppressed") == 7


async def test_token_fetch_failures_notify_from_threshold_and_dedup_repeats(receiver: Receiver, notifiers: list[Notifier]) -> None:
    metrics = Metrics()
    n = await started(notifiers, full_config(receiver), metrics, clock=FakeClock())
    for consecutive in range(1, 6):
        n.token_fetch_failed("tokopedia", "timeout", consecutive)
    await n.stop()
    events = [r.json[0] for r in receiver.got["newrelic"]]
    assert [(e["kind"], e["cluster"], e["type"], e["count"], e["suppressed"]) for e in events] == [
        ("token_fetch_failing", "tokopedia", "AuthenticationFailure", 3, 0),
        ("token_fetch_failing", "tokopedia", "AuthenticationFailure", 5, 2),
    ]
    assert "timeout" in events[0]["title"]


async def test_hanging_and_failing_sinks_are_counted_and_emit_stays_non_blocking(receiver: Receiver, notifiers: list[Notifier]) -> None:
    receiver.mode.update(slack="hang", datadog="500")
    metrics = Metrics()
    n = await started(notifiers, full_config(receiver, timeout=0.2, queue_size=10), metrics)
    n.emit(PARTNER_EVENT)
    await eventually(lambda: metric(metrics, "slack", "timeout") == 1)
    assert metric(metrics, "datadog", "failure") == 1
    assert metric(metrics, "newrelic", "success") == 1  # not held back by the hanging Slack

    total = 1000
    for i in range(total):
        n.emit(Event("partner_error", f"cluster-{i}", "PartnerError", "distinct"))  # never raises, never blocks
        assert n.queued() <= 10
    dropped_while_emitting = metric(metrics, "queue", "dropped")
    assert dropped_while_emitting >= total - 10

    await n.stop(flush_timeout=0.3)  # Slack hangs: the queue cannot drain in time
    delivered = metric(metrics, "newrelic", "success") - 1
    dropped = metric(metrics, "queue", "dropped")
    assert total - 1 <= delivered + dropped <= total  # at most one message was in flight when cancelled
    assert n.queued() == 0


async def test_queue_overflow_counts_dropped(receiver: Receiver, notifiers: list[Notifier]) -> None:
    metrics = Metrics()
    n = await started(notifiers, full_config(receiver, queue_size=3), metrics)
    for i in range(10):  # no await in between: the worker has not taken anything yet
        n.emit(Event("partner_error", f"c{i}", "PartnerError", "overflow"))
    assert n.queued() == 3
    assert metric(metrics, "queue", "dropped") == 7
    await n.stop()
    assert counts(receiver) == {"slack": 3, "datadog": 3, "newrelic": 3}


async def test_disabled_sinks_make_no_requests(receiver: Receiver, notifiers: list[Notifier]) -> None:
    metrics = Metrics()
    only_slack = NotificationsConfig(
        slack=SinkConfig(Secret(receiver.url(SLACK_PATH))),
        datadog=SinkConfig(Secret(receiver.url(DD_PATH))),  # no key: off even if the loader let it through
        newrelic=SinkConfig(Secret(""), Secret(NR_KEY)),  # no URL: off
    )
    n = await started(notifiers, only_slack, metrics)
    assert [s.name for s in n.sinks] == ["slack"]
    n.emit(PARTNER_EVENT)
    await n.stop()
    assert counts(receiver) == {"slack": 1, "datadog": 0, "newrelic": 0}

    nothing = await started(notifiers, NotificationsConfig(), metrics)
    assert not nothing.enabled
    for _ in range(100):
        nothing.emit(PARTNER_EVENT)
    nothing.breaker_opened("tokopedia")
    await nothing.stop()
    assert counts(receiver) == {"slack": 1, "datadog": 0, "newrelic": 0}
    assert metric(metrics, "queue", "dropped") == 0


async def test_emit_before_start_off_loop_and_after_stop_drops(receiver: Receiver, notifiers: list[Notifier]) -> None:
    metrics = Metrics()
    n = Notifier(full_config(receiver), metrics)
    notifiers.append(n)
    n.emit(PARTNER_EVENT)
    assert metric(metrics, "queue", "dropped") == 1

    await n.start()
    worker = threading.Thread(target=n.emit, args=(PARTNER_EVENT,))
    worker.start()
    worker.join()
    assert metric(metrics, "queue", "dropped") == 2

    await n.stop()
    n.emit(PARTNER_EVENT)
    assert metric(metrics, "queue", "dropped") == 3
    assert counts(receiver) == {"slack": 0, "datadog": 0, "newrelic": 0}


async def test_no_secret_in_payloads_reprs_or_logs(receiver: Receiver, notifiers: list[Notifier], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    metrics = Metrics()
    clock = FakeClock()
    # Every failure path at once: Slack answers 500, Datadog hangs, New Relic's URL refuses connections.
    receiver.mode.update(slack="500", datadog="hang")
    refused = f"http://127.0.0.1:1/v1/accounts/4242/events?key={NR_KEY}"
    cfg = full_config(receiver, timeout=0.2, newrelic=SinkConfig(Secret(refused), Secret(NR_KEY)))
    n = await started(notifiers, cfg, metrics, clock=clock)
    for text in (repr(n), str(n), *(repr(s) for s in n.sinks), *(str(s) for s in n.sinks)):
        assert not any(secret in text for secret in SECRETS), text
    n.breaker_opened("tokopedia")
    n.token_fetch_failed("tokopedia", "http_error", 3)
    n.emit(PARTNER_EVENT)
    n.emit(PARTNER_EVENT)
    clock.now += 61
    await eventually(lambda: metric(metrics, "newrelic", "failure") == 4)
    await n.stop()
    assert metric(metrics, "slack", "failure") == 4
    assert metric(metrics, "datadog", "timeout") == 4

    bodies = [r.raw.decode() for sink in ("slack", "datadog") for r in receiver.got[sink]]
    assert len(bodies) == 8
    for body in bodies:
        assert not any(secret in body for secret in SECRETS), body
    assert "notification to slack failed: HTTP 500" in caplog.text
    assert "notification to datadog timed out" in caplog.text
    assert "notification to newrelic failed" in caplog.text
    assert not any(secret in caplog.text for secret in SECRETS)
    assert "127.0.0.1:1" not in caplog.text and "/services/" not in caplog.text


# ---- Slack's rate limit: 429 with Retry-After -------------------------------------------------------


async def test_slack_429_is_retried_after_retry_after_and_others_are_unaffected(receiver: Receiver, notifiers: list[Notifier]) -> None:
    receiver.mode["slack"] = "429"
    receiver.retry_after = "1"
    receiver.limited["slack"] = 1
    metrics = Metrics()
    n = await started(notifiers, full_config(receiver), metrics)
    n.emit(Event("breaker_open", "tokopedia", "CircuitBreakerError", "Circuit breaker for tokopedia opened"))
    await eventually(lambda: metric(metrics, "datadog", "success") == 1 and metric(metrics, "newrelic", "success") == 1)
    assert len(receiver.got["slack"]) == 1 and metric(metrics, "slack", "success") == 0  # still waiting its Retry-After
    await eventually(lambda: metric(metrics, "slack", "success") == 1, timeout=5.0)
    assert len(receiver.got["slack"]) == 2
    assert receiver.got["slack"][0].raw == receiver.got["slack"][1].raw  # the same message, posted again
    assert metric(metrics, "slack", "rate_limited") == 1 and metric(metrics, "slack", "failure") == 0
    assert len(receiver.got["datadog"]) == len(receiver.got["newrelic"]) == 1


async def test_slack_429_retries_are_bounded(receiver: Receiver, notifiers: list[Notifier]) -> None:
    receiver.mode["slack"] = "429"
    receiver.retry_after = "0"
    receiver.limited["slack"] = 100  # never lets up
    metrics = Metrics()
    n = await started(notifiers, full_config(receiver), metrics)
    n.max_tries = 3
    n.emit(Event("breaker_open", "tokopedia", "CircuitBreakerError", "opened"))
    await eventually(lambda: metric(metrics, "slack", "failure") == 1)
    assert len(receiver.got["slack"]) == 3 and metric(metrics, "slack", "rate_limited") == 2
    # a Retry-After beyond the bound is not waited for at all: the queue moves on
    receiver.retry_after = "3600"
    n.emit(Event("breaker_open", "other", "CircuitBreakerError", "opened"))
    await eventually(lambda: metric(metrics, "slack", "failure") == 2)
    assert len(receiver.got["slack"]) == 4
    n.emit(Event("breaker_open", "third", "CircuitBreakerError", "opened"))
    await eventually(lambda: metric(metrics, "datadog", "success") == 3)
