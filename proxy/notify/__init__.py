"""Error notifications to Slack, Datadog and New Relic: events (``events``), destinations
(``sinks``) and the deduplicating queue that posts them (``notifier``)."""

from proxy.notify.events import (
    KIND_BREAKER_OPEN,
    KIND_PARTNER_ERROR,
    KIND_SIGNATURE_INVALID,
    KIND_TOKEN_FAILING,
    Event,
    Message,
)
from proxy.notify.notifier import Notifier
from proxy.notify.sinks import DatadogSink, NewRelicSink, Sink, SlackSink, build_sinks

__all__ = [
    "KIND_BREAKER_OPEN", "KIND_PARTNER_ERROR", "KIND_SIGNATURE_INVALID", "KIND_TOKEN_FAILING",
    "DatadogSink", "Event", "Message", "NewRelicSink", "Notifier", "Sink", "SlackSink", "build_sinks",
]
