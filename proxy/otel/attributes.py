"""The allow-list of span attributes: the only keys a span may carry, and how each value is checked.

Spans leave the process (to a vendor), so what they may hold is decided here, once, and not at
each call site: a key outside ``ALLOWED`` is dropped, whatever the caller passes. There is no
``http.request.header.*`` key at all, so no header value (authorization, cookies, anything the
``log.redact_fields`` list names) can reach a span; ``url.path`` loses any query string or
fragment; free-text values are capped; the token source, methods and partner codes come from
closed sets. Never a body, a token, a secret or a query string.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

AttrValue = str | int | float | bool

_MAX_TEXT = 256
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{1,15}$")
_HOST = re.compile(r"^[A-Za-z0-9.\-:\[\]]{1,253}$")
_EVENT = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
TOKEN_SOURCES = frozenset({"memory", "redis", "fetch"})
BREAKER_STATES = frozenset({"closed", "open", "half_open"})


def _text(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return None
    return v if len(v) <= _MAX_TEXT else v[:_MAX_TEXT]


def _ident(v: Any) -> str | None:
    return v if isinstance(v, str) and _IDENT.match(v) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _status(v: Any) -> int | None:
    n = _int(v)
    return n if n is not None and 100 <= n <= 599 else None


def _port(v: Any) -> int | None:
    n = _int(v)
    return n if n is not None and 0 < n < 65536 else None


def _method(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    return v if v in _METHODS else "_OTHER"  # the semantic conventions' word for anything else


def _path(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return None
    cut = min((i for i in (v.find("?"), v.find("#")) if i >= 0), default=len(v))
    return _text(v[:cut])


def _host(v: Any) -> str | None:
    return v if isinstance(v, str) and _HOST.match(v) else None


def _code(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    return v if _CODE.match(v) else "other"


def _one_of(choices: frozenset[str]) -> Callable[[Any], str | None]:
    return lambda v: v if v in choices else None


def _request_id(v: Any) -> str | None:
    return v if isinstance(v, str) and _REQUEST_ID.match(v) else None


ALLOWED: Mapping[str, Callable[[Any], AttrValue | None]] = {
    # OpenTelemetry HTTP semantic conventions
    "http.request.method": _method,
    "http.response.status_code": _status,
    "http.route": _text,
    "http.request.resend_count": _int,
    "url.path": _path,
    "url.scheme": _one_of(frozenset({"http", "https"})),
    "server.address": _host,
    "server.port": _port,
    "error.type": _ident,
    "network.protocol.version": _one_of(frozenset({"1.0", "1.1", "2"})),
    # ours
    "partner_proxy.route": _ident,
    "partner_proxy.cluster": _ident,
    "partner_proxy.provider": _ident,
    "partner_proxy.partner_code": _code,
    "partner_proxy.error_type": _ident,
    "partner_proxy.token_source": _one_of(TOKEN_SOURCES),
    "partner_proxy.attempt": _int,
    "partner_proxy.request_id": _request_id,
    "partner_proxy.retry_reason": _ident,
    "partner_proxy.breaker_from": _one_of(BREAKER_STATES),
    "partner_proxy.breaker_to": _one_of(BREAKER_STATES),
    "partner_proxy.redis_result": _one_of(frozenset({"hit", "miss", "error", "stale"})),
}


def clean(attributes: Mapping[str, Any] | None) -> dict[str, AttrValue]:
    """Only allowed keys, with values that passed their check; everything else is dropped silently."""
    out: dict[str, AttrValue] = {}
    if not attributes:
        return out
    for key, value in attributes.items():
        check = ALLOWED.get(key)
        if check is None or value is None:
            continue
        checked = check(value)
        if checked is not None:
            out[key] = checked
    return out


def event_name(name: str) -> str | None:
    """Event names are code constants (``retry``, ``breaker.transition``); anything else is dropped."""
    return name if _EVENT.match(name) else None
