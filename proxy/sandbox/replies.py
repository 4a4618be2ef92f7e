"""Answers the sandbox partner gives on every endpoint: JSON, partner errors, faults, resets.

Shared by :mod:`proxy.sandbox.app` (tokens, product list) and :mod:`proxy.sandbox.api` (account,
inquiry, orders), so every endpoint fails the same way for the same fault token.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Final

from aiohttp import hdrs, web

from proxy.sandbox.catalogue import (
    FAULT_HEADER,
    HANG_SECONDS,
    DelayFault,
    ErrorFault,
    Fault,
    GarbageFault,
    HangFault,
    InvalidFault,
    ResetFault,
    StatusFault,
    error_document,
    is_fault_token,
    parse_fault,
)
from proxy.sandbox.state import SANDBOX_STATE

# How often a sleeping handler looks whether its client went away. Small enough that a hang
# ends promptly after a client timeout, large enough to cost nothing.
_POLL_SECONDS: Final = 0.05

log = logging.getLogger("proxy.sandbox.app")


def json_reply(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer; ``json_response`` sets ``application/json``, as the partner does."""
    return web.json_response(body, status=status, headers=headers)


def partner_error(code: str, detail: str | None = None) -> web.Response:
    status, body = error_document(code, detail)
    return json_reply(status, body)


def reset_connection(request: web.Request) -> web.Response:
    """Drop the client's connection with a TCP RST and return a response that is never sent.

    ``SO_LINGER`` with a zero timeout turns ``close`` into a reset, which is what a crashed
    upstream or a middlebox kill looks like. Returning (rather than raising) lets aiohttp's
    own "client went away" path swallow the failed write, so nothing is logged as a server bug.
    """
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:  # pragma: no cover - platform without SO_LINGER; abort still closes
                pass
        transport.abort()
    return web.Response(status=500, text="connection reset by sandbox")


async def pause(request: web.Request, seconds: float) -> bool:
    """Sleep up to ``seconds``; return early when the client disconnects or the app stops.

    Returns True if the full time elapsed. Needed because a runner built without
    ``handler_cancellation`` would otherwise keep a 300 s hang alive after its client gave up.
    """
    stopping = request.app[SANDBOX_STATE].stopping
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return True
        transport = request.transport
        if transport is None or transport.is_closing() or stopping.is_set():
            return False
        try:
            await asyncio.wait_for(stopping.wait(), timeout=min(_POLL_SECONDS, remaining))
        except TimeoutError:
            pass


def infrastructure_page(status: int) -> web.Response:
    """A non-JSON error page like a load balancer or WAF in front of the partner would send."""
    reason = web.Response(status=status).reason or "Error"
    html = (
        f"<html><head><title>{status} {reason}</title></head>"
        f"<body><center><h1>{status} {reason}</h1></center><hr><center>sandbox-lb</center>"
        "</body></html>\n"
    )
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return web.Response(status=status, text=html, content_type="text/html", headers=headers)


def request_fault(request: web.Request, codes: list[str]) -> Fault | None:
    """The fault this request asks for: the header wins, else the first fault product code.

    Raises:
        InvalidFault: a reserved token is malformed.
    """
    header = request.headers.get(FAULT_HEADER, "").strip()
    if header:
        fault = parse_fault(header)
        if fault is None:
            raise InvalidFault(f"{FAULT_HEADER}: {header!r} is not a sandbox fault")
        return fault
    for code in codes:
        if is_fault_token(code):
            return parse_fault(code)
    return None


def bearer_token(request: web.Request) -> str | None:
    """The token of a well-formed ``Authorization: Bearer <token>``, else None."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(ch.isspace() for ch in token):
        return None
    return token


def authorize(request: web.Request) -> web.Response | None:
    """The refusal for this request's bearer token, or None when it may proceed.

    Missing or malformed ``Authorization`` -> 401 ``text/plain`` (no JSON:API body); a token the
    sandbox does not know, revoked or expired -> 403 ``P08`` (notes section 7).
    """
    token = bearer_token(request)
    if token is None:
        return web.Response(
            status=401,
            text="401: Unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="sandbox"'},
        )
    if not request.app[SANDBOX_STATE].token_is_valid(token):
        return partner_error("P08")
    return None


async def answer_fault(
    request: web.Request, fault: Fault, normal: Callable[[], web.StreamResponse]
) -> web.StreamResponse:
    """The answer for ``fault`` on an endpoint that changes nothing (list, account, inquiry, status).

    ``normal`` builds the ordinary answer, for ``delay-`` (after the wait) and ``hang`` (after
    300 s). Checkout-only faults are a 400 ``P01`` here, so a misplaced token is loud.
    """
    log.info("sandbox fault injected: %s", fault)
    match fault:
        case ErrorFault(code=code):
            return partner_error(code)
        case StatusFault(status=status):
            return infrastructure_page(status)
        case DelayFault(seconds=seconds):
            if not await pause(request, seconds):
                return infrastructure_page(503)  # client gone or sandbox stopping
            return normal()
        case HangFault():
            if not await pause(request, HANG_SECONDS):
                return infrastructure_page(503)
            return normal()
        case ResetFault():
            return reset_connection(request)
        case GarbageFault():
            return garbage()
        case _:
            return partner_error("P01", f"Invalid request: sandbox fault {fault!r} applies to POST /v2/order only")


def garbage() -> web.Response:
    """HTTP 500 claiming JSON with a body cut in the middle."""
    return web.Response(
        status=500,
        body=b'{"errors": [{"code": "S00", "detail": "Internal Serv',
        content_type="application/json",
    )
