"""What every upstream transport is: one interface, and one verdict table by what happened on the wire.

A transport sends one ``UpstreamRequest`` and returns one ``UpstreamAnswer``, or raises one of our
``UpstreamError`` types. It never retries, never counts, never guards: retries, the breaker, the
connection thresholds and metrics live above it (``proxy.upstream.forwarder``,
``proxy.upstream.cluster``), so they behave the same whichever transport a cluster uses.

Each transport has ONE table from its own exceptions to a wire ``Event`` (``http11.EXCEPTIONS``,
``aiohttp_client.EXCEPTIONS``; a test enumerates every exception each can raise). The ``Phase`` it
had reached plus that event then give the error, here, once, for both (DESIGN "Failure kinds"):

=================  ==========================  ==========================  ===========================
phase / event      CLOSED (EOF, reset)         TIMEOUT                     VIOLATION (breaks HTTP/1.1)
=================  ==========================  ==========================  ===========================
NOT_SENT           502 UPSTREAM_UNREACHABLE    502 UPSTREAM_UNREACHABLE    502 UPSTREAM_UNREACHABLE
SENT (no byte)     502 UPSTREAM_UNREACHABLE    504 UPSTREAM_TIMEOUT        502 UPSTREAM_PROTOCOL_ERROR
ANSWERING          502 UPSTREAM_PROTOCOL_ERROR 504 UPSTREAM_TIMEOUT        502 UPSTREAM_PROTOCOL_ERROR
=================  ==========================  ==========================  ===========================

For a non-idempotent method (POST, PATCH) every SENT and ANSWERING cell is 504
``UPSTREAM_OUTCOME_UNKNOWN`` instead (``OutcomeUnknown``, never retried): the partner may have acted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from yarl import URL

from proxy.errors import OutcomeUnknown, UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnreachable

# RFC 9110 9.2.2. Only these may be sent again after an ambiguous failure.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    target: str                            # raw (already percent-encoded) path and query: /api/v2/x?a=b
    headers: list[tuple[str, str]]         # without Host and Content-Length: the transport writes those
    body: bytes = b""

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT


@dataclass(slots=True)
class UpstreamAnswer:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)  # as received, decoded latin-1
    body: bytes = b""

    def header(self, name: str) -> str:
        """The first value of header ``name`` (case-insensitive), or ``""``."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return ""


class Transport(Protocol):
    """An HTTP/1.1 client for one origin (a cluster's ``base_url``)."""

    async def send(self, request: UpstreamRequest, *, timeout: float) -> UpstreamAnswer:
        """Send ``request`` and read the whole answer within ``timeout`` seconds, connect included."""
        ...

    async def close(self) -> None:
        """Close every connection; later ``send`` calls are not expected."""
        ...


class Phase(enum.Enum):
    NOT_SENT = "not sent"        # connecting, or a pooled connection found dead before the first byte went out
    SENT = "sent"                # (part of) the request written, not one byte of an answer yet
    ANSWERING = "answering"      # at least one byte of an answer received, not all of it


class Event(enum.Enum):
    CLOSED = "connection ended"  # EOF, reset, refused, any socket error
    TIMEOUT = "timed out"
    VIOLATION = "broke HTTP/1.1"  # bad bytes, bad framing, over a size cap, an unasked-for upgrade


def wire_error(phase: Phase, event: Event, method: str, detail: str) -> UpstreamError:
    """The one verdict table (module docstring) shared by every transport."""
    text = f"{detail} ({phase.value}, {event.value})"
    if phase is Phase.NOT_SENT:
        return UpstreamUnreachable(text)
    if method not in IDEMPOTENT:
        kind = {Event.TIMEOUT: "timeout", Event.CLOSED: "connect_failure" if phase is Phase.SENT else "5xx"}.get(event, "5xx")
        return OutcomeUnknown(text, kind=kind)
    if event is Event.TIMEOUT:
        return UpstreamTimeout(text)
    if event is Event.CLOSED and phase is Phase.SENT:
        return UpstreamUnreachable(text)
    return UpstreamProtocolError(text)


def map_exception(table: tuple[tuple[type[BaseException], Event], ...], exc: BaseException) -> Event | None:
    """The event for ``exc`` from a transport's table: first matching row wins (order subclasses first)."""
    for cls, event in table:
        if isinstance(exc, cls):
            return event
    return None


def partner_url(base_url: str) -> URL:
    """A cluster's base URL as both transports need it: http(s) with a host, else ValueError."""
    url = URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"not an http(s) URL: {base_url}")
    return url
