"""The three destinations (Slack, Datadog, New Relic): how a ``Message`` becomes each one's request.

URLs and keys are held in ``Secret`` objects and revealed only into request headers and the URL;
a sink's ``repr`` is its name.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from proxy.config.models import NotificationsConfig, Secret, SinkConfig
from proxy.notify.events import KIND_PARTNER_ERROR, Message

_MAX_FIELD = 200          # payload strings are capped: request ids are request input
SOURCE = "partner-proxy"  # who the notifications say they are from
_NR_EVENT_TYPE = "PartnerProxyNotification"


def _cap(value: str | None) -> str | None:
    if value is None:
        return None
    return value if len(value) <= _MAX_FIELD else value[: _MAX_FIELD - 1] + "…"


def _seconds(window: float) -> str:
    return f"{window:g} s"


def _headline(msg: Message) -> str:
    """The one-line human text shared by every sink."""
    ev = msg.event
    title = _cap(ev.title) or ev.type
    if msg.summary:
        return f"{title}: {msg.suppressed} more like it in the last {_seconds(msg.window)}"
    if msg.suppressed:
        return f"{title} (and {msg.suppressed} more like it in the last {_seconds(msg.window)})"
    return title


def _details(msg: Message) -> list[tuple[str, str]]:
    ev = msg.event
    rows = [("kind", ev.kind), ("cluster", ev.cluster), ("type", ev.type)]
    if ev.partner_code:
        rows.append(("partner_code", ev.partner_code))
    if ev.request_id:
        rows.append(("request_id", ev.request_id))
    if ev.count != 1:
        rows.append(("count", str(ev.count)))
    if msg.suppressed:
        rows.append(("suppressed", str(msg.suppressed)))
    return [(k, _cap(v) or "") for k, v in rows]


class Sink:
    """One destination. Subclasses say how a ``Message`` becomes a request; posting is shared.

    The URL and key are held but never shown: ``repr`` gives the sink name only.
    """

    name = "sink"

    def __init__(self, url: str, api_key: Secret = Secret("")) -> None:
        self._url = url
        self._key = api_key

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    __str__ = __repr__

    def headers(self) -> dict[str, str]:
        return {}

    def body(self, msg: Message) -> Any:
        raise NotImplementedError

    async def post(self, session: aiohttp.ClientSession, msg: Message) -> None:
        """Raise on anything but a 2xx answer. Redirects are not followed: a redirect would carry the key elsewhere."""
        async with session.post(self._url, json=self.body(msg), headers=self.headers(), allow_redirects=False) as resp:
            await resp.read()
            if not 200 <= resp.status < 300:
                raise _HttpStatus(resp.status, _retry_after(resp.headers.get("Retry-After")))


class _HttpStatus(Exception):
    """A sink answered with a non-2xx status (only the number travels: bodies may echo input)."""

    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after


def _retry_after(header: str | None) -> float | None:
    """``Retry-After`` in seconds (Slack sends whole seconds); an HTTP-date or garbage gives None."""
    if not header:
        return None
    text = header.strip()
    if not text.isdigit() or len(text) > 6:
        return None
    return float(text)


def _slack_escape(text: str) -> str:
    # Slack treats & < > as control characters (links, mentions); escape so text stays text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackSink(Sink):
    """Slack incoming webhook: the URL itself is the credential."""

    name = "slack"

    def body(self, msg: Message) -> dict[str, Any]:
        lines = [f"*{_slack_escape(_headline(msg))}*"]
        lines += [f"{k}: `{_slack_escape(v)}`" for k, v in _details(msg)]
        return {"text": "\n".join(lines)}


class DatadogSink(Sink):
    """Datadog Events API v1 (``POST /api/v1/events`` with ``DD-API-KEY``)."""

    name = "datadog"

    def headers(self) -> dict[str, str]:
        return {"DD-API-KEY": self._key.reveal()}

    def body(self, msg: Message) -> dict[str, Any]:
        ev = msg.event
        tags = [f"cluster:{ev.cluster}", f"type:{ev.type}"]
        if ev.partner_code:
            tags.append(f"partner_code:{_cap(ev.partner_code)}")
        tags.append(f"kind:{ev.kind}")
        text = "\n".join(f"{k}: {v}" for k, v in _details(msg))
        return {
            "title": _headline(msg)[:100],
            "text": text,
            "alert_type": "warning" if ev.kind == KIND_PARTNER_ERROR else "error",
            "source_type_name": SOURCE,
            "tags": tags,
            "aggregation_key": f"{ev.kind}:{ev.cluster}:{ev.type}"[:100],
        }


class NewRelicSink(Sink):
    """New Relic Event API (``POST /v1/accounts/<id>/events``).

    The Event API's documented header for an Insert key is ``X-Insert-Key``. Attribute values may
    only be strings or numbers, so absent optional fields are left out rather than sent as null.
    """

    name = "newrelic"
    header = "X-Insert-Key"

    def headers(self) -> dict[str, str]:
        return {self.header: self._key.reveal()}

    def body(self, msg: Message) -> list[dict[str, Any]]:
        ev = msg.event
        event: dict[str, Any] = {
            "eventType": _NR_EVENT_TYPE,
            "kind": ev.kind,
            "cluster": ev.cluster,
            "type": ev.type,
            "count": ev.count,
            "suppressed": msg.suppressed,
            "title": _headline(msg),
        }
        if ev.partner_code:
            event["partnerCode"] = _cap(ev.partner_code)
        if ev.request_id:
            event["requestId"] = _cap(ev.request_id)
        return [event]


def build_sinks(config: NotificationsConfig) -> list[Sink]:
    """The sinks that are on: a URL, and for Datadog and New Relic a key too (half-configured means off)."""
    sinks: list[Sink] = []
    if config.slack.enabled:
        sinks.append(SlackSink(config.slack.url.reveal()))
    for cls, sc in ((DatadogSink, config.datadog), (NewRelicSink, config.newrelic)):
        if _keyed(sc):
            sinks.append(cls(sc.url.reveal(), sc.api_key))
    return sinks


def _keyed(sc: SinkConfig) -> bool:
    return sc.enabled and bool(sc.api_key)
