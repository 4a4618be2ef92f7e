"""The header policy, both directions: what of the app's request reaches the partner, and what of
the partner's answer reaches the app. Nothing else decides it (filters add only their own header,
e.g. the credential filter's ``Authorization``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from email.utils import formatdate

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import UpstreamProtocolError

# A header value an HTTP client refuses (RFC 9110 5.5: field-vchar, SP, HTAB, obs-text only).
_BAD_VALUE = re.compile("[\x00-\x08\x0a-\x1f\x7f]").search


def bad_header_value(value: str) -> bool:
    """True if ``value`` holds CR, LF, NUL, another C0 control other than HTAB, or DEL."""
    return _BAD_VALUE(value) is not None


class BadHeaderValue(ValueError):
    """A partner header we would pass back holds a character the app's client would refuse."""

# Never forwarded: the app's own credentials and cookies, Host, hop-by-hop headers (RFC 9110 7.6.1),
# framing (re-done by the client), and the tracing headers we set ourselves.
DROP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Authorization", "Cookie", "Host", "Connection", "Keep-Alive", "Proxy-Authenticate",
        "Proxy-Authorization", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Content-Length", "Expect", "Accept-Encoding", "X-Request-Id", "traceparent", "tracestate",
    )
)


class HttpDate:
    """RFC 1123 ``Date`` values (``Tue, 01 Dec 2026 09:00:00 GMT``), formatted once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, formatdate(now, usegmt=True)
        return self._value


def upstream_headers(
    headers: CIMultiDictProxy[str],
    request_id: str,
    traceparent: str,
    tracestate: str | None = None,
    set_headers: tuple[tuple[str, str], ...] = (),
    date: str | None = None,
) -> CIMultiDict[str]:
    """The app's headers minus everything a proxy must not forward, the route's own headers
    (``upstream.headers``, replacing the app's), a fresh ``Date`` when the route asks, and the
    trace context: our ``traceparent`` and the incoming ``tracestate``, checked and unchanged."""
    drop = DROP_HEADERS
    connection = headers.get("Connection")
    if connection:  # RFC 9110 7.6.1: headers the Connection header names are hop-by-hop too
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    kept = []
    for name, value in headers.items():
        if name.lower() not in drop:
            if not value.isascii():
                # The pure-Python parser hands non-UTF-8 bytes over as surrogates, which the
                # client cannot encode; forward them as replacement characters instead of a 500.
                value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            kept.append((name, value))
    upstream = CIMultiDict(kept)
    for name, value in set_headers:
        upstream[name] = value
    if date is not None:
        upstream["Date"] = date
    # The app cannot have sent these (DROP_HEADERS); only the route's own headers could name them,
    # so without those a plain append does (no search for an existing name).
    put = upstream.__setitem__ if set_headers else upstream.add
    put("Accept-Encoding", "identity")  # success bodies pass through untouched, never re-encoded
    put("X-Request-Id", request_id)
    put("traceparent", traceparent)
    if tracestate:
        put("tracestate", tracestate)
    return upstream


def wire_headers(headers: CIMultiDict[str]) -> list[tuple[str, str]]:
    """The upstream headers as sent. The app's values were checked by the HTTP parser; ours (a token
    from the token endpoint) are not: a CR or LF would start a new header line on the wire."""
    if _BAD_VALUE("\t".join(headers.values())) is not None:  # one scan; HTAB itself is allowed
        for name, value in headers.items():
            if bad_header_value(value):
                raise UpstreamProtocolError(f"refusing to send header {name} with a control character")
    return list(headers.items())


def answer_headers(headers: Iterable[tuple[str, str]], pass_back: frozenset[str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """From the partner's answer: its Content-Type (the first) and the route's allow-listed headers
    (``pass_back``, lower-case names), each checked; everything else stays with the sidecar."""
    content_type = ""
    passed: list[tuple[str, str]] = []
    for name, value in headers:
        lname = name.lower()
        if lname == "content-type":
            if content_type:
                continue
        elif lname not in pass_back:
            continue
        if bad_header_value(value):
            raise BadHeaderValue(f"control character in the partner's {name} header")
        if lname == "content-type":
            content_type = value
        else:
            passed.append((name, value))
    return content_type, tuple(passed)


_BAD_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f-\xff]").search  # _BAD_VALUE, and anything not ASCII


def answer_lines(headers: Iterable[tuple[bytes, bytes]], pass_back: frozenset[bytes]) -> tuple[bytes, bytes] | None:
    """``answer_headers`` on the parser's bytes (``proxy.lane``): the first Content-Type value and
    the allow-listed headers as ready ``name: value`` lines. None where ``answer_headers`` would
    refuse a value, and for a non-ASCII value (the ordinary path re-encodes it): the caller then
    hands the answer to ``answer_headers``' path, which decides. ``tests/test_lane.py`` checks the
    two agree."""
    content_type = b""
    lines = b""
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-type":
            if content_type:  # as answer_headers: the first non-empty one
                continue
            if _BAD_BYTES(value) is not None:
                return None
            content_type = value
        elif lname in pass_back:
            if _BAD_BYTES(value) is not None or not name.isascii():
                return None
            lines += b"%s: %s\r\n" % (name, value)
    return content_type, lines


def downstream_headers(request_id: str, content_type: str, passed: tuple[tuple[str, str], ...] = ()) -> CIMultiDict[str]:
    """What a passed-through partner answer carries back: its content type, the allow-listed
    partner headers (already checked by ``answer_headers``) and our request id."""
    headers = CIMultiDict(passed)
    headers["X-Request-Id"] = request_id
    if content_type:
        headers["Content-Type"] = content_type
    return headers
