"""``Reply`` -> bytes on the wire, and the few plain answers the parser gives before any envelope.

One ``bytes`` per answer (status line, headers, ``Content-Length``, the ticker's ``Date``, the
body), written with one ``transport.write``. A header value carrying CR or LF would split the
answer: it is refused here (``UnsafeHeader``) whatever produced it, and the protocol answers 500.
"""

from __future__ import annotations

from http import HTTPStatus

from proxy.reply import Reply

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {code: f"HTTP/1.1 {code} {phrase}\r\n".encode("ascii") for code, phrase in _REASONS.items()}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"Connection: close\r\n"


class UnsafeHeader(ValueError):
    """A header name or value with CR or LF: never written."""


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n".encode("ascii")
    return line


def encode_reply(reply: Reply, date: bytes, close: bool, head_only: bool) -> bytes:
    headers = reply.headers
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    lines = len(headers)
    if text.count("\n") != lines or text.count("\r") != lines:
        raise UnsafeHeader("CR or LF in a reply header")
    body = reply.body
    return b"".join((  # one copy of the body, into the one buffer written
        status_line(reply.status),
        text.encode("utf-8", "surrogateescape"),
        b"Content-Length: %d\r\n" % len(body),
        date,
        _CLOSE if close else b"",
        b"\r\n",
        b"" if head_only else body,
    ))


def encode_passed(status: int, passed: bytes, request_id: str, content_type: bytes, body: bytes, date: bytes, close: bool) -> bytes:
    """A partner answer passed through, from bytes (``proxy.lane``): byte for byte ``encode_reply``
    of the ``Reply`` the listener builds for it (``headers.downstream_headers``' order: the
    passed partner lines, ``X-Request-Id``, ``Content-Type``). ``passed`` and ``content_type``
    are ASCII lines the caller checked; nothing here re-checks them."""
    return b"".join((
        status_line(status),
        passed,
        b"X-Request-Id: ", request_id.encode("ascii"),
        b"\r\nContent-Type: " + content_type + b"\r\n" if content_type else b"\r\n",
        b"Content-Length: %d\r\n" % len(body),
        date,
        _CLOSE if close else b"",
        b"\r\n",
        body,
    ))


def plain(status: int, date: bytes) -> bytes:
    """A parser-level answer (400, 408, 414, 431, 500 before a request exists): text, then close."""
    text = _REASONS.get(status, "Error").encode("ascii")
    return b"".join((
        status_line(status),
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(text),
        date,
        _CLOSE,
        b"\r\n",
        text,
    ))
