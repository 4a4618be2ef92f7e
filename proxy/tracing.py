"""Request ids, W3C trace context and language negotiation: small, pure and cheap.

Every value taken from a request header is validated here before it is echoed or logged, so a
header cannot smuggle CR/LF into a response or a log record.
"""

from __future__ import annotations

import random
import re

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_LANG_RE = re.compile(r"^[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*$|^\*$")


# Request and span ids need uniqueness, not secrecy: the Mersenne Twister (seeded from the OS at
# start) costs no system call, where os.urandom made three per request.
_random = random.Random()


_bits = _random.getrandbits


def new_request_id() -> str:
    return _bits(128).to_bytes(16, "little").hex()  # half the cost of formatting the int as hex


_ZERO_SPAN = "0" * 16


def _span_id() -> str:
    span = _bits(64).to_bytes(8, "little").hex()
    return span if span != _ZERO_SPAN else "0000000000000001"  # all zeros is not a valid span id


def _new_trace() -> str:
    """A new sampled traceparent: trace and span id from one draw."""
    ids = _bits(192).to_bytes(24, "little").hex()
    span = ids[32:]
    return f"00-{ids[:32]}-{span if span != _ZERO_SPAN else '0000000000000001'}-01"


def request_id_from(header: str | None) -> str:
    """Keep a sane incoming ``X-Request-Id``; anything else is replaced, not echoed."""
    if header and _REQUEST_ID_RE.match(header):
        return header
    return new_request_id()


def child_traceparent(header: str | None) -> str:
    """The traceparent for the upstream call: keep the trace id and flags, mint a new span id.

    An absent or invalid header (bad shape, all-zero ids, version ff) starts a new sampled trace.
    """
    if header:
        m = _TRACEPARENT_RE.match(header.strip().lower())
        if m:
            version, trace_id, parent_id, flags = m.groups()
            if version != "ff" and trace_id != "0" * 32 and parent_id != "0" * 16:
                return f"00-{trace_id}-{_span_id()}-{flags}"
    return _new_trace()


MAX_TRACESTATE = 512  # W3C Trace Context: a vendor may truncate past 512 characters; we forward or drop


def forwarded_tracestate(traceparent: str | None, tracestate: str | None) -> str | None:
    """The incoming ``tracestate``, unchanged, when it belongs to a valid incoming ``traceparent``
    (W3C Trace Context: a proxy forwards it; without a valid parent it is discarded)."""
    if not tracestate or not traceparent or len(tracestate) > MAX_TRACESTATE or not tracestate.isascii():
        return None
    m = _TRACEPARENT_RE.match(traceparent.strip().lower())
    if not m or m.group(1) == "ff" or m.group(2) == "0" * 32 or m.group(3) == "0" * 16:
        return None
    return tracestate


class LanguagePicker:
    """``pick_language`` with a small memo: apps send the same few Accept-Language values."""

    __slots__ = ("available", "default", "_memo")

    MAX_MEMO = 256

    def __init__(self, available: frozenset[str], default: str) -> None:
        self.available = available
        self.default = default
        self._memo: dict[str, str] = {}

    def __call__(self, header: str | None) -> str:
        if not header:
            return self.default
        found = self._memo.get(header)
        if found is None:
            found = pick_language(header, self.available, self.default)
            if len(self._memo) < self.MAX_MEMO and len(header) <= 200:
                self._memo[header] = found
        return found


def pick_language(header: str | None, available: frozenset[str], default: str) -> str:
    """RFC 9110 Accept-Language with q-values; ``id-ID,id;q=0.9,en;q=0.8`` gives ``id``."""
    if not header:
        return default
    best, best_q = default, 0.0
    for part in header.split(",")[:20]:
        piece = part.strip()
        if not piece:
            continue
        tag, _, params = piece.partition(";")
        tag = tag.strip()
        if not _LANG_RE.match(tag):
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        if q <= 0:
            continue
        primary = tag.split("-", 1)[0].lower()
        # earlier entries win ties, as browsers order by preference
        if primary in available and q > best_q:
            best, best_q = primary, q
        elif tag == "*" and q > best_q:
            best, best_q = default, q
    return best
